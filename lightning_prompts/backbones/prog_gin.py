"""The GIN of ProG (Sun et al., "Graph Prompt Learning: A Comprehensive Survey and Beyond") and of RELIEF's
node-level code, whose released encoders (``node_level/pretrained_models/{GPPT,Gprompt}_<dataset>.pth`` of
JasonZhujp/RELIEF: 2 layers, 100 → 128 → 128, pre-trained by edge prediction on SVD-reduced features) are plain
state dicts of it.

Each layer is PyG's ``GINConv`` with the MLP ``Linear(d_in, d) → ReLU → Linear(d, d)`` and ``eps`` fixed at 0 (sum
over in-neighbours plus the node itself); between layers a leaky ReLU (slope 0.01) and dropout; the node embeddings
are the last layer's output (``JK="last"``, the setting of every RELIEF run). The module tree repeats the official
one (``conv_layers.<i>.nn.{0,2}``, ``conv_layers.<i>.eps``), so the released ``.pth`` files load as they are, read
with ``torch.load(weights_only=True)``. The encoder is frozen in eval mode, so dropout is off (the official
node-level code leaves the GNN in train mode during its head updates, so dropout 0.5 is active there under
``no_grad``: a deviation we keep, because a frozen backbone that draws random numbers makes evaluation and exact
resume depend on them). RELIEF's node-level script also sets torch's default dtype to float64; the encoder here runs
in float32, as it was saved. Block hooks edit the features entering each layer; RELIEF's increments and GPF's prompt
land before layer 0, where the official code adds its prompt.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_prompts.backbones.gnn import GraphBackbone, check_feature_hooks
from lightning_prompts.backbones.hooks import BlockContext, BlockHook, tokens_before_blocks
from lightning_prompts.registry import register_backbone
from lightning_prompts.utils.tensor_files import load_tensor_file


class ProGGINEncoder(nn.Module):
    """``num_layers`` ``GINConv(Linear → ReLU → Linear)`` layers with a leaky ReLU between them."""

    def __init__(self, in_channels: int, hidden_channels: int, num_layers: int) -> None:
        super().__init__()
        from torch_geometric.nn import GINConv

        if num_layers < 2:
            raise ValueError(f"ProG's GIN has at least 2 layers, got num_layers={num_layers}.")
        widths = [in_channels] + [hidden_channels] * num_layers
        self.conv_layers = nn.ModuleList(
            GINConv(nn.Sequential(nn.Linear(a, b), nn.ReLU(), nn.Linear(b, b))) for a, b in zip(widths, widths[1:])
        )

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        for index, conv in enumerate(self.conv_layers):
            x = conv(x, edge_index)
            if index < len(self.conv_layers) - 1:
                x = F.leaky_relu(x)
        return x


@register_backbone(family="graph")
class ProGGIN(GraphBackbone):
    """A frozen ProG / RELIEF node-level GIN (see the module docstring).

    Args:
        in_channels: node feature width (100: RELIEF's SVD-reduced features).
        hidden_channels: width of every layer and of the node embeddings (128).
        num_layers: GIN layers (2).
        checkpoint_path: a released ``.pth`` (a plain state dict of the official ``GIN``); ``None`` keeps random
            weights.
        seed: seed for random initialisation.
    """

    def __init__(
        self,
        in_channels: int = 100,
        hidden_channels: int = 128,
        num_layers: int = 2,
        checkpoint_path: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.arch = {"in_channels": in_channels, "hidden_channels": hidden_channels, "num_layers": num_layers}
        self.checkpoint_path = checkpoint_path
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.encoder = ProGGINEncoder(in_channels, hidden_channels, num_layers)
        if checkpoint_path is not None:
            self._load(Path(checkpoint_path))
        self.freeze()

    def _load(self, path: Path) -> None:
        state = load_tensor_file(path, "ProG GIN checkpoint")
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise ValueError(f"{path} does not hold a state dict (a mapping of parameter names to tensors).")
        if "conv_layers.0.nn.0.weight" not in state:
            raise ValueError(
                f"{path} is not a ProG GIN: it has no 'conv_layers.0.nn.0.weight' (keys {sorted(state)[:3]})."
            )
        layers = len({int(key.split(".")[1]) for key in state if key.startswith("conv_layers.")})
        hidden, inputs = (int(n) for n in state["conv_layers.0.nn.0.weight"].shape)
        stored = {"in_channels": inputs, "hidden_channels": hidden, "num_layers": layers}
        if stored != self.arch:
            raise ValueError(f"{path} holds a GIN with {stored} but the backbone is configured with {self.arch}.")
        self.encoder.load_state_dict({key: value.float() for key, value in state.items()})

    @property
    def name(self) -> str:
        shape = f"prog-gin-{self.arch['num_layers']}x{self.arch['hidden_channels']}"
        return f"{shape}/{Path(self.checkpoint_path).name}" if self.checkpoint_path else f"{shape}/random"

    @property
    def in_channels(self) -> int:
        return int(self.arch["in_channels"])

    @property
    def hidden_channels(self) -> int:
        return int(self.arch["hidden_channels"])

    @property
    def input_features(self) -> int:
        return self.in_channels

    def encode_nodes(
        self, x: Tensor, edge_index: Tensor, hooks: BlockHook | None = None, edge_attr: Tensor | None = None
    ) -> Tensor:
        """Node embeddings ``(N, hidden_channels)``; ``hooks`` edits the features entering each layer; GIN reads no
        edge features, so ``edge_attr`` is ignored."""
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"Node features have {x.shape[-1]} channels but {self.name} expects {self.in_channels}.")
        check_feature_hooks(hooks, self.name)
        layers = self.encoder.conv_layers
        contexts = [BlockContext(i, len(layers), 0, "graph") for i in range(len(layers))]
        with tokens_before_blocks(hooks, layers, contexts):
            return self.encoder(x.to(layers[0].nn[0].weight.dtype), edge_index)
