"""VPT-deep on a frozen Point-MAE: the static-prompt baseline of IDPT (the official
``PointTransformerPromptDeep``).

Before every block, the previous block's prompt outputs are dropped and that block's own ``num_tokens``
prompts are appended after the patches, each with its own position embedding (both trained, both drawn
from a truncated normal with std 0.02). The head reads ``[CLS ‖ max over patches]`` after the final norm.
Trained: the class token and its position, the prompts and their positions, the head.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lightning_prompts.backbones.hooks import BlockHook
from lightning_prompts.backbones.point_mae import PointMAE
from lightning_prompts.methods.base.points import PointPromptModule
from lightning_prompts.prompts.point_prompts import PositionedPromptTokens
from lightning_prompts.registry import register_method


def _trunc_normal(*shape: int) -> nn.Parameter:
    return nn.Parameter(nn.init.trunc_normal_(torch.empty(*shape), std=0.02))


@register_method(
    family="points",
    title="VPT-deep on point clouds",
    paper="Jia et al., ECCV 2022 (VPT), as IDPT's point-cloud baseline (Zha et al., ICCV 2023)",
    code="zyh16143998882/ICCV23-IDPT",
    recipes="idpt",
    docs="methods/idpt.md",
    example={"num_tokens": 2},
)
class PointVPT(PointPromptModule):
    """VPT-deep on a frozen Point-MAE (see the module docstring).

    Args:
        backbone: the frozen :class:`~lightning_prompts.backbones.point_mae.PointMAE`.
        classnames: the classes (their number sizes the head).
        num_tokens: prompts per block (10 in IDPT's configs).
        **kwargs: see :class:`~lightning_prompts.methods.base.points.PointPromptModule`.
    """

    def __init__(
        self, backbone: PointMAE, classnames: Sequence[str] | None = None, num_tokens: int = 10, **kwargs: Any
    ) -> None:
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}.")
        super().__init__(backbone, classnames, **kwargs)

    def build_prompt(self) -> None:
        depth, width, count = self.backbone.depth, self.backbone.width, self.hparams["num_tokens"]
        self.prompts = nn.ParameterList(_trunc_normal(count, width) for _ in range(depth))
        self.prompt_positions = nn.ParameterList(_trunc_normal(count, width) for _ in range(depth))

    def block_hooks(self) -> BlockHook:
        return PositionedPromptTokens(list(self.prompts), list(self.prompt_positions), where="append")
