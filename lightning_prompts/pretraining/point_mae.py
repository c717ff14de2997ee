"""Point-MAE: masked-autoencoder pre-training of a point-cloud Transformer (Pang, Wang, Tay, Liu, Tian,
Yuan — ECCV 2022; official code: github.com/Pang-Yatian/Point-MAE, also in the IDPT repository).

Each cloud is cut into patches; a random ``mask_ratio`` of them (60 %, exactly ``int(0.6·G)`` per cloud,
Point-MAE's ``rand`` masking) is hidden. The encoder reads the visible patch tokens with their
positions; a light decoder (4 blocks) reads the encoded visible tokens followed by a shared mask token
per hidden patch, each with a decoder position embedding of its centre; a 1×1 convolution turns each
decoded mask token into the ``k`` points of its patch (relative to the centre), scored by the
Chamfer distance L2 (``mean`` of squared nearest-neighbour distances, both directions) against the
hidden patch. At the end of ``fit`` the encoder is written in Point-MAE's checkpoint layout, ready for
``PointMAE(checkpoint_path=...)`` and IDPT.

Deviation: no drop-path in the encoder and decoder blocks (the official uses 0.1).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from lightning_prompts.backbones.base import build_backbone
from lightning_prompts.backbones.point_mae import PointBlock, PointMAE, PointTransformerEncoder, point_mae_checkpoint
from lightning_prompts.batch import POINTS
from lightning_prompts.methods.base.optimization import warn_on_half_precision_parameters
from lightning_prompts.methods.base.points import split_weight_decay
from lightning_prompts.metrics.validation_means import log_validation_mean
from lightning_prompts.pretraining.base import EncoderPretraining
from lightning_prompts.registry import register_pretraining
from lightning_prompts.utils.factories import as_factory, describe_factory
from lightning_prompts.utils.tensor_files import save_atomically


def chamfer_l2(predicted: Tensor, target: Tensor) -> Tensor:
    """Chamfer distance L2 of point sets ``(S, n, 3)`` and ``(S, m, 3)``: the mean squared distance from each
    predicted point to its nearest target point plus the same from the targets' side (in float32: torch has no
    half-precision ``cdist`` on the CPU)."""
    distance = torch.cdist(predicted.float(), target.float()).pow(2)
    return distance.min(dim=2).values.mean() + distance.min(dim=1).values.mean()


def random_patch_mask(batch: int, patches: int, ratio: float, device: torch.device | None = None) -> Tensor:
    """``(B, G)`` booleans with exactly ``int(ratio · G)`` hidden patches per cloud, chosen uniformly."""
    hidden = int(ratio * patches)
    order = torch.rand(batch, patches, device=device).argsort(dim=1)
    mask = torch.zeros(batch, patches, dtype=torch.bool, device=device)
    return mask.scatter(1, order[:, :hidden], True)


@register_pretraining(
    family="points",
    title="Point-MAE pre-training",
    paper="Pang, Wang, Tay, Liu, Tian, Yuan, ECCV 2022 — Masked Autoencoders for Point Cloud Self-supervised Learning",
    code="Pang-Yatian/Point-MAE",
    docs="methods/idpt.md",
    overlay="point_mae",
)
class PointMAEPretraining(EncoderPretraining):
    """Pre-train a Point-MAE encoder by masked patch reconstruction (see the module docstring).

    Args:
        backbone: the :class:`~lightning_prompts.backbones.point_mae.PointMAE` to pre-train, configured as the
            prompt method will load it; its weights (random, or a checkpoint to continue from) are copied into
            a trainable encoder.
        mask_ratio: share of patches hidden per cloud (0.6).
        decoder_depth: decoder blocks (4).
        decoder_heads: decoder attention heads (default: the encoder's).
        encoder_path: where to write the encoder at the end of ``fit`` (``None``: don't).
        optimizer: optimizer factory (default AdamW, lr 1e-3, weight decay 0.05, Point-MAE's config); as in
            Point-MAE's builder, 1-D tensors (norms), biases and the mask token are not decayed.
        lr_scheduler: scheduler factory, stepped per epoch (e.g. ``WarmupCosineLR`` with
            ``cosine_span="from_start"``, Point-MAE's schedule); ``None``: a constant learning rate.
    """

    def __init__(
        self,
        backbone: PointMAE,
        mask_ratio: float = 0.6,
        decoder_depth: int = 4,
        decoder_heads: int | None = None,
        encoder_path: str | None = None,
        optimizer: Callable[[Any], Optimizer] | None = None,
        lr_scheduler: Callable[[Optimizer], LRScheduler] | None = None,
    ) -> None:
        super().__init__()
        frozen = build_backbone(backbone)
        if not isinstance(frozen, PointMAE):
            raise TypeError(f"Point-MAE pre-training needs a PointMAE backbone, got {type(frozen).__name__}.")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}.")
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler", "backbone"])
        self.hparams["backbone"] = frozen.config()
        self.hparams["lr_scheduler"] = describe_factory(lr_scheduler)
        self._scheduler_factory = as_factory(lr_scheduler)
        width, heads = frozen.width, decoder_heads or frozen.num_heads
        self.encoder = PointTransformerEncoder(
            frozen.num_patches, frozen.patch_size, width, frozen.depth, frozen.num_heads
        )
        self.encoder.load_state_dict(frozen.model.state_dict())
        self.mask_token = nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, 1, width), std=0.02))
        self.decoder_pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, width))
        self.decoder = nn.ModuleList(PointBlock(width, heads) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(width)
        self.increase_dim = nn.Conv1d(width, 3 * frozen.patch_size, 1)
        self.mask_ratio, self.encoder_path = mask_ratio, encoder_path
        self.use_optimizer(optimizer, functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.05))

    def reconstruction_loss(self, points: Tensor, mask: Tensor | None = None) -> Tensor:
        """The Chamfer-L2 reconstruction loss of the hidden patches of ``points`` ``(B, N, 3)`` (``mask``
        ``(B, G)``: True = hidden; default a fresh random mask)."""
        centres, patches = self.encoder.group(points)
        batch, groups, size, _ = patches.shape
        mask = random_patch_mask(batch, groups, self.mask_ratio, points.device) if mask is None else mask
        hidden = int(mask[0].sum())
        if not bool((mask.sum(dim=1) == hidden).all()) or hidden == 0:
            raise ValueError("every cloud must hide the same, non-zero number of patches.")
        # visible and hidden patches in ascending patch order, as boolean indexing gives them
        visible_centres = centres[~mask].reshape(batch, groups - hidden, 3)
        hidden_centres = centres[mask].reshape(batch, hidden, 3)
        tokens = self.encoder.encoder(patches[~mask].reshape(batch, groups - hidden, size, 3))
        encoded = self.encoder.run(tokens, self.encoder.pos_embed(visible_centres))
        x = torch.cat([encoded, self.mask_token.expand(batch, hidden, -1)], dim=1)
        pos = torch.cat([self.decoder_pos_embed(visible_centres), self.decoder_pos_embed(hidden_centres)], dim=1)
        for block in self.decoder:
            x = block(x + pos)
        decoded = self.decoder_norm(x[:, -hidden:])
        rebuilt = self.increase_dim(decoded.transpose(1, 2)).transpose(1, 2).reshape(batch * hidden, size, 3)
        return chamfer_l2(rebuilt, patches[mask].reshape(batch * hidden, size, 3))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self.reconstruction_loss(batch[POINTS])
        self.log("train/loss", loss, prog_bar=True, batch_size=int(batch[POINTS].shape[0]))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss = self.reconstruction_loss(batch[POINTS])
        log_validation_mean(self, "loss", loss, int(batch[POINTS].shape[0]))

    def configure_optimizers(self) -> Any:
        warn_on_half_precision_parameters(self)
        # Point-MAE's add_weight_decay: no decay on 1-D tensors (norms), biases and the mask token
        decay, no_decay = split_weight_decay(list(self.named_parameters()))
        optimizer = self._optimizer_factory([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}])
        if self._scheduler_factory is None:
            return optimizer
        scheduler = self._scheduler_factory(optimizer)
        epochs = self.trainer.max_epochs if self._trainer is not None else None
        if hasattr(scheduler, "set_max_epochs") and epochs is not None and epochs > 0:
            scheduler.set_max_epochs(int(epochs))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def export_encoder(self, path: str | Path) -> Path:
        """Write the encoder in Point-MAE's checkpoint layout (for ``PointMAE(checkpoint_path=path)``)."""
        return save_atomically(point_mae_checkpoint(self.encoder), path)
