"""VPT: Visual Prompt Tuning (Jia, Tang, Chen, Cardie, Belongie, Hariharan, Lim — ECCV 2022;
official code: github.com/KMnP/vpt).

VPT learns a few tokens that the frozen ViT reads with its patches, plus a linear head:

* **shallow**: ``[CLS, P, patches]``: the prompts enter once, right after the class token and
  after the positional embedding (so they carry no position);
* **deep**: before every later block the outputs at the prompt slot are dropped and that block's
  own prompts are spliced in (replace, never accumulate).

The head reads the class token after the final LayerNorm (timm's own pooling: for ViTs pooled by
averaging, the average excludes the prompt tokens). Faithful to the official code: prompt
init uniform in ``±sqrt(6/(3·p²+d))``, optional projection, prompt dropout, head init (Kaiming
fan-out weights, bias ``-log(99)``), frozen encoder in eval mode, only prompts and head trained.
``tests/methods/test_vpt.py`` checks token placement against a block-by-block re-computation.

Deviation: the official code builds its own ViT from Google's ``.npz``; we use timm's
``VisionTransformer`` (the same weights are ``vit_base_patch16_224.orig_in21k`` in timm).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

from torch import Tensor, nn

from lightning_prompts.backbones.hooks import BlockHook
from lightning_prompts.backbones.timm_vit import TimmViT
from lightning_prompts.methods.base import ViTPromptModule
from lightning_prompts.prompts.visual_tokens import VisualPromptTokens
from lightning_prompts.registry import register_method


@register_method(
    family="vit",
    paper="Jia, Tang, Chen, Cardie, Belongie, Hariharan, Lim, ECCV 2022 — Visual Prompt Tuning",
    code="KMnP/vpt",
)
class VPT(ViTPromptModule):
    """Visual prompt tuning of a frozen timm ViT, with a trained linear head.

    Args:
        backbone: the frozen :class:`~lightning_prompts.backbones.TimmViT`.
        classnames: the classes (their number sizes the head).
        num_tokens: prompt tokens per layer (VPT picks from {1, 5, 10, 50, 100, 200} per dataset).
        deep: VPT-deep (prompts at every layer) instead of VPT-shallow.
        dropout: dropout on the prompt tokens.
        project_dim: learn prompts in this smaller width and project them (VPT's ``PROJECT``).
        **kwargs: ``optimizer``, ``lr_scheduler``, ``lr_scheduler_interval``, ``param_group_lr``; see
            :class:`~lightning_prompts.methods.PromptModule`; the groups are ``"prompt"``,
            ``"head"`` and ``"head_bias"`` (no weight decay, as in the official optimizer).
            Default optimizer: SGD, lr 0.01, momentum 0.9, weight decay 1e-4 (VPT's config
            defaults; its tuned recipes scale the lr by batch/256).
    """

    default_optimizer: ClassVar[dict[str, Any]] = {
        "class_path": "torch.optim.SGD",
        "init_args": {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
    }

    def __init__(
        self,
        backbone: TimmViT,
        classnames: Sequence[str] | None = None,
        num_tokens: int = 5,
        deep: bool = False,
        dropout: float = 0.0,
        project_dim: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, classnames, **kwargs)
        vit = self.backbone
        self.prompt = VisualPromptTokens(
            num_tokens,
            vit.width,
            vit.depth,
            deep=deep,
            patch_size=vit.patch_size,
            dropout=dropout,
            project_dim=project_dim,
        )
        self.head = nn.Linear(vit.width, len(self.classnames))
        nn.init.kaiming_normal_(self.head.weight, a=0, mode="fan_out")
        nn.init.constant_(self.head.bias, -math.log((1 - 0.01) / 0.01))

    def param_groups(self) -> list[dict[str, Any]]:
        # the official optimizer exempts only the head's bias from weight decay
        return [
            {"name": "prompt", "params": list(self.prompt.parameters())},
            {"name": "head", "params": [self.head.weight]},
            {"name": "head_bias", "params": [self.head.bias], "weight_decay": 0.0},
        ]

    def block_hooks(self) -> BlockHook:
        return self.prompt.hooks()

    def classify(self, pooled: Tensor) -> Tensor:
        return self.head(pooled)
