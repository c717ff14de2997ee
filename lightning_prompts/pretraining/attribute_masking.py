"""Attribute masking: pre-training of the molecule GIN by masked-atom prediction (Hu, Liu, Gomes, Zitnik,
Liang, Pande, Leskovec — "Strategies for Pre-training Graph Neural Networks", ICLR 2020; official code:
github.com/snap-stanford/pretrain-gnns, ``chem/pretrain_masking.py``), the strategy behind the
``masking.pth`` checkpoint GPF prompts.

In every molecule ``int(0.15 · atoms + 1)`` atoms are drawn (at least one); their features become the mask
token ``(119, 0)`` (atom type 119, chirality 0), the GIN encodes the molecule, and a linear layer on the
masked atoms' embeddings predicts their atom types (cross-entropy over 119 types). Adam, lr 1e-3, no
weight decay, batch 256, 100 epochs on ZINC15's two million molecules in the official script. At the
end of ``fit`` the encoder is written as the official script writes it — ``torch.save(state_dict)`` —
so ``MoleculeGIN(checkpoint_path=...)`` and the official fine-tuning code both read it.

Not implemented: the optional bond masking (``--mask_edge``, off by default in the official script).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.optim import Optimizer

from lightning_prompts.backbones.base import build_backbone
from lightning_prompts.backbones.molecule_gin import NUM_ATOM_TYPES, MoleculeGIN
from lightning_prompts.pretraining.base import EncoderPretraining, ObjectiveSteps
from lightning_prompts.pretraining.sampling import random_ranks
from lightning_prompts.registry import register_pretraining
from lightning_prompts.utils.distributed import global_batch_mean

#: The atom types the official linear layer predicts (the mask token's index, 119, excluded).
PREDICTED_ATOM_TYPES = NUM_ATOM_TYPES - 1
MASK_ATOM = NUM_ATOM_TYPES - 1


def sample_masked_atoms(batch: Tensor, counts: Tensor, rate: float) -> Tensor:
    """Boolean ``(N,)``: ``int(n · rate + 1)`` atoms drawn uniformly without replacement from each molecule
    (``batch`` maps atoms to molecules, ``counts`` holds each molecule's atom count)."""
    wanted = (counts.float() * rate + 1).long().clamp(max=counts)
    return random_ranks(batch, counts.shape[0]) < wanted[batch]


@register_pretraining(
    family="graph",
    title="Attribute masking (Pretrain-GNNs)",
    paper="Hu, Liu, Gomes, Zitnik, Liang, Pande, Leskovec, ICLR 2020 — Strategies for Pre-training Graph Neural "
    "Networks",
    code="snap-stanford/pretrain-gnns",
    docs="methods/gpf.md",
    recipes="gpf",
    overlay="graph_moleculenet",
)
class AttributeMasking(ObjectiveSteps, EncoderPretraining):
    """Pre-train a molecule GIN by masked-atom prediction (see the module docstring).

    Args:
        backbone: the :class:`~lightning_prompts.backbones.molecule_gin.MoleculeGIN` to pre-train (its weights,
            random or a checkpoint to continue from, are copied into a trainable encoder).
        mask_rate: share of each molecule's atoms masked (0.15; plus one atom).
        encoder_path: where to write the encoder at the end of ``fit`` (``None``: don't).
        optimizer: optimizer factory (default Adam, lr 1e-3, no weight decay).
    """

    accuracy_name = "atom_acc"

    def __init__(
        self,
        backbone: MoleculeGIN,
        mask_rate: float = 0.15,
        encoder_path: str | None = None,
        optimizer: Callable[[Any], Optimizer] | None = None,
    ) -> None:
        super().__init__()
        frozen = build_backbone(backbone)
        if not isinstance(frozen, MoleculeGIN):
            raise TypeError(f"attribute masking pre-trains a MoleculeGIN backbone, got {type(frozen).__name__}.")
        if not 0.0 <= mask_rate < 1.0:
            raise ValueError(f"mask_rate must be in [0, 1), got {mask_rate}.")
        self.save_hyperparameters(ignore=["optimizer", "backbone"])
        self.hparams["backbone"] = frozen.config()
        self.encoder = frozen.trainable_encoder()
        self.atom_predictor = nn.Linear(frozen.emb_dim, PREDICTED_ATOM_TYPES)
        self.mask_rate, self.encoder_path = mask_rate, encoder_path
        self.use_optimizer(optimizer, functools.partial(torch.optim.Adam, lr=1e-3))

    def masked_atom_loss(self, data: Any, masked: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(cross-entropy, accuracy)`` of the atom types of the ``masked`` atoms (default: a fresh draw)."""
        if masked is None:
            batch = getattr(data, "batch", None)
            batch = torch.zeros(data.x.shape[0], dtype=torch.long, device=data.x.device) if batch is None else batch
            masked = sample_masked_atoms(batch, torch.bincount(batch), self.mask_rate)
        targets = data.x[masked, 0]
        x = data.x.clone()
        x[masked] = torch.tensor([MASK_ATOM, 0], device=x.device, dtype=x.dtype)
        nodes = self.encoder(x, data.edge_index, data.edge_attr)
        logits = self.atom_predictor(nodes[masked])
        # the mean over the global batch's masked atoms: under DDP the processes' molecules mask different counts
        loss = global_batch_mean(F.cross_entropy(logits.float(), targets, reduction="sum"), targets.numel())
        return loss, (logits.argmax(-1) == targets).float().mean()

    def objective(self, batch: Any) -> tuple[Tensor, Tensor]:
        return self.masked_atom_loss(batch)

    def export_encoder(self, path: str | Path) -> Path:
        """Write the encoder as the official script does (a plain state dict)."""
        return self.save_plain_encoder(path)
