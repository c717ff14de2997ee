"""Edge masking: pre-training of the bio GIN by masked-association prediction (Hu, Liu, Gomes, Zitnik, Liang, Pande,
Leskovec — "Strategies for Pre-training Graph Neural Networks", ICLR 2020; official code
github.com/snap-stanford/pretrain-gnns, ``bio/pretrain_masking.py`` and ``bio/util.py``'s ``MaskEdge``), the
attribute masking of the protein ego-networks behind the bio ``masking.pth`` checkpoint GPF prompts.

In every ego-network ``int(0.15 · edges + 1)`` of its edges are drawn (each edge is stored in both directions, one
after the other; the draw is over edges, the first direction of each); both directions' features become the mask
token ``[0, …, 0, 1]`` (the 9th, mask, flag), the GIN encodes the graph, and a linear layer on the sum of the two end
nodes' embeddings predicts the edge's type: the index of its first set association channel (``argmax`` of its 9
features, as the official code turns the multi-hot channels into one class; 7 classes), by cross-entropy. Adam, lr
1e-3, no weight decay, batch 256, 100 epochs on the unlabelled ego-networks (``dataset/unsupervised``) in the
official script. At the end of ``fit`` the encoder is written as a plain state dict, for
``BioGIN(checkpoint_path=...)``.
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
from lightning_prompts.backbones.bio_gin import EDGE_FEATURES, BioGIN
from lightning_prompts.pretraining.attribute_masking import sample_masked_atoms
from lightning_prompts.pretraining.base import EncoderPretraining, ObjectiveSteps
from lightning_prompts.registry import register_pretraining
from lightning_prompts.utils.distributed import global_batch_mean

#: the association channels the official linear layer predicts (the self-loop and mask flags excluded)
EDGE_TYPES = 7


def masked_edge_features(edge_attr: Tensor, first: Tensor) -> Tensor:
    """``edge_attr`` with both directions of each masked edge (stored at ``first`` and ``first + 1``) set to the
    official mask token: zeros but the last (mask) flag."""
    masked = edge_attr.clone()
    token = torch.zeros(EDGE_FEATURES, dtype=edge_attr.dtype, device=edge_attr.device)
    token[-1] = 1
    masked[torch.cat([first, first + 1])] = token
    return masked


@register_pretraining(
    family="graph",
    title="Edge masking (Pretrain-GNNs, bio)",
    paper="Hu, Liu, Gomes, Zitnik, Liang, Pande, Leskovec, ICLR 2020 — Strategies for Pre-training Graph Neural "
    "Networks",
    code="snap-stanford/pretrain-gnns",
    docs="methods/gpf.md",
    recipes="gpf",
    overlay="graph_moleculenet",
)
class EdgeMasking(ObjectiveSteps, EncoderPretraining):
    """Pre-train a bio GIN by masked-edge-type prediction (see the module docstring).

    Args:
        backbone: the :class:`~lightning_prompts.backbones.bio_gin.BioGIN` to pre-train (its weights, random or a
            checkpoint to continue from, are copied into a trainable encoder).
        mask_rate: share of each ego-network's edges masked (0.15; plus one edge).
        encoder_path: where to write the encoder at the end of ``fit`` (``None``: don't).
        optimizer: optimizer factory (default Adam, lr 1e-3, no weight decay).
    """

    accuracy_name = "edge_acc"

    def __init__(
        self,
        backbone: BioGIN,
        mask_rate: float = 0.15,
        encoder_path: str | None = None,
        optimizer: Callable[[Any], Optimizer] | None = None,
    ) -> None:
        super().__init__()
        frozen = build_backbone(backbone)
        if not isinstance(frozen, BioGIN):
            raise TypeError(f"edge masking pre-trains a BioGIN backbone, got {type(frozen).__name__}.")
        if not 0.0 <= mask_rate < 1.0:
            raise ValueError(f"mask_rate must be in [0, 1), got {mask_rate}.")
        self.save_hyperparameters(ignore=["optimizer", "backbone"])
        self.hparams["backbone"] = frozen.config()
        self.encoder = frozen.trainable_encoder()
        self.edge_predictor = nn.Linear(frozen.emb_dim, EDGE_TYPES)
        self.mask_rate, self.encoder_path = mask_rate, encoder_path
        self.use_optimizer(optimizer, functools.partial(torch.optim.Adam, lr=1e-3))

    def draw_masked_edges(self, data: Any) -> Tensor:
        """Positions of the first direction of the drawn edges: ``int(edges · mask_rate + 1)`` per graph."""
        batch = getattr(data, "batch", None)
        first = torch.arange(0, data.edge_index.shape[1], 2, device=data.edge_index.device)
        if batch is None:
            owner = torch.zeros_like(first)
        else:
            owner = batch[data.edge_index[0, first]]
        counts = torch.bincount(owner, minlength=int(getattr(data, "num_graphs", 1)))
        # the same per-graph draw as attribute masking's atoms: int(n · rate + 1) of each graph's n edges
        return first[sample_masked_atoms(owner, counts, self.mask_rate)]

    def masked_edge_loss(self, data: Any, first: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(cross-entropy, accuracy)`` of the types of the masked edges (``first``: the positions of their first
        direction; default a fresh draw)."""
        first = self.draw_masked_edges(data) if first is None else first
        targets = data.edge_attr[first].argmax(dim=1)
        if bool((targets >= EDGE_TYPES).any()):
            raise ValueError(
                "a masked edge's features have the self-loop or mask flag set as its first channel: the stored edges "
                "of the bio dataset carry zeros there."
            )
        nodes = self.encoder(data.x, data.edge_index, masked_edge_features(data.edge_attr, first))
        ends = data.edge_index[:, first]
        logits = self.edge_predictor(nodes[ends[0]] + nodes[ends[1]])
        # the mean over the global batch's masked edges: under DDP the processes' graphs mask different counts
        loss = global_batch_mean(F.cross_entropy(logits.float(), targets, reduction="sum"), targets.numel())
        return loss, (logits.argmax(-1) == targets).float().mean()

    def objective(self, batch: Any) -> tuple[Tensor, Tensor]:
        return self.masked_edge_loss(batch)

    def export_encoder(self, path: str | Path) -> Path:
        """Write the encoder as the official script does (a plain state dict)."""
        return self.save_plain_encoder(path)
