"""A frozen heterogeneous GNN on PyG ``HeteroData`` (HetGPT's backbone family).

Per node type a linear layer maps that type's features to ``hidden_channels``; then ``num_layers`` PyG
``HeteroConv`` layers, each with one ``SAGEConv`` per edge type summed per destination type, ReLU between
layers. A feature prompt edits the *input* features of a node type before its linear layer
(``encode_nodes(..., feature_prompts={type: callable})``), where HetGPT's heterogeneous feature prompt acts.

``save_hetero_gnn`` writes the architecture next to the weights (``torch.save`` of tensors and plain values, read
back with ``weights_only=True``), so a checkpoint for another graph schema is refused with both schemas named.
:class:`~lightning_prompts.pretraining.hetero_contrastive.HeteroContrastive` pre-trains one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_prompts.backbones.base import Backbone
from lightning_prompts.registry import register_backbone
from lightning_prompts.utils.tensor_files import load_tensor_file, save_atomically

EdgeType = tuple[str, str, str]


def _edge_key(edge_type: Sequence[str]) -> str:
    return "__".join(edge_type)


class HeteroEncoder(nn.Module):
    """Per-type input projections and ``HeteroConv(SAGEConv)`` layers (see the module docstring)."""

    def __init__(
        self, in_channels: Mapping[str, int], edge_types: Sequence[EdgeType], hidden_channels: int, num_layers: int
    ) -> None:
        super().__init__()
        from torch_geometric.nn import HeteroConv, SAGEConv

        self.inputs = nn.ModuleDict({node: nn.Linear(width, hidden_channels) for node, width in in_channels.items()})
        self.convs = nn.ModuleList(
            HeteroConv({tuple(e): SAGEConv(hidden_channels, hidden_channels) for e in edge_types}, aggr="sum")
            for _ in range(num_layers)
        )

    def forward(self, x_dict: Mapping[str, Tensor], edge_index_dict: Mapping[EdgeType, Tensor]) -> dict[str, Tensor]:
        hidden = {node: self.inputs[node](x) for node, x in x_dict.items()}
        for index, conv in enumerate(self.convs):
            out = conv(hidden, dict(edge_index_dict))
            hidden = {node: out.get(node, hidden[node]) for node in hidden}  # a type no edge reaches keeps its state
            if index < len(self.convs) - 1:
                hidden = {node: value.relu() for node, value in hidden.items()}
        return hidden


def save_hetero_gnn(encoder: HeteroEncoder, path: str | Path, config: Mapping[str, Any]) -> Path:
    """Write ``encoder`` with its architecture (in_channels, edge_types, hidden_channels, num_layers)."""
    arch = {
        "in_channels": dict(config["in_channels"]),
        "edge_types": [list(e) for e in config["edge_types"]],
        "hidden_channels": int(config["hidden_channels"]),
        "num_layers": int(config["num_layers"]),
    }
    return save_atomically({"config": arch, "state_dict": encoder.state_dict()}, path)


@register_backbone(family="hetero")
class HeteroGNN(Backbone):
    """A frozen heterogeneous GNN (see the module docstring).

    Args:
        in_channels: feature width per node type, e.g. ``{"paper": 1902, "author": 1902, "subject": 1902}``.
        edge_types: the ``[source, relation, destination]`` triples of the graph schema.
        hidden_channels: width of every layer and of the node embeddings.
        num_layers: message-passing layers.
        checkpoint_path: a file written by :func:`save_hetero_gnn`; its architecture must match. ``None``: random.
        seed: seed of the random initialisation.
    """

    family = "hetero"

    def __init__(
        self,
        in_channels: dict[str, int],
        edge_types: list[list[str]],
        hidden_channels: int = 64,
        num_layers: int = 2,
        checkpoint_path: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        edges = [tuple(str(part) for part in e) for e in edge_types]
        if any(len(e) != 3 for e in edges):
            raise ValueError(f"edge_types must be [source, relation, destination] triples, got {edge_types}.")
        unknown = sorted({n for e in edges for n in (e[0], e[2])} - set(in_channels))
        if unknown:
            raise ValueError(f"edge_types name node types {unknown} that in_channels does not list.")
        self.arch_config = {
            "in_channels": {str(k): int(v) for k, v in in_channels.items()},
            "edge_types": [list(e) for e in edges],
            "hidden_channels": int(hidden_channels),
            "num_layers": int(num_layers),
        }
        self.checkpoint_path = checkpoint_path
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.encoder = HeteroEncoder(self.arch_config["in_channels"], edges, hidden_channels, num_layers)
        if checkpoint_path is not None:
            self._load(Path(checkpoint_path))
        self.freeze()

    def _load(self, path: Path) -> None:
        saved = load_tensor_file(path, "heterogeneous GNN checkpoint")
        if not isinstance(saved, dict) or "state_dict" not in saved or "config" not in saved:
            raise ValueError(f"{path} is not a checkpoint written by save_hetero_gnn.")
        if saved["config"] != self.arch_config:
            raise ValueError(
                f"heterogeneous GNN checkpoint {path} has another architecture or schema: "
                f"stored {json.dumps(saved['config'])}, configured {json.dumps(self.arch_config)}."
            )
        self.encoder.load_state_dict(saved["state_dict"])

    @property
    def name(self) -> str:
        shape = f"hetero-sage-{self.arch_config['num_layers']}x{self.arch_config['hidden_channels']}"
        return f"{shape}/{Path(self.checkpoint_path).name}" if self.checkpoint_path else f"{shape}/random"

    @property
    def hidden_channels(self) -> int:
        return int(self.arch_config["hidden_channels"])

    @property
    def in_channels(self) -> dict[str, int]:
        return dict(self.arch_config["in_channels"])

    @property
    def edge_types(self) -> list[EdgeType]:
        return [tuple(e) for e in self.arch_config["edge_types"]]  # type: ignore[misc]

    def check_schema(self, data: Any) -> None:
        """Refuse a graph whose node types, feature widths or edge types differ from the encoder's."""
        widths = {node: int(data[node].x.shape[-1]) for node in data.node_types if "x" in data[node]}
        if widths != self.in_channels:
            raise ValueError(f"the graph's node features {widths} differ from the encoder's {self.in_channels}.")
        missing = sorted(set(map(tuple, self.edge_types)) - set(data.edge_types))
        if missing:
            raise ValueError(f"the graph lacks the encoder's edge types {missing}.")

    def encode_nodes(
        self,
        x_dict: Mapping[str, Tensor],
        edge_index_dict: Mapping[EdgeType, Tensor],
        feature_prompts: Mapping[str, Callable[[Tensor], Tensor]] | None = None,
    ) -> dict[str, Tensor]:
        """Node embeddings per type; ``feature_prompts[type]`` edits that type's input features first."""
        prompts = feature_prompts or {}
        inputs = {node: prompts[node](x) if node in prompts else x for node, x in x_dict.items()}
        edges = {tuple(e): edge_index_dict[tuple(e)] for e in self.edge_types}
        return self.encoder(inputs, edges)
