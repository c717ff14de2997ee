"""CoOp: Context Optimization (Zhou, Yang, Loy, Liu — "Learning to Prompt for Vision-Language
Models", IJCV 2022; official code: github.com/KaiyangZhou/CoOp).

CoOp learns the words around the class name. Every class prompt is
``[SOS] ctx_1 … ctx_n <classname> . [EOT]`` with learned context vectors ``ctx``; the frozen text
encoder turns the prompts into class weights ``w_c``, and an image ``x`` is classified by
``s · <f(x), w_c>`` with both features L2-normalised and ``s`` CLIP's logit scale. Only ``ctx``
is trained, with cross-entropy.

Faithful to the official code: prompt construction (placeholder tokens, SOS prefix and
class/EOT suffix kept as buffers, class token at the end/middle/front, ``_`` -> space), random
init N(0, 0.02²) or from the phrase's token embeddings with ``n_ctx`` = number of words, logits.
``tests/methods/test_coop.py`` re-computes the official steps independently on a tiny CLIP.

Where we deviate, and why:

* the text encoder runs only up to the last end-of-text position instead of all 77 (exact;
  :class:`~lightning_prompts.backbones.OpenCLIP`);
* fp32 master weights; mixed precision is the Trainer's ``precision`` (the official default is a
  pure-fp16 CLIP, whose NaN losses users report);
* class-specific context with ``ctx_init`` copies the phrase to every class (the official code
  silently falls back to a shared context);
* in eval mode the class text features are computed once per set of classes and context
  values, not once per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch.nn.functional as F
from torch import Tensor

from lightning_prompts.backbones.vision_language import VisionLanguageBackbone
from lightning_prompts.methods.base import CLIPPromptModule
from lightning_prompts.prompts.text_context import ClassContextPrompt
from lightning_prompts.registry import register_method


@register_method(
    family="clip",
    paper="Zhou, Yang, Loy, Liu, IJCV 2022 — Learning to Prompt for Vision-Language Models",
    code="KaiyangZhou/CoOp",
    example={"n_ctx": 4},
)
class CoOp(CLIPPromptModule):
    """CoOp on a frozen CLIP.

    Args:
        backbone: a frozen CLIP-family backbone (:class:`~lightning_prompts.backbones.OpenCLIP`,
            :class:`~lightning_prompts.backbones.StandInCLIP`).
        classnames: the training classes (linked from the data module by the CLI).
        n_ctx: number of context vectors (16 in the paper; ``None`` with ``ctx_init``: its word count).
        ctx_init: initialise the context from this phrase (``"a photo of a"``), or ``None`` for random.
        class_specific: one context per class (CSC) instead of one shared by all classes.
        class_token_position: ``"end"``, ``"middle"`` or ``"front"``.
        init_std: std of the random initialisation.
        **kwargs: ``frozen_template`` (see :class:`~lightning_prompts.methods.CLIPPromptModule`),
            ``optimizer``, ``lr_scheduler``, ``lr_scheduler_interval``, ``param_group_lr`` (see
            :class:`~lightning_prompts.methods.PromptModule`). Default optimizer: SGD, lr 0.002,
            momentum 0.9, weight decay 5e-4 (Dassl's defaults in CoOp's configs).
    """

    image_side_frozen: ClassVar[bool] = True

    def __init__(
        self,
        backbone: VisionLanguageBackbone,
        classnames: Sequence[str] | None = None,
        n_ctx: int | None = 16,
        ctx_init: str | None = None,
        class_specific: bool = False,
        class_token_position: Literal["end", "middle", "front"] = "end",
        init_std: float = 0.02,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, classnames, **kwargs)
        self.prompt = ClassContextPrompt(
            self.backbone,
            self.classnames,
            n_ctx=n_ctx,
            ctx_init=ctx_init,
            class_specific=class_specific,
            class_token_position=class_token_position,
            init_std=init_std,
        )

    def rebuild_class_prompts(self, classnames: Sequence[str]) -> None:
        self.prompt.set_classnames(classnames, self.backbone)

    def class_text_features(self) -> Tensor:
        prompts, eot = self.prompt()
        return F.normalize(self.backbone.encode_text_embeddings(prompts, eot), dim=-1)

    def image_features(self, images: Tensor) -> Tensor:
        return F.normalize(self.backbone.encode_image(images, patch_tokens=False).features, dim=-1)

    def frozen_image_features(self, images: Tensor) -> Tensor:
        # CoOp prompts only the text side: its image features *are* the frozen model's
        return self.image_features(images).detach()
