"""Linear probing of a frozen Point-MAE: the baseline that prompts must beat.

The frozen encoder reads the patches alone (no class token, no prompt); the feature is Point-MAE's
linear-probing feature, the max- and mean-pooled final patch tokens concatenated, and a single linear
layer classifies it. Only that layer trains. (Point-MAE itself fits a linear SVM on this feature; a
linear layer trained with cross-entropy is the same model class, trained with another loss.)
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from lightning_prompts.backbones.point_mae import PointEncoding
from lightning_prompts.methods.base.points import PointPromptModule
from lightning_prompts.registry import register_method


@register_method(
    family="points",
    title="Linear probe (Point-MAE)",
    paper="Pang et al., ECCV 2022 (Point-MAE), the linear-probing protocol",
    code="Pang-Yatian/Point-MAE",
    recipes="idpt",
    docs="methods/idpt.md",
)
class PointLinearProbe(PointPromptModule):
    """A linear classifier on ``[max ‖ mean]`` of the frozen Point-MAE's patch tokens (see the module docstring).

    Args:
        backbone: the frozen :class:`~lightning_prompts.backbones.point_mae.PointMAE`.
        classnames: the classes.
        **kwargs: see :class:`~lightning_prompts.methods.base.points.PointPromptModule`; groups ``"head"`` and
            ``"head_no_decay"`` (the bias).
    """

    class_token: ClassVar[bool] = False

    def build_head(self, in_features: int, num_classes: int) -> nn.Module:
        return nn.Linear(in_features, num_classes)

    def pool(self, encoded: PointEncoding) -> Tensor:
        tokens = encoded.tokens
        return torch.cat([tokens.max(dim=1).values, tokens.mean(dim=1)], dim=-1)
