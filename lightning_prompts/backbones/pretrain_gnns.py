"""What the Pretrain-GNNs encoders share (the molecule GIN and the bio GIN of Hu et al., ICLR 2020, behind GPF's
and RELIEF's released checkpoints): building the encoder, reading a released ``.pth`` (a plain state dict, or a
whole ``GNN_graphpred`` state dict whose ``gnn.`` entries are the encoder), checking its depth and width, and
running it with block hooks on the embedded nodes entering each layer.

A subclass names its encoder class, the state-dict key that marks its checkpoints (and gives the width), a label
for messages, and checks its inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor, nn

from lightning_prompts.backbones.gnn import GraphBackbone, check_feature_hooks
from lightning_prompts.backbones.hooks import BlockContext, BlockHook, tokens_before_blocks
from lightning_prompts.utils.tensor_files import load_tensor_file


def read_encoder_state(path: Path, marker: str, what: str) -> dict[str, Tensor]:
    """The encoder state dict of a Pretrain-GNNs ``.pth`` file (tensors only, no code runs); ``marker`` is a key
    every such encoder has."""
    state = load_tensor_file(path, f"{what} checkpoint")
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of parameter names to tensors).")
    if marker not in state and f"gnn.{marker}" in state:
        state = {key.removeprefix("gnn."): value for key, value in state.items() if key.startswith("gnn.")}
    if marker not in state:
        raise ValueError(
            f"{path} is not a Pretrain-GNNs {what}: it has no {marker!r} (keys start with {sorted(state)[:3]})."
        )
    return dict(state)


class PretrainGNNsBackbone(GraphBackbone):
    """A frozen Pretrain-GNNs encoder (see the module docstring).

    Args:
        checkpoint_path: a released ``.pth``; ``None`` keeps random weights.
        num_layers: message-passing layers (5 in every released checkpoint).
        emb_dim: width (300 in every released checkpoint).
        seed: seed for random initialisation.
    """

    encoder_class: ClassVar[type[nn.Module]]
    marker_key: ClassVar[str]  # a key of every checkpoint; its second dimension is the width
    label: ClassVar[str]  # e.g. "molecule GIN"

    def __init__(
        self, checkpoint_path: str | None = None, num_layers: int = 5, emb_dim: int = 300, seed: int = 0
    ) -> None:
        super().__init__()
        self.checkpoint_path, self.num_layers, self.emb_dim = checkpoint_path, num_layers, emb_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.encoder = self.encoder_class(num_layers, emb_dim)
        if checkpoint_path is not None:
            self._load(Path(checkpoint_path))
        self.freeze()

    def trainable_encoder(self) -> nn.Module:
        """A new encoder holding these weights, for a pre-training to train (this backbone stays frozen)."""
        encoder = self.encoder_class(self.num_layers, self.emb_dim)
        encoder.load_state_dict(self.encoder.state_dict())
        return encoder

    def _load(self, path: Path) -> None:
        state = read_encoder_state(path, self.marker_key, self.label)
        layers = len({int(key.split(".")[1]) for key in state if key.startswith("gnns.")})
        width = int(state[self.marker_key].shape[1])
        if (layers, width) != (self.num_layers, self.emb_dim):
            raise ValueError(
                f"{path} holds a {layers}-layer, {width}-wide {self.label} but the backbone is configured with "
                f"num_layers={self.num_layers}, emb_dim={self.emb_dim}; configure it as stored."
            )
        missing, unexpected = self.encoder.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path} does not match the {self.label}: missing {missing}, unexpected {unexpected}.")

    @property
    def name(self) -> str:
        shape = f"{self.label.replace(' ', '-').lower()}-{self.num_layers}x{self.emb_dim}"
        return f"{shape}/{Path(self.checkpoint_path).name}" if self.checkpoint_path else f"{shape}/random"

    @property
    def in_channels(self) -> int:
        """Width of the features a prompt edits (the embedded nodes entering layer 0)."""
        return self.emb_dim

    @property
    def hidden_channels(self) -> int:
        return self.emb_dim

    def check_inputs(self, x: Tensor, edge_attr: Tensor | None) -> None:
        """Raise a clear error for node or edge features the encoder cannot read."""

    def encode_nodes(
        self, x: Tensor, edge_index: Tensor, hooks: BlockHook | None = None, edge_attr: Tensor | None = None
    ) -> Tensor:
        """Node embeddings ``(N, emb_dim)``; ``hooks`` edits the (embedded) features entering each layer."""
        self.check_inputs(x, edge_attr)
        check_feature_hooks(hooks, self.name)
        layers = self.encoder.gnns
        contexts = [BlockContext(i, len(layers), 0, "graph") for i in range(len(layers))]
        with tokens_before_blocks(hooks, layers, contexts):
            return self.encoder(x, edge_index, edge_attr)
