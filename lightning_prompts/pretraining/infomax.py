"""Deep Graph Infomax as Pretrain-GNNs trains it (Hu, Liu, Gomes, Zitnik, Liang, Pande, Leskovec — "Strategies for
Pre-training Graph Neural Networks", ICLR 2020, after Veličković et al.'s Deep Graph Infomax; official code
github.com/snap-stanford/pretrain-gnns, ``chem/pretrain_deepgraphinfomax.py`` and its ``bio`` twin), the strategy
behind the ``infomax.pth`` checkpoints GPF prompts, molecule and protein alike.

Each graph's summary is the sigmoid of the mean of its node embeddings; a bilinear discriminator ``x · (s W)`` scores
every node against its own graph's summary (positive) and against the summary of the next graph in the batch (a
cyclic shift by one: the negative), and the loss is the binary cross-entropy of both, each averaged over the nodes.
``W`` starts uniform in ``±1/√d`` (PyG's ``uniform`` as the official code calls it). Adam, lr 1e-3, no weight decay,
batch 256, 100 epochs, no dropout in the official scripts. At the end of ``fit`` the encoder is written as a plain
state dict, for ``MoleculeGIN`` or ``BioGIN(checkpoint_path=...)``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.optim import Optimizer

from lightning_prompts.backbones.base import build_backbone
from lightning_prompts.backbones.pretrain_gnns import PretrainGNNsBackbone
from lightning_prompts.pretraining.base import EncoderPretraining, ObjectiveSteps
from lightning_prompts.pretraining.context_prediction import cyclic_shift
from lightning_prompts.registry import register_pretraining
from lightning_prompts.utils.distributed import global_batch_mean


@register_pretraining(
    family="graph",
    title="Deep Graph Infomax (Pretrain-GNNs)",
    paper="Hu, Liu, Gomes, Zitnik, Liang, Pande, Leskovec, ICLR 2020 — Strategies for Pre-training Graph Neural "
    "Networks",
    code="snap-stanford/pretrain-gnns",
    docs="methods/gpf.md",
    recipes="gpf",
    overlay="graph_moleculenet",
)
class DeepGraphInfomax(ObjectiveSteps, EncoderPretraining):
    """Pre-train a molecule or bio GIN by Deep Graph Infomax (see the module docstring).

    Args:
        backbone: the :class:`~lightning_prompts.backbones.molecule_gin.MoleculeGIN` or
            :class:`~lightning_prompts.backbones.bio_gin.BioGIN` to pre-train (its weights are copied into a trainable
            encoder).
        encoder_path: where to write the encoder at the end of ``fit`` (``None``: don't).
        optimizer: optimizer factory (default Adam, lr 1e-3, no weight decay).
    """

    accuracy_name = "infomax_acc"

    def __init__(
        self,
        backbone: PretrainGNNsBackbone,
        encoder_path: str | None = None,
        optimizer: Callable[[Any], Optimizer] | None = None,
    ) -> None:
        super().__init__()
        frozen = build_backbone(backbone)
        if not isinstance(frozen, PretrainGNNsBackbone):
            raise TypeError(f"DeepGraphInfomax pre-trains a MoleculeGIN or BioGIN, got {type(frozen).__name__}.")
        self.save_hyperparameters(ignore=["optimizer", "backbone"])
        self.hparams["backbone"] = frozen.config()
        self.encoder = frozen.trainable_encoder()
        bound = 1.0 / math.sqrt(frozen.emb_dim)
        self.discriminator = nn.Parameter(torch.empty(frozen.emb_dim, frozen.emb_dim).uniform_(-bound, bound))
        self.encoder_path = encoder_path
        self.use_optimizer(optimizer, functools.partial(torch.optim.Adam, lr=1e-3))

    def infomax_loss(self, data: Any) -> tuple[Tensor, Tensor]:
        """``(loss, accuracy)``: every node against its graph's summary and the next graph's (module docstring)."""
        from torch_geometric.nn import global_mean_pool

        nodes = self.encoder(data.x, data.edge_index, data.edge_attr)
        batch = getattr(data, "batch", None)
        if batch is None:
            batch = torch.zeros(nodes.shape[0], dtype=torch.long, device=nodes.device)
        summary = torch.sigmoid(global_mean_pool(nodes, batch))
        weight = self.discriminator.to(nodes.dtype)
        positive = (nodes * (summary[batch] @ weight)).sum(dim=1)  # the official discriminator: x · (s W)
        # the negative: the next graph's summary (the last graph takes the first's)
        shifted = summary[cyclic_shift(summary.shape[0], 1).to(batch.device)]
        negative = (nodes * (shifted[batch] @ weight)).sum(dim=1)
        # each term a mean over the global batch's nodes (under DDP the processes' graphs differ in size)
        bce = F.binary_cross_entropy_with_logits
        loss = global_batch_mean(
            bce(positive.float(), torch.ones_like(positive.float()), reduction="sum"), positive.numel()
        ) + global_batch_mean(
            bce(negative.float(), torch.zeros_like(negative.float()), reduction="sum"), negative.numel()
        )
        accuracy = ((positive > 0).float().sum() + (negative < 0).float().sum()) / (2 * positive.numel())
        return loss, accuracy

    def objective(self, batch: Any) -> tuple[Tensor, Tensor]:
        return self.infomax_loss(batch)

    def export_encoder(self, path: str | Path) -> Path:
        """Write the encoder as the official script does (a plain state dict)."""
        return self.save_plain_encoder(path)
