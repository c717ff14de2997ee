"""GraphCL: contrastive pre-training of a GNN encoder (You, Chen, Sui, Chen, Wang, Shen — "Graph
Contrastive Learning with Augmentations", NeurIPS 2020; official code: github.com/Shen-Lab/GraphCL).

Each graph of a batch is augmented twice; the encoder and a projection head map both views to
vectors, and the NT-Xent loss of the official code pulls the two views of a graph together
against the other graphs of the batch::

    s_ij = exp(cos(z_i, z'_j) / τ),     loss = mean_i −log( s_ii / (Σ_j s_ij − s_ii) )

(one direction, positive excluded from the denominator, as in ``loss_cal`` of the official code).
Under DDP the other graphs are those of every process's batch (``gather_negatives``, the default): the loss and
its gradient are one process's on the global batch, as the official single-GPU code computes it; off, each
process contrasts its own graphs only (fewer negatives per graph, as many as its share of the batch).

Augmentations: :mod:`~lightning_prompts.pretraining.graph_augmentations`. The trained encoder is written
with :func:`~lightning_prompts.backbones.gnn.save_gnn` to ``encoder_path`` at the end of
``fit``, ready for ``GNN(checkpoint_path=...)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from lightning_prompts.backbones.base import build_backbone
from lightning_prompts.backbones.gnn import GNN, Pooling, build_gnn, save_gnn
from lightning_prompts.metrics.validation_means import log_validation_mean
from lightning_prompts.pretraining.base import EncoderPretraining
from lightning_prompts.pretraining.graph_augmentations import (
    AUGMENTATIONS,
    FIXED_AUGMENTATIONS,
    Augmentation,
    floating,
    random_augmentation,
)
from lightning_prompts.registry import register_pretraining
from lightning_prompts.utils.distributed import gather_rows, global_batch_mean


def nt_xent_terms(z1: Tensor, z2: Tensor, temperature: float, offset: int = 0) -> Tensor:
    """Each row's GraphCL NT-Xent term: row ``i`` of ``z1`` against every row of ``z2``, its positive ``z2[offset +
    i]`` (``offset``: where this process's rows start among the gathered ``z2`` of every process).

    The official ``−log(s_ii / (Σ_j s_ij − s_ii))`` with ``s_ij = exp(cos_ij / τ)``, computed as
    ``logsumexp_{j ≠ i}(cos_ij / τ) − cos_ii / τ`` in float32 outside autocast: under float16 autocast the sum of
    ``exp(1 / 0.1)`` over a batch of eight already overflows (an infinite loss, found with ``16-mixed``)."""
    with torch.autocast(z1.device.type, enabled=False):
        scaled = F.normalize(z1.float(), dim=1) @ F.normalize(z2.float(), dim=1).t() / temperature
        rows = torch.arange(scaled.shape[0], device=scaled.device)
        positive = scaled[rows, rows + offset]
        others = scaled.index_put((rows, rows + offset), scaled.new_tensor(float("-inf")))  # float32 in bf16-true too
        return torch.logsumexp(others, dim=1) - positive


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """GraphCL's NT-Xent between two views (rows of ``z1`` and ``z2`` pair up)."""
    return nt_xent_terms(z1, z2, temperature).mean()


def contrast_views(z1: Tensor, z2: Tensor, temperature: float, gather_negatives: bool) -> Tensor:
    """The NT-Xent of two views' projections: under DDP with ``gather_negatives``, this process's share of the
    global batch's mean while training (DDP's average of the gradients is then the global batch's), and the mean of
    its own graphs' terms in evaluation (the epoch's weighted mean over processes is the global one)."""
    if not gather_negatives:
        return nt_xent(z1, z2, temperature)
    columns, offset = gather_rows(z2)
    terms = nt_xent_terms(z1, columns, temperature, offset)
    return global_batch_mean(terms.sum(), terms.shape[0])


def projection_head(width: int) -> nn.Sequential:
    """GraphCL's projection head: ``width → width → width`` with a ReLU between."""
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, width))


class ContrastiveSteps:
    """The steps of a graph pre-training whose ``contrastive_loss(batch)`` is a batch's loss (GraphCL on PyG GNNs and
    on the Pretrain-GNNs GINs): ``train/loss`` each step, ``val/loss`` as an epoch mean over every process. Put it
    before :class:`~lightning_prompts.pretraining.base.EncoderPretraining`."""

    def contrastive_loss(self, batch: Any) -> Tensor:
        raise NotImplementedError

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self.contrastive_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=int(batch.num_graphs))  # type: ignore[attr-defined]
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        log_validation_mean(self, "loss", self.contrastive_loss(batch), int(batch.num_graphs))


@register_pretraining(
    family="graph",
    paper="You, Chen, Sui, Chen, Wang, Shen, NeurIPS 2020 — Graph Contrastive Learning with Augmentations",
    code="Shen-Lab/GraphCL",
    docs="methods/gpf.md",
)
class GraphCL(ContrastiveSteps, EncoderPretraining):
    """Pre-train a GIN/GCN/GAT encoder with GraphCL; write it for :class:`GNN` backbones.

    Args:
        backbone: the :class:`GNN` to pre-train, configured exactly as the prompt method will later
            load it (the same ``backbone`` block in both recipes); its weights (random, or a
            checkpoint to continue from) are copied into a trainable encoder.
        augmentations: the two augmentations, one per view
            (:mod:`~lightning_prompts.pretraining.graph_augmentations`): ``drop_nodes``, ``permute_edges``,
            ``mask_nodes``, ``subgraph``, ``none`` (the graph itself) or ``random`` (per graph one of
            ``random_choices``).
        aug_ratio: strength of each augmentation (GraphCL: 0.2).
        random_choices: what ``random`` draws from, uniformly per graph: ProG's node dropping or edge perturbation
            (the default); GraphCL's unsupervised ``random4`` is ``[drop_nodes, subgraph, permute_edges,
            mask_nodes]``.
        temperature: NT-Xent temperature τ (GraphCL's unsupervised code: 0.2).
        pooling: graph readout before the projection head.
        encoder_path: where to write the trained encoder at the end of ``fit`` (``None``: don't).
        optimizer: optimizer factory (default Adam, lr 0.01, weight decay 1e-4 as in ProG's GraphCL).
        gather_negatives: under DDP, contrast each graph against the graphs of every process's batch (``True``,
            one process's loss on the global batch) or of its own process's only; nothing in one process.
    """

    #: What the command's default checkpoint keeps as "best" (there is no accuracy to pre-training).
    def __init__(
        self,
        backbone: GNN,
        augmentations: Sequence[Augmentation] = ("drop_nodes", "mask_nodes"),
        aug_ratio: float = 0.2,
        random_choices: Sequence[Augmentation] = ("drop_nodes", "permute_edges"),
        temperature: float = 0.2,
        pooling: Pooling = "mean",
        encoder_path: str | None = None,
        optimizer: Callable[[Any], Optimizer] | None = None,
        gather_negatives: bool = True,
    ) -> None:
        super().__init__()
        gnn = build_backbone(backbone)
        if not isinstance(gnn, GNN):
            raise TypeError(f"GraphCL pre-trains a GNN backbone, got {type(gnn).__name__}.")
        self.save_hyperparameters(ignore=["optimizer", "backbone"])
        self.hparams["backbone"] = gnn.config()
        if len(augmentations) != 2 or any(name not in AUGMENTATIONS for name in augmentations):
            raise ValueError(f"augmentations must be two of {sorted(AUGMENTATIONS)}, got {list(augmentations)}.")
        if not random_choices or any(name not in FIXED_AUGMENTATIONS for name in random_choices):
            raise ValueError(f"random_choices must be among {sorted(FIXED_AUGMENTATIONS)}, got {list(random_choices)}.")
        self.config = dict(gnn.arch_config)
        hidden_channels = gnn.hidden_channels
        self.encoder = build_gnn(**self.config, dropout=0.0)
        self.encoder.load_state_dict(gnn.encoder.state_dict())
        self.projection = projection_head(hidden_channels)
        self.augmentations, self.aug_ratio, self.temperature = list(augmentations), aug_ratio, temperature
        self.random_choices = list(random_choices)
        self.pooling, self.encoder_path, self.gather_negatives = pooling, encoder_path, gather_negatives
        self.use_optimizer(optimizer, functools.partial(torch.optim.Adam, lr=0.01, weight_decay=1e-4))

    def embed(self, data: Any) -> Tensor:
        """Projected graph embeddings of a batch."""
        nodes = self.encoder(floating(data.x), data.edge_index)
        return self.projection(GNN.pool(nodes, getattr(data, "batch", None), self.pooling))

    def contrastive_loss(self, batch: Any) -> Tensor:
        """The NT-Xent of two augmented views of ``batch`` (:func:`contrast_views`)."""
        first, second = (self.augment(name, batch) for name in self.augmentations)
        return contrast_views(self.embed(first), self.embed(second), self.temperature, self.gather_negatives)

    def augment(self, name: str, batch: Any) -> Any:
        """One view of ``batch`` by the augmentation ``name`` at ``aug_ratio``."""
        if name == "random":
            return random_augmentation(batch, self.aug_ratio, choices=self.random_choices)
        return AUGMENTATIONS[name](batch, self.aug_ratio)

    def export_encoder(self, path: str | Path) -> Path:
        """Write the encoder for ``GNN(checkpoint_path=path)`` with the same architecture."""
        return save_gnn(self.encoder, path, self.config)
