"""``PointPromptModule``: what every prompt method on a frozen Point-MAE shares (IDPT, point VPT).

The method owns the class token and its position (Point-MAE's pre-trained encoder has none; both are
trained, as in the official fine-tuning models), lays out ``[CLS, patches]`` with their positions,
runs the frozen blocks with its block hook, reads a feature from the normalised outputs
(:meth:`PointPromptModule.pool`) and classifies it with the official fine-tuning head
(``Linear → BN → ReLU → Dropout(0.5)`` twice, then ``Linear``).

The official optimizer (AdamW, lr 5e-4, weight decay 0.05) exempts 1-D parameters, biases and tokens
from weight decay: :meth:`PointPromptModule.param_groups` puts those in ``*_no_decay`` groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lightning_prompts.backbones.hooks import BlockHook
from lightning_prompts.backbones.point_mae import PointEncoding, PointMAE
from lightning_prompts.batch import POINTS
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods.base.module import PromptModule
from lightning_prompts.outputs import PromptOutput


def point_head(in_features: int, num_classes: int, hidden: int = 256, dropout: float = 0.5) -> nn.Sequential:
    """The fine-tuning head of Point-MAE and IDPT."""
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


def split_weight_decay(named: Sequence[tuple[str, nn.Parameter]]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(decayed, not decayed)`` as the official optimizer splits them: no decay on 1-D tensors, biases
    and tokens."""
    decay, no_decay = [], []
    for name, param in named:
        exempt = param.dim() == 1 or name.endswith(".bias") or "token" in name
        (no_decay if exempt else decay).append(param)
    return decay, no_decay


class PointPromptModule(PromptModule):
    """Base of point-cloud prompt methods (see the module docstring).

    Args:
        backbone: the frozen :class:`~lightning_prompts.backbones.point_mae.PointMAE`.
        classnames: the classes (their number sizes the head).
        **kwargs: see :class:`~lightning_prompts.methods.PromptModule`. Default optimizer: AdamW, lr 5e-4,
            weight decay 0.05 (IDPT's configs).
    """

    produced_fields: ClassVar[frozenset[str]] = frozenset({"logits", "pooled_features", "patch_tokens"})
    default_optimizer: ClassVar[dict[str, Any]] = {
        "class_path": "torch.optim.AdamW",
        "init_args": {"lr": 5e-4, "weight_decay": 0.05},
    }
    #: how many ``width``-wide features :meth:`pool` concatenates (sizes the head).
    pooled_parts: ClassVar[int] = 2
    #: whether the method lays out a trained class token (with a trained position) before the patches.
    class_token: ClassVar[bool] = True

    def check_ready(self, stage: str, callbacks: Any, datamodule: Any | None) -> None:
        super().check_ready(stage, callbacks, datamodule)
        batch_size = getattr(datamodule, "batch_size", None)
        # the head normalises pooled features (B, C) over the batch; the prompt modules' norms also run over points
        norms = [f"head.{name}" for name, module in self.head.named_modules() if isinstance(module, nn.BatchNorm1d)]
        if stage == "fit" and batch_size == 1 and norms:
            raise ConfigurationError(
                f"{type(self).__name__}'s head has BatchNorm ({norms[0]}, as the official fine-tuning head), which "
                "normalises over the clouds of a training batch: a batch of one cloud has no statistics. Set "
                "data.init_args.batch_size to 2 or more."
            )
        points = getattr(datamodule, "num_points", None)
        needed = max(self.backbone.num_patches, self.backbone.patch_size)
        if isinstance(points, int) and points < needed:
            raise ConfigurationError(
                f"the data module samples {points} points per cloud, but {type(self).__name__}'s backbone groups "
                f"{self.backbone.num_patches} patches of {self.backbone.patch_size} points: num_points >= {needed}."
            )

    def __init__(self, backbone: PointMAE, classnames: Sequence[str] | None = None, **kwargs: Any) -> None:
        super().__init__(backbone, classnames, **kwargs)
        if not self.classnames:
            raise ValueError(f"{type(self).__name__} needs classnames to size its head (the CLI links them).")
        width = self.backbone.width  # built: a checkpoint passes its stored config (a dict)
        if self.class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
            self.cls_pos = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, 1, width), std=0.02))
        self.build_prompt()
        self.head = self.build_head(self.pooled_parts * width, len(self.classnames))

    def build_head(self, in_features: int, num_classes: int) -> nn.Module:
        """The classifier (default: the official fine-tuning head)."""
        return point_head(in_features, num_classes)

    # -- what a point method implements -------------------------------------------------------------
    def build_prompt(self) -> None:
        """Create the prompt modules (after the class token, before the head)."""

    def block_hooks(self) -> BlockHook | None:
        """The prompt of this forward pass as a block hook (``None``: no prompt)."""
        return None

    def pool(self, encoded: PointEncoding) -> Tensor:
        """The feature the head reads; by default ``[CLS ‖ max over patches]``."""
        tokens = encoded.tokens
        return torch.cat([tokens[:, 0], tokens[:, 1:].max(dim=1).values], dim=-1)

    # -- forward -------------------------------------------------------------------------------------
    def forward(self, points: Tensor, fields: frozenset[str] = frozenset()) -> PromptOutput:
        patches = self.backbone.embed(points)
        batch, prefix = points.shape[0], int(self.class_token)
        tokens, positions = patches.tokens, patches.positions
        if self.class_token:
            tokens = torch.cat([self.cls_token.expand(batch, -1, -1), tokens], dim=1)
            positions = torch.cat([self.cls_pos.expand(batch, -1, -1), positions], dim=1)
        encoded = self.backbone.encode(tokens, positions, hooks=self.block_hooks(), prefix_tokens=prefix)
        pooled = self.pool(encoded)
        return PromptOutput(logits=self.head(pooled), pooled_features=pooled, patch_tokens=encoded.tokens[:, prefix:])

    def forward_batch(self, batch: Any, fields: frozenset[str] = frozenset()) -> PromptOutput:
        return self(batch[POINTS], fields)

    def param_groups(self) -> list[dict[str, Any]]:
        trainable = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        groups = []
        for group, members in (
            ("prompt", [(n, p) for n, p in trainable if not n.startswith("head.")]),
            ("head", [(n, p) for n, p in trainable if n.startswith("head.")]),
        ):
            decay, no_decay = split_weight_decay(members)
            groups.append({"name": group, "params": decay})
            groups.append({"name": f"{group}_no_decay", "params": no_decay, "weight_decay": 0.0})
        return [group for group in groups if group["params"]]
