"""MUPT: MVLPT's multimodal variant, UPT's text and visual prompts through one joint projector.

Shen et al., "Multitask Vision-Language Prompt Tuning", WACV 2024 (official code: sIncerass/MVLPT,
``trainers/mvlpt.py`` run with ``VPT.N_CTX 4``, ``COOP.N_CTX 4``, ``PROJECT_METHOD transformer``,
``PROJECT_DIM 128``; the idea is Zang et al.'s UPT):

* text: 4 shared context vectors with the class token in the middle (CoOp), N(0, 0.02);
* image: 4 visual prompt tokens per block, after ``ln_pre`` and right after the class token, replaced before
  every later block (as :class:`~lightning_prompts.methods.MVPT`), uniform in ``±sqrt(6 / (3·p² + W))``;
* every forward pass first maps all of them through
  :class:`~lightning_prompts.prompts.joint_projector.JointPromptProjector`: to width 128, one CLIP residual
  attention block, and back. The official code feeds the block a length-1 sequence, so each token is
  projected on its own (see that module); reproduced as released.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_prompts.backbones.vision_language import VisionLanguageBackbone
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods.base import CLIPPromptModule
from lightning_prompts.prompts.joint_projector import JointPromptProjector
from lightning_prompts.prompts.text_context import ClassContextPrompt
from lightning_prompts.prompts.visual_tokens import VisualPromptTokens
from lightning_prompts.registry import register_method


@register_method(
    family="clip",
    paper="WACV 2024 — Multitask Vision-Language Prompt Tuning (MUPT, the multimodal variant)",
    code="sIncerass/MVLPT",
    example={"n_ctx": 2, "num_tokens": 2, "projector_width": 16},
    recipes="mvlpt",
    docs="methods/mupt.md",
)
class MUPT(CLIPPromptModule):
    """Text context and deep visual prompts projected jointly before every pass (see the module docstring).

    Args:
        backbone: a CLIP with a ViT image tower.
        classnames: the classes (linked from the data module).
        n_ctx: text context vectors (4).
        num_tokens: visual prompt tokens per block (4).
        projector_width: the joint projector's width (128).
        class_token_position: where the class name sits in the text prompt (``"middle"``).
        **kwargs: see :class:`~lightning_prompts.methods.CLIPPromptModule`.
    """

    supports_new_classes: ClassVar[bool] = True

    def __init__(
        self,
        backbone: VisionLanguageBackbone,
        classnames: Sequence[str] | None = None,
        n_ctx: int = 4,
        num_tokens: int = 4,
        projector_width: int = 128,
        class_token_position: str = "middle",
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, classnames, **kwargs)
        if not getattr(self.backbone, "is_vit", False):
            raise ConfigurationError(
                f"MUPT inserts prompt tokens into a ViT image tower; {self.backbone.name} has none."
            )
        self.prompt = ClassContextPrompt(
            self.backbone,
            self.classnames,
            n_ctx=n_ctx,
            class_token_position=class_token_position,  # type: ignore[arg-type]
        )
        self.visual_prompt = VisualPromptTokens(
            num_tokens, self.backbone.vision_width, self.backbone.vision_layers, deep=True,
            patch_size=self.backbone.patch_size,
        )  # fmt: skip
        self.projector = JointPromptProjector(self.backbone.text_width, self.backbone.vision_width, projector_width)

    def rebuild_class_prompts(self, classnames: Sequence[str]) -> None:
        self.prompt.set_classnames(classnames, self.backbone)

    def projected_prompts(self) -> tuple[Tensor, Tensor]:
        """The text context ``(n_ctx, text_width)`` and the visual tokens ``(layers, n, vision_width)``
        after the joint projector."""
        visual = torch.cat([self.visual_prompt.tokens.unsqueeze(0), self.visual_prompt.deep_tokens], dim=0)
        return self.projector(self.prompt.ctx, visual)

    def class_text_features(self) -> Tensor:
        context, _ = self.projected_prompts()
        prompts, eot = self.prompt(context)
        return F.normalize(self.backbone.encode_text_embeddings(prompts, eot), dim=-1)

    def image_features(self, images: Tensor) -> Tensor:
        _, visual = self.projected_prompts()
        deep = list(visual[1:])
        encoded = self.backbone.encode_image(
            images, visual[0], deep, location="prepend", after_ln_pre=True, patch_tokens=False
        )
        return F.normalize(encoded.features, dim=-1)
