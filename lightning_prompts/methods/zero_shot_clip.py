"""Zero-shot CLIP (Radford et al., "Learning Transferable Visual Models From Natural Language
Supervision", ICML 2021): classify images by their similarity to hand-written class prompts.

The baseline every CLIP prompt method is compared with. Nothing is trained: the class weights are
the normalised mean of the text features of ``templates`` filled with each class name (prompt
ensembling when several templates are given), and ``logits = s · <f(x), w_c>``. ``fit`` only
validates; use ``validate`` or ``test`` (base-to-novel test sets included).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor

from lightning_prompts.backbones.vision_language import VisionLanguageBackbone
from lightning_prompts.methods.base import CLIPPromptModule
from lightning_prompts.methods.base.clip import template_ensemble
from lightning_prompts.registry import register_method


@register_method(
    family="clip",
    title="Zero-shot CLIP",
    paper="Radford et al., ICML 2021 — Learning Transferable Visual Models From Natural Language Supervision",
    code="openai/CLIP",
)
class ZeroShotCLIP(CLIPPromptModule):
    """Hand-written prompts on a frozen CLIP (any CLIP-family backbone).

    Args:
        backbone: a CLIP-family backbone (:class:`~lightning_prompts.backbones.OpenCLIP`,
            :class:`~lightning_prompts.backbones.StandInCLIP`).
        classnames: the classes (linked from the data module; ``_`` becomes a space).
        templates: prompt templates with ``{}`` for the class name (CLIP's default: ``"a photo of a {}."``).
        **kwargs: see :class:`~lightning_prompts.methods.CLIPPromptModule` (nothing is optimised).
    """

    image_side_frozen: ClassVar[bool] = True

    def __init__(
        self,
        backbone: VisionLanguageBackbone,
        classnames: Sequence[str] | None = None,
        templates: Sequence[str] = ("a photo of a {}.",),
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, classnames, **kwargs)
        if not templates or any("{}" not in template for template in templates):
            raise ValueError(f"every template needs a '{{}}' for the class name, got {list(templates)}.")
        self.templates = list(templates)

    def class_text_features(self) -> Tensor:
        """``(C, D)`` normalised mean over templates of the normalised class-prompt features."""
        return template_ensemble(self.backbone, self.classnames, self.templates)

    def image_features(self, images: Tensor) -> Tensor:
        return F.normalize(self.backbone.encode_image(images, patch_tokens=False).features, dim=-1)

    def frozen_text_features(self) -> Tensor:
        return self.encode_class_prompts()  # the model is its own frozen teacher

    def frozen_image_features(self, images: Tensor) -> Tensor:
        return self.image_features(images)
