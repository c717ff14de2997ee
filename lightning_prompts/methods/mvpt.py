"""MVPT: deep visual prompts on CLIP's image tower, MVLPT's visual variant.

Shen et al., "Multitask Vision-Language Prompt Tuning", WACV 2024 (official code: sIncerass/MVLPT,
``trainers/mvlpt.py`` with ``VPT.N_CTX 16``, ``COOP.N_CTX 0``). The text side is CLIP's own, frozen, on
"a photo of a {}."; the image side gets VPT-deep prompts:

* 16 tokens inserted right after the class token **after** ``ln_pre`` (so CLIP's input norm does not
  touch them), uniform in ``±sqrt(6 / (3·p² + W))``;
* before every later block ``i = 1 … L−1`` the slot is replaced by that block's own 16 tokens;
* the class token after ``ln_post`` and the projection is the image feature.

With ``deep=False, after_ln_pre=False, init="normal"`` it is the visual prompt of GRIP (Menghini et al.,
NeurIPS 2023; ``CustomVisionTransformer``: 16 tokens after the class token, before ``ln_pre``, first layer only),
which :class:`~lightning_prompts.callbacks.PseudoLabelRounds` trains with pseudolabels.

Like CoOp, it is trained on one dataset or on a merged label space
(:class:`~lightning_prompts.data.MultiTaskImageDataModule`, MVLPT's source stage) and transferred by
``prompt_init`` from averaged prompt files (``lightning-prompts average``); the prompts do not depend on the
classes, so any class list can be scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_prompts.backbones.vision_language import VisionLanguageBackbone
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods.base import CLIPPromptModule
from lightning_prompts.prompts.visual_tokens import VisualPromptTokens
from lightning_prompts.registry import register_method


@register_method(
    family="clip",
    paper="WACV 2024 — Multitask Vision-Language Prompt Tuning (MVPT, the visual variant)",
    code="sIncerass/MVLPT",
    example={"num_tokens": 2},
    recipes="mvlpt",
    docs="methods/mvpt.md",
)
class MVPT(CLIPPromptModule):
    """Deep visual prompts after ``ln_pre`` with CLIP's frozen text classifier (see the module docstring).

    Args:
        backbone: a CLIP with a ViT image tower (:class:`~lightning_prompts.backbones.OpenCLIP`).
        classnames: the classes (linked from the data module).
        num_tokens: prompt tokens per block (16).
        deep: fresh tokens before every block (the official ``VPT.DEEP True``) or the first block only.
        dropout: dropout on the prompt tokens (0).
        after_ln_pre: insert the tokens after CLIP's ``ln_pre`` (MVLPT) or before it (GRIP's visual prompts,
            ``CustomVisionTransformer``).
        init: ``"uniform"`` (VPT's ``±sqrt(6 / (3·p² + W))``, MVLPT) or ``"normal"`` (``W^-1/2 · N(0, 1)``, GRIP's
            ``VIS_PREFIX_INIT: normal``).
        **kwargs: see :class:`~lightning_prompts.methods.CLIPPromptModule`; ``frozen_template`` is the text
            prompt ("a photo of a {}.").
    """

    supports_new_classes: ClassVar[bool] = True

    def __init__(
        self,
        backbone: VisionLanguageBackbone,
        classnames: Sequence[str] | None = None,
        num_tokens: int = 16,
        deep: bool = True,
        dropout: float = 0.0,
        after_ln_pre: bool = True,
        init: Literal["uniform", "normal"] = "uniform",
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, classnames, **kwargs)
        if not getattr(self.backbone, "is_vit", False):
            raise ConfigurationError(
                f"MVPT inserts prompt tokens into a ViT image tower; {self.backbone.name} has none."
            )
        self.prompt = VisualPromptTokens(
            num_tokens,
            self.backbone.vision_width,
            self.backbone.vision_layers,
            deep=deep,
            patch_size=self.backbone.patch_size,
            dropout=dropout,
        )
        if init not in ("uniform", "normal"):
            raise ConfigurationError(f"MVPT init must be 'uniform' or 'normal', got {init!r}.")
        if init == "normal":
            std = self.backbone.vision_width**-0.5
            with torch.no_grad():
                for tokens in (self.prompt.tokens, self.prompt.deep_tokens):
                    if tokens is not None:
                        tokens.normal_(std=std)
        self.after_ln_pre = after_ln_pre

    def class_text_features(self) -> Tensor:
        """CLIP's frozen text features of ``frozen_template`` (nothing on the text side is learned)."""
        return self.frozen_text_features()

    def image_features(self, images: Tensor) -> Tensor:
        first, deep = self.prompt()
        encoded = self.backbone.encode_image(
            images, first, deep, location="prepend", after_ln_pre=self.after_ln_pre, patch_tokens=False
        )
        return F.normalize(encoded.features, dim=-1)
