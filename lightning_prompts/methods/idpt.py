"""IDPT: Instance-aware Dynamic Prompt Tuning for pre-trained point cloud models (Zha, Wang, Yang, Zhang,
Liu — ICCV 2023; official code: github.com/zyh16143998882/ICCV23-IDPT).

A frozen Point-MAE reads ``[CLS, patches]``. Before block ``prompt_layer`` (11 of 12 for ModelNet40 and
ScanObjectNN PB-T50-RS, 6 for OBJ-ONLY), a DGCNN-like generator turns the current patch tokens into one
prompt token per cloud, spliced in after the class token with its own position embedding
(:class:`~lightning_prompts.prompts.point_prompts.InstancePromptHook`); the remaining blocks run on
``[CLS, prompt, patches]``. The head reads ``[CLS ‖ prompt ‖ max over patches]`` after the final norm
(``feature="all"``; ``"prompt"`` reads the prompt only, as the official OBJ-BG config). Trained: the class
token and its position, the generator and the head (the official ``only_new`` parameters).

Faithful to the official code: the generator (k = 20 in feature space, self included), where and how the
prompt enters, the position embedding added before every block, the head, and the prompt's position
embedding, which the official optimizer never trains (its name lacks ``cls``): here a fixed buffer drawn
from the same truncated normal, seeded. Deviations: the frozen encoder stays in eval mode (the official
model trains with dropout-path 0.1 and BatchNorm updates in the "frozen" encoder), FPS/kNN are torch
ops (:mod:`lightning_prompts.backbones.point_ops`) instead of CUDA kernels, and the recipes' gradient clipping
(norm 10) measures the trained parameters' gradients only: the official measures every gradient, the "frozen"
encoder's included (its parameters get gradients there without being updated), so it clips harder. Matching it
would compute the encoder's weight gradients every step for the norm alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_prompts.backbones.base import build_backbone
from lightning_prompts.backbones.hooks import BlockHook
from lightning_prompts.backbones.point_mae import PointEncoding, PointMAE
from lightning_prompts.methods.base.points import PointPromptModule
from lightning_prompts.prompts.point_prompts import EdgeConvPromptGenerator, InstancePromptHook
from lightning_prompts.registry import register_method


@register_method(
    family="points",
    paper="Zha, Wang, Yang, Zhang, Liu, ICCV 2023 — Instance-aware Dynamic Prompt Tuning for Pre-trained Point "
    "Cloud Models",
    code="zyh16143998882/ICCV23-IDPT",
    example={"prompt_layer": 1},
    overlay="idpt",
)
class IDPT(PointPromptModule):
    """Instance-aware dynamic prompt tuning of a frozen Point-MAE (see the module docstring).

    Args:
        backbone: the frozen :class:`~lightning_prompts.backbones.point_mae.PointMAE`.
        classnames: the classes (their number sizes the head).
        prompt_layer: the block before which the prompt enters (0-based; 11 for ModelNet40, 6 for OBJ-ONLY).
        feature: what the head reads: ``"all"`` (``[CLS ‖ prompt ‖ max patches]``) or ``"prompt"``.
        neighbours: the generator's k.
        seed: seed of the prompt's (fixed) position embedding.
        **kwargs: see :class:`~lightning_prompts.methods.base.points.PointPromptModule`; groups ``"prompt"``
            (class token, its position, the generator) and ``"head"``, each with a ``*_no_decay`` twin.
    """

    def __init__(
        self,
        backbone: PointMAE,
        classnames: Sequence[str] | None = None,
        prompt_layer: int = 11,
        feature: Literal["all", "prompt"] = "all",
        neighbours: int = 20,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        backbone = build_backbone(backbone)  # a checkpoint passes its stored config; the depth is needed now
        if not 0 <= prompt_layer < backbone.depth:
            raise ValueError(f"prompt_layer must be in [0, {backbone.depth}), got {prompt_layer}.")
        if feature not in ("all", "prompt"):
            raise ValueError(f"feature must be 'all' or 'prompt', got {feature!r}.")
        self.pooled_parts = 3 if feature == "all" else 1
        super().__init__(backbone, classnames, **kwargs)

    def build_prompt(self) -> None:
        width = self.backbone.width
        self.generator = EdgeConvPromptGenerator(width, self.hparams["neighbours"])
        generator = torch.Generator().manual_seed(self.hparams["seed"])
        position = torch.empty(1, 1, width)
        with torch.no_grad():
            nn.init.trunc_normal_(position, std=0.02, generator=generator)
        self.register_buffer("prompt_pos", position)

    def block_hooks(self) -> BlockHook:
        return InstancePromptHook(self.generator, self.prompt_pos, self.hparams["prompt_layer"])

    def pool(self, encoded: PointEncoding) -> Tensor:
        assert encoded.inserted is not None
        prompt = encoded.inserted[:, 0]
        if self.hparams["feature"] == "prompt":
            return prompt
        tokens = encoded.tokens
        return torch.cat([tokens[:, 0], prompt, tokens[:, 1:].max(dim=1).values], dim=-1)
