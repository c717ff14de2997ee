"""Graph neural networks through ``torch_geometric``: the backbone of graph prompt methods.

The seam graph prompts need is the *node features entering each layer*: :meth:`GNN.encode_nodes`
runs PyG's own GNN with a :class:`~lightning_prompts.backbones.hooks.BlockHook` whose token edits apply
to the features entering layer ``i`` (GPF adds a learned vector to every node's input features, before
layer 0) and returns node embeddings; :meth:`GNN.pool` turns them into graph embeddings.

The pre-trained encoder comes from a file written by :func:`save_gnn` (for instance by
:class:`lightning_prompts.pretraining.GraphCL`), which stores the architecture next to the
weights so that loading can check that both agree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_prompts.backbones.base import Backbone
from lightning_prompts.backbones.hooks import INSIDE_BLOCK, BlockContext, BlockHook, tokens_before_blocks
from lightning_prompts.registry import register_backbone
from lightning_prompts.utils.tensor_files import load_tensor_file, save_atomically

Architecture = Literal["gin", "gcn", "gat"]
Pooling = Literal["mean", "sum", "max"]

_ARCH_FIELDS = ("arch", "in_channels", "hidden_channels", "num_layers", "norm")


def build_gnn(
    arch: Architecture, in_channels: int, hidden_channels: int, num_layers: int, norm: str | None, dropout: float = 0.0
) -> nn.Module:
    """A PyG ``BasicGNN`` (GIN, GCN or GAT) with ``hidden_channels`` outputs and the last layer's
    output kept (``jk=None``), as GPF's and ProG's encoders do."""
    from torch_geometric.nn import models

    classes = {"gin": models.GIN, "gcn": models.GCN, "gat": models.GAT}
    if arch not in classes:
        raise ValueError(f"arch must be one of {sorted(classes)}, got {arch!r}.")
    return classes[arch](
        in_channels=in_channels,
        hidden_channels=hidden_channels,
        num_layers=num_layers,
        dropout=dropout,
        norm=norm,
        jk=None,
    )


def save_gnn(encoder: nn.Module, path: str | Path, config: dict[str, Any]) -> Path:
    """Write a GNN encoder's weights and architecture to ``path`` (a ``.pt`` file)."""
    return save_atomically({"config": {k: config[k] for k in _ARCH_FIELDS}, "state_dict": encoder.state_dict()}, path)


class GraphBackbone(Backbone):
    """What graph prompt methods read from a frozen GNN: the widths, node embeddings whose layer inputs
    block hooks edit, and a readout. :class:`GNN` and
    :class:`~lightning_prompts.backbones.molecule_gin.MoleculeGIN` implement it."""

    family = "graph"

    @property
    def in_channels(self) -> int:
        """Width of the node features a prompt edits (those entering the first layer)."""
        raise NotImplementedError

    @property
    def hidden_channels(self) -> int:
        """Width of the node embeddings."""
        raise NotImplementedError

    @property
    def input_features(self) -> int:
        """Columns of ``data.x`` the backbone reads."""
        raise NotImplementedError

    def encode_nodes(
        self, x: Tensor, edge_index: Tensor, hooks: BlockHook | None = None, edge_attr: Tensor | None = None
    ) -> Tensor:
        raise NotImplementedError

    @staticmethod
    def pool(node_embeddings: Tensor, batch: Tensor | None, pooling: Pooling = "mean") -> Tensor:
        """Graph embeddings from node embeddings (``batch`` maps nodes to graphs)."""
        return pool_nodes(node_embeddings, batch, pooling)


@register_backbone(family="graph")
class GNN(GraphBackbone):
    """A frozen GIN/GCN/GAT encoder.

    Args:
        arch: ``"gin"``, ``"gcn"`` or ``"gat"``.
        in_channels: node feature size the encoder was trained on.
        hidden_channels: width of every layer and of the node embeddings.
        num_layers: message-passing layers.
        norm: normalisation between layers (``"batch_norm"`` as in GPF's GIN, or ``None``).
        checkpoint_path: a file written by :func:`save_gnn`; its architecture must match the
            arguments above. ``None`` keeps random weights.
        seed: seed for random initialisation.
    """

    def __init__(
        self,
        arch: Architecture = "gin",
        in_channels: int = 300,
        hidden_channels: int = 300,
        num_layers: int = 5,
        norm: str | None = "batch_norm",
        checkpoint_path: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.arch_config = {
            "arch": arch,
            "in_channels": in_channels,
            "hidden_channels": hidden_channels,
            "num_layers": num_layers,
            "norm": norm,
        }
        self.checkpoint_path = checkpoint_path
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.encoder = self.build_encoder()
        if checkpoint_path is not None:
            self._load(Path(checkpoint_path))
        self.freeze()

    def build_encoder(self) -> nn.Module:
        """The encoder ``arch_config`` describes (a subclass with another module tree overrides this, ``layers``
        and ``_load``)."""
        arch = self.arch_config
        return build_gnn(arch["arch"], arch["in_channels"], arch["hidden_channels"], arch["num_layers"], arch["norm"])

    @property
    def layers(self) -> nn.ModuleList:
        """The message-passing layers, whose inputs block hooks edit."""
        return self.encoder.convs

    def _load(self, path: Path) -> None:
        saved = load_tensor_file(path, "GNN checkpoint")
        if not isinstance(saved, dict) or "state_dict" not in saved:
            raise ValueError(f"{path} is not a GNN checkpoint written by lightning_prompts.backbones.gnn.save_gnn.")
        stored = saved.get("config", {})
        differs = {k: (stored.get(k), v) for k, v in self.arch_config.items() if stored.get(k) != v}
        if differs:
            detail = ", ".join(f"{k}: checkpoint {a!r} vs configured {b!r}" for k, (a, b) in differs.items())
            raise ValueError(
                f"GNN checkpoint {path} was trained with another architecture ({detail}). "
                f"Configure the backbone as stored: {json.dumps(stored)}."
            )
        self.encoder.load_state_dict(saved["state_dict"])

    @property
    def name(self) -> str:
        arch = self.arch_config
        shape = f"{arch['arch']}-{arch['num_layers']}x{arch['hidden_channels']}"
        return f"{shape}/{Path(self.checkpoint_path).name}" if self.checkpoint_path else f"{shape}/random"

    @property
    def in_channels(self) -> int:
        return int(self.arch_config["in_channels"])

    @property
    def hidden_channels(self) -> int:
        return int(self.arch_config["hidden_channels"])

    @property
    def input_features(self) -> int:
        """Columns of ``data.x`` (the features a prompt edits, here the same)."""
        return self.in_channels

    def encode_nodes(
        self, x: Tensor, edge_index: Tensor, hooks: BlockHook | None = None, edge_attr: Tensor | None = None
    ) -> Tensor:
        """Node embeddings ``(N, hidden_channels)`` of node features ``x``; ``hooks`` edits the features
        entering each message-passing layer (in place: a node count cannot change). PyG's basic GNNs read
        no edge features, so ``edge_attr`` is ignored."""
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"Node features have {x.shape[-1]} channels but {self.name} expects {self.in_channels}.")
        check_feature_hooks(hooks, self.name)
        layers = self.layers
        contexts = [BlockContext(i, len(layers), 0, "graph") for i in range(len(layers))]
        with tokens_before_blocks(hooks, layers, contexts):
            return self.encoder(x, edge_index)


def pool_nodes(node_embeddings: Tensor, batch: Tensor | None, pooling: Pooling = "mean") -> Tensor:
    """Graph embeddings from node embeddings (``batch`` maps nodes to graphs)."""
    from torch_geometric.nn import global_add_pool, global_max_pool, global_mean_pool

    pools = {"mean": global_mean_pool, "sum": global_add_pool, "max": global_max_pool}
    return pools[pooling](node_embeddings, batch)


def check_feature_hooks(hooks: BlockHook | None, backbone: str) -> None:
    """GNN layers take one kind of hook edit: the node features entering a layer."""
    if hooks is not None and any(hooks.uses(c) for c in INSIDE_BLOCK):
        raise NotImplementedError(f"{backbone} takes feature edits from block hooks (before each layer) only.")
