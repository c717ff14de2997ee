"""Edge prediction: pre-training a GNN to tell a graph's edges from non-edges (Hu et al., "Strategies for
Pre-training Graph Neural Networks", ICLR 2020, ``chem/pretrain_edgepred.py`` of
github.com/snap-stanford/pretrain-gnns, adapted from GraphSAGE's unsupervised loss; the pre-training of
GPF's ``edgepred.pth`` and, as link prediction, of ProG's GPPT).

Every undirected edge is a positive pair once; as many node pairs that are not edges (no self-pairs) are
drawn per graph as negatives; a pair's score is the dot product of its node embeddings, and the loss is
binary cross-entropy on positives plus binary cross-entropy on negatives (each averaged). Adam, lr 1e-3,
no weight decay, batch 256 in the official script.

Works for the graph backbones: a :class:`~lightning_prompts.backbones.gnn.GNN` (PyG GIN/GCN/GAT, the
encoder written with :func:`~lightning_prompts.backbones.gnn.save_gnn`), the
:class:`~lightning_prompts.backbones.molecule_gin.MoleculeGIN` and the
:class:`~lightning_prompts.backbones.bio_gin.BioGIN` (both written as the official plain state dict; the bio
encoder pre-trains on the unsupervised protein ego-networks, ``bio/pretrain_edgepred.py``, the same objective).
Negatives follow the official ``NegativeEdge`` transform: per graph, five times as many uniform candidate
pairs as it has edges, rejecting edges, self-pairs and repeats, keeping up to one per edge.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.optim import Optimizer

from lightning_prompts.backbones.base import build_backbone
from lightning_prompts.backbones.gnn import GNN, GraphBackbone, build_gnn, save_gnn
from lightning_prompts.backbones.pretrain_gnns import PretrainGNNsBackbone
from lightning_prompts.metrics.validation_means import log_validation_mean
from lightning_prompts.pretraining.base import EncoderPretraining
from lightning_prompts.pretraining.graph_augmentations import floating
from lightning_prompts.pretraining.sampling import random_ranks
from lightning_prompts.registry import register_pretraining
from lightning_prompts.utils.distributed import global_batch_mean


def positive_pairs(edge_index: Tensor) -> Tensor:
    """``(2, E')``: every undirected edge once, as ``(smaller, larger)`` node index; self-loops dropped."""
    low, high = torch.minimum(edge_index[0], edge_index[1]), torch.maximum(edge_index[0], edge_index[1])
    pairs = torch.stack([low, high])[:, low != high]
    return torch.unique(pairs, dim=1)


def negative_pairs(edge_index: Tensor, batch: Tensor, counts: Tensor, draws: int = 5) -> Tensor:
    """Up to ``counts[g]`` node pairs of each graph ``g`` that are not edges, not self-pairs and not repeated:
    ``draws · counts[g]`` uniform candidates, rejected as the official ``NegativeEdge`` transform does."""
    sizes = torch.bincount(batch, minlength=counts.shape[0])
    starts = torch.cumsum(sizes, 0) - sizes
    owner = torch.repeat_interleave(torch.arange(counts.shape[0], device=batch.device), draws * counts)
    u = starts[owner] + (torch.rand(owner.shape[0], device=batch.device) * sizes[owner]).long()
    v = starts[owner] + (torch.rand(owner.shape[0], device=batch.device) * sizes[owner]).long()
    total = int(batch.shape[0])
    keys, edges = u * total + v, edge_index[0] * total + edge_index[1]
    fresh = (u != v) & ~torch.isin(keys, edges)
    keys, owner = keys[fresh], owner[fresh]
    keys, first = _first_occurrences(keys)
    owner = owner[first]
    keep = random_ranks(owner, counts.shape[0]) < counts[owner]
    return torch.stack([keys[keep] // total, keys[keep] % total])


def _first_occurrences(keys: Tensor) -> tuple[Tensor, Tensor]:
    """The distinct ``keys`` and the index of each one's first occurrence."""
    unique, inverse = torch.unique(keys, return_inverse=True)
    first = torch.full((unique.shape[0],), keys.shape[0], dtype=torch.long, device=keys.device)
    first.scatter_reduce_(0, inverse, torch.arange(keys.shape[0], device=keys.device), reduce="amin")
    return unique, first


def edge_prediction_loss(nodes: Tensor, positives: Tensor, negatives: Tensor) -> Tensor:
    """``BCE(⟨z_u, z_v⟩, 1)`` over positive pairs plus ``BCE(⟨z_u, z_v⟩, 0)`` over negative pairs, each a mean
    over the global batch's pairs (under DDP the processes' graphs hold different numbers of edges)."""
    positive = (nodes[positives[0]] * nodes[positives[1]]).sum(dim=-1)
    negative = (nodes[negatives[0]] * nodes[negatives[1]]).sum(dim=-1)
    return global_batch_mean(
        F.binary_cross_entropy_with_logits(positive, torch.ones_like(positive), reduction="sum"), positive.numel()
    ) + global_batch_mean(
        F.binary_cross_entropy_with_logits(negative, torch.zeros_like(negative), reduction="sum"), negative.numel()
    )


@register_pretraining(
    family="graph",
    title="Edge prediction (Pretrain-GNNs / GPPT)",
    paper="Hu, Liu, Gomes, Zitnik, Liang, Pande, Leskovec, ICLR 2020 — Strategies for Pre-training Graph Neural "
    "Networks",
    code="snap-stanford/pretrain-gnns",
    docs="methods/gpf.md",
    recipes="gpf",
    overlay="graph_moleculenet",
)
class EdgePrediction(EncoderPretraining):
    """Pre-train a GNN or molecule GIN by edge prediction (see the module docstring).

    Args:
        backbone: the :class:`GNN`, :class:`MoleculeGIN` or :class:`BioGIN` to pre-train, configured as the prompt
            method will load it; its weights are copied into a trainable encoder.
        encoder_path: where to write the encoder at the end of ``fit`` (``None``: don't).
        optimizer: optimizer factory (default Adam, lr 1e-3, no weight decay).
    """

    def __init__(
        self,
        backbone: GraphBackbone,
        encoder_path: str | None = None,
        optimizer: Callable[[Any], Optimizer] | None = None,
    ) -> None:
        super().__init__()
        frozen = build_backbone(backbone)
        self.save_hyperparameters(ignore=["optimizer", "backbone"])
        self.hparams["backbone"] = frozen.config()
        if isinstance(frozen, GNN):
            self.config: dict[str, Any] | None = dict(frozen.arch_config)
            self.encoder = build_gnn(**self.config, dropout=0.0)
            self.encoder.load_state_dict(frozen.encoder.state_dict())
        elif isinstance(frozen, PretrainGNNsBackbone):  # the molecule or the bio GIN
            self.config = None
            self.encoder = frozen.trainable_encoder()
        else:
            raise TypeError(f"edge prediction pre-trains a GNN, MoleculeGIN or BioGIN, got {type(frozen).__name__}.")
        self.encoder_path = encoder_path
        self.use_optimizer(optimizer, functools.partial(torch.optim.Adam, lr=1e-3))

    def encode(self, data: Any) -> Tensor:
        if self.config is None:
            return self.encoder(data.x, data.edge_index, data.edge_attr)
        return self.encoder(floating(data.x), data.edge_index)

    def loss(self, data: Any, negatives: Tensor | None = None) -> Tensor:
        """The edge-prediction loss of a batch (``negatives``: fixed negative pairs; default a fresh draw)."""
        positives = positive_pairs(data.edge_index)
        if negatives is None:
            batch = getattr(data, "batch", None)
            if batch is None:
                batch = torch.zeros(data.num_nodes, dtype=torch.long, device=data.edge_index.device)
            counts = torch.bincount(batch[positives[0]], minlength=int(batch.max()) + 1)
            negatives = negative_pairs(data.edge_index, batch, counts)
        return edge_prediction_loss(self.encode(data), positives, negatives)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=int(getattr(batch, "num_graphs", 1)))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        log_validation_mean(self, "loss", self.loss(batch), int(getattr(batch, "num_graphs", 1)))

    def export_encoder(self, path: str | Path) -> Path:
        """Write the encoder for ``GNN``, ``MoleculeGIN`` or ``BioGIN`` (``checkpoint_path=...``)."""
        if self.config is not None:
            return save_gnn(self.encoder, path, self.config)
        return self.save_plain_encoder(path)
