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
``tests/test_coop.py`` re-computes the official steps independently on a tiny CLIP.

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

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_prompts.backbones.vision_language import VisionLanguageBackbone
from lightning_prompts.methods.base import PromptModule
from lightning_prompts.outputs import PromptOutput
from lightning_prompts.prompts.text_context import ClassContextPrompt


class CoOp(PromptModule):
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
        frozen_template: hand-written prompt of the *unprompted* CLIP, used for the
            ``frozen_text_features`` output field that callbacks may ask for.
        **kwargs: ``optimizer``, ``lr_scheduler``, ``lr_scheduler_interval``, ``param_group_lr``; see
            :class:`~lightning_prompts.methods.PromptModule`. Default optimizer: SGD, lr 0.002,
            momentum 0.9, weight decay 5e-4 (Dassl's defaults in CoOp's configs).
    """

    output_fields: ClassVar[frozenset[str]] = frozenset(
        {"logits", "image_features", "text_features", "frozen_image_features", "frozen_text_features"}
    )
    supports_new_classes: ClassVar[bool] = True

    def __init__(
        self,
        backbone: VisionLanguageBackbone,
        classnames: Sequence[str] | None = None,
        n_ctx: int | None = 16,
        ctx_init: str | None = None,
        class_specific: bool = False,
        class_token_position: Literal["end", "middle", "front"] = "end",
        init_std: float = 0.02,
        frozen_template: str = "a photo of a {}.",
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, classnames, **kwargs)
        if not self.classnames:
            raise ValueError("CoOp needs classnames (the CLI links them from the data module).")
        self.frozen_template = frozen_template
        self.prompt = ClassContextPrompt(
            self.backbone,
            self.classnames,
            n_ctx=n_ctx,
            ctx_init=ctx_init,
            class_specific=class_specific,
            class_token_position=class_token_position,
            init_std=init_std,
        )
        self._text_cache: tuple[Any, Tensor] | None = None
        self._frozen_text_cache: tuple[Any, Tensor] | None = None

    # -- classes ---------------------------------------------------------------------------------
    def set_classnames(self, classnames: Sequence[str]) -> None:
        """Rebuild the class prompts for other classes (base -> novel, another dataset)."""
        self.prompt.set_classnames(classnames, self.backbone)
        self.classnames = list(classnames)
        self._text_cache = self._frozen_text_cache = None

    # -- features ----------------------------------------------------------------------------------
    def encode_class_prompts(self) -> Tensor:
        """L2-normalised text features ``(C, D)`` of the learned class prompts."""
        key = (self.prompt.ctx._version, self.prompt.token_prefix.data_ptr(), self.prompt.ctx.device)
        use_cache = not (self.training or torch.is_grad_enabled())
        if use_cache and self._text_cache is not None and self._text_cache[0] == key:
            return self._text_cache[1]
        prompts, eot = self.prompt()
        features = F.normalize(self.backbone.encode_text_embeddings(prompts, eot), dim=-1)
        self._text_cache = (key, features) if use_cache else None
        return features

    def frozen_text_features(self) -> Tensor:
        """L2-normalised features of ``frozen_template`` for each class from the unprompted CLIP."""
        key = (self.prompt.token_prefix.data_ptr(), self.prompt.token_prefix.device)
        if self._frozen_text_cache is None or self._frozen_text_cache[0] != key:
            texts = [self.frozen_template.format(name.replace("_", " ")) for name in self.classnames]
            with torch.no_grad():
                self._frozen_text_cache = (key, self.backbone.encode_text(texts, normalize=True))
        return self._frozen_text_cache[1]

    def forward(self, images: Tensor, fields: frozenset[str] = frozenset()) -> PromptOutput:
        """Classify ``images`` ``(B, 3, H, W)`` against the current classes."""
        image_features = F.normalize(self.backbone.encode_image(images).features, dim=-1)
        text_features = self.encode_class_prompts()
        logits = self.backbone.logit_scale * image_features @ text_features.t().to(image_features.dtype)
        output = PromptOutput(logits=logits, image_features=image_features, text_features=text_features)
        if "frozen_text_features" in fields:
            output.frozen_text_features = self.frozen_text_features()
        if "frozen_image_features" in fields:  # CoOp does not prompt the image encoder
            output.frozen_image_features = image_features.detach()
        return output

    def forward_batch(self, batch: Any, fields: frozenset[str] = frozenset()) -> PromptOutput:
        return self(batch["image"], fields)
