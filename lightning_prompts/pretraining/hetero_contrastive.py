"""Contrastive pre-training of a heterogeneous GNN (for HetGPT; node-level, in the manner of GRACE and GraphCL's
NT-Xent, on ``HeteroData``).

Each step draws two views of the whole graph — in each, every node type's features are masked (a ``aug_ratio``
share of its nodes get GraphCL's N(0.5, 0.5) noise) and every edge type loses a ``aug_ratio`` share of its edges —
embeds both with the encoder, projects the ``target`` type's nodes (up to ``sample_nodes`` of them, drawn afresh each
step) with a two-layer head, and applies GraphCL's NT-Xent: a node's two views are the positive pair, the other
sampled nodes of the other view the negatives. Labels are not used. The encoder is written with
:func:`~lightning_prompts.backbones.hetero_gnn.save_hetero_gnn` at the end of ``fit``, ready for
``HeteroGNN(checkpoint_path=…)``. Each step reads the whole graph: under DDP every process embeds all of it and,
seeded alike, draws the same views and nodes, so several processes train exactly as one does (no speed-up).

Decision: HetGPT's paper prompts encoders pre-trained with heterogeneous contrastive methods (DMGI, HeCo and
others); this is a simpler member of that family, documented as such.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from lightning_prompts.backbones.base import build_backbone
from lightning_prompts.backbones.hetero_gnn import HeteroEncoder, HeteroGNN, save_hetero_gnn
from lightning_prompts.metrics.validation_means import log_validation_mean
from lightning_prompts.pretraining.base import EncoderPretraining
from lightning_prompts.pretraining.graph_augmentations import feature_noise, floating, uniform_draws
from lightning_prompts.pretraining.graphcl import nt_xent
from lightning_prompts.registry import register_pretraining
from lightning_prompts.utils.distributed import allow_parameters_without_gradient


def hetero_view(data: Any, ratio: float, generator: torch.Generator | None = None) -> tuple[dict, dict]:
    """``(x_dict, edge_index_dict)`` of one augmented view (see the module docstring)."""
    x_dict = {}
    for node, x in data.x_dict.items():
        masked = uniform_draws(x.shape[0], x.device, generator) < ratio
        x = floating(x).clone()
        x[masked] = feature_noise(int(masked.sum()), x.shape[1], x, generator)
        x_dict[node] = x
    edges = {}
    for edge_type, edge_index in data.edge_index_dict.items():
        keep = uniform_draws(edge_index.shape[1], edge_index.device, generator) >= ratio
        edges[edge_type] = edge_index[:, keep]
    return x_dict, edges


@register_pretraining(
    family="hetero",
    paper="node-level graph contrastive learning (GRACE, Zhu et al. 2020; GraphCL's NT-Xent) on heterogeneous graphs",
    code="none (written for lightning_prompts)",
    docs="methods/hetgpt.md",
    recipes="hetgpt",
)
class HeteroContrastive(EncoderPretraining):
    """Pre-train a :class:`~lightning_prompts.backbones.HeteroGNN` (see the module docstring).

    Args:
        backbone: the heterogeneous GNN, configured as HetGPT will load it.
        target: the node type whose embeddings are contrasted.
        aug_ratio: feature-mask and edge-drop share per view (0.2).
        temperature: NT-Xent temperature (0.2).
        sample_nodes: target nodes contrasted per step (the loss is quadratic in them).
        encoder_path: where to write the encoder at the end of ``fit``.
        optimizer: optimizer factory (default Adam, lr 1e-3).
    """

    def __init__(
        self,
        backbone: HeteroGNN,
        target: str = "paper",
        aug_ratio: float = 0.2,
        temperature: float = 0.2,
        sample_nodes: int = 1024,
        encoder_path: str | None = None,
        optimizer: Callable[[Any], Optimizer] | None = None,
    ) -> None:
        super().__init__()
        gnn = build_backbone(backbone)
        if not isinstance(gnn, HeteroGNN):
            raise TypeError(f"HeteroContrastive pre-trains a HeteroGNN backbone, got {type(gnn).__name__}.")
        if target not in gnn.in_channels:
            raise ValueError(f"target {target!r} is not a node type of the encoder ({sorted(gnn.in_channels)}).")
        self.save_hyperparameters(ignore=["optimizer", "backbone"])
        self.hparams["backbone"] = gnn.config()
        self.config = dict(gnn.arch_config)
        self.encoder = HeteroEncoder(gnn.in_channels, gnn.edge_types, gnn.hidden_channels, self.config["num_layers"])
        self.encoder.load_state_dict(gnn.encoder.state_dict())
        width = gnn.hidden_channels
        self.projection = nn.Sequential(nn.Linear(width, width), nn.ELU(), nn.Linear(width, width))
        self.edge_types, self.target = gnn.edge_types, target
        self.aug_ratio, self.temperature, self.sample_nodes = aug_ratio, temperature, sample_nodes
        self.encoder_path = encoder_path
        self.use_optimizer(optimizer, functools.partial(torch.optim.Adam, lr=1e-3))

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit":  # the last layer's convolutions into other node types than the target get no gradient
            allow_parameters_without_gradient(self.trainer, type(self).__name__)

    def contrastive_loss(self, data: Any) -> Tensor:
        views = [hetero_view(data, self.aug_ratio) for _ in range(2)]
        count = data[self.target].num_nodes
        chosen = torch.randperm(count, device=self.device)[: self.sample_nodes]
        embedded = []
        for x_dict, edges in views:
            x_dict = {node: x.to(self.device) for node, x in x_dict.items()}
            edges = {tuple(e): edges[tuple(e)].to(self.device) for e in self.edge_types}
            embedded.append(self.projection(self.encoder(x_dict, edges)[self.target][chosen]))
        return nt_xent(embedded[0], embedded[1], self.temperature)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self.contrastive_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=1)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        log_validation_mean(self, "loss", self.contrastive_loss(batch), 1)

    def export_encoder(self, path: str | Path) -> Path:
        """Write the encoder for ``HeteroGNN(checkpoint_path=path)`` with the same architecture."""
        return save_hetero_gnn(self.encoder, path, self.config)
