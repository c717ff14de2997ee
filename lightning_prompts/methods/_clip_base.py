"""``CLIPPromptModule``: what every prompt method on a CLIP-family backbone shares.

A CLIP method scores an image against one text feature per class: ``logits = s · <f(x), w_c>``
with both L2-normalised and ``s`` the backbone's logit scale. Methods differ in how they make the
two features, so a subclass implements :meth:`CLIPPromptModule.class_text_features` and
:meth:`CLIPPromptModule.image_features`; this base adds the rest:

* in eval mode the class text features are computed once per set of classes and parameter values
  (the cache key is the version counter of every trainable parameter, which an optimizer step
  bumps), not once per batch;
* the output fields a regulariser may ask for: ``frozen_text_features`` (the unprompted model on
  ``frozen_template``, computed once per class set) and ``frozen_image_features`` (the unprompted
  image encoder, on the batch's second view ``image_view2`` when the data module makes one, as
  CoPrompt feeds its teacher).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_prompts.backbones.vision_language import VisionLanguageBackbone
from lightning_prompts.methods.base import PromptModule
from lightning_prompts.outputs import PromptOutput


class CLIPPromptModule(PromptModule):
    """Base of CLIP prompt methods (see the module docstring).

    Args:
        backbone: a CLIP-family backbone (:class:`~lightning_prompts.backbones.OpenCLIP`,
            :class:`~lightning_prompts.backbones.StandInCLIP`).
        classnames: the training classes (linked from the data module by the CLI).
        frozen_template: hand-written prompt of the *unprompted* model, for the
            ``frozen_text_features`` output field.
        **kwargs: see :class:`~lightning_prompts.methods.PromptModule`.
    """

    output_fields: ClassVar[frozenset[str]] = frozenset(
        {
            "logits",
            "image_features",
            "text_features",
            "frozen_image_features",
            "frozen_text_features",
            "foreground_image_features",
            "background_image_features",
            "background_text_features",
        }
    )
    supports_new_classes: ClassVar[bool] = True
    #: The method leaves the image encoder unprompted, so its image features *are* the frozen model's
    #: (CoOp, zero-shot): ``frozen_image_features`` of the same images reuses them instead of a second pass.
    image_side_frozen: ClassVar[bool] = False

    def __init__(
        self,
        backbone: VisionLanguageBackbone,
        classnames: Sequence[str] | None = None,
        frozen_template: str = "a photo of a {}.",
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, classnames, **kwargs)
        if not self.classnames:
            raise ValueError(f"{type(self).__name__} needs classnames (the CLI links them from the data module).")
        if "{}" not in frozen_template:
            raise ValueError(f"frozen_template needs a '{{}}' for the class name, got {frozen_template!r}.")
        self.frozen_template = frozen_template
        self._classes_version = 0
        self._text_cache: tuple[Any, Tensor] | None = None
        self._frozen_text_cache: tuple[Any, Tensor] | None = None
        self._background_text_cache: tuple[Any, Tensor] | None = None
        self.background_prompts: list[str] = []

    # -- what a CLIP method implements -------------------------------------------------------------
    def class_text_features(self) -> Tensor:
        """L2-normalised text features ``(C, D)`` of the current classes."""
        raise NotImplementedError

    def image_features(self, images: Tensor) -> Tensor:
        """L2-normalised image features ``(B, D)``."""
        raise NotImplementedError

    def rebuild_class_prompts(self, classnames: Sequence[str]) -> None:
        """Rebuild whatever depends on the class names (CoOp's fixed prompt parts)."""

    # -- classes -------------------------------------------------------------------------------------
    def set_classnames(self, classnames: Sequence[str]) -> None:
        self.rebuild_class_prompts(classnames)
        self.classnames = list(classnames)
        self._classes_version += 1
        self._text_cache = self._frozen_text_cache = None

    # -- features ------------------------------------------------------------------------------------
    def encode_class_prompts(self) -> Tensor:
        """:meth:`class_text_features`, cached in eval mode until a parameter or the classes change."""
        versions = tuple(p._version for p in self.parameters() if p.requires_grad)
        key = (self._classes_version, versions, self.device)
        use_cache = not (self.training or torch.is_grad_enabled())
        if use_cache and self._text_cache is not None and self._text_cache[0] == key:
            return self._text_cache[1]
        features = self.class_text_features()
        self._text_cache = (key, features) if use_cache else None
        return features

    def frozen_text_features(self) -> Tensor:
        """L2-normalised features of ``frozen_template`` for each class from the unprompted model."""
        key = (self._classes_version, self.device)
        if self._frozen_text_cache is None or self._frozen_text_cache[0] != key:
            texts = [self.frozen_template.format(name.replace("_", " ")) for name in self.classnames]
            with torch.no_grad():
                self._frozen_text_cache = (key, self.backbone.encode_text(texts, normalize=True))
        return self._frozen_text_cache[1]

    def set_background_prompts(self, prompts: Sequence[str]) -> None:
        """Texts whose features fill ``background_text_features`` (set by DAPT's pull-push term)."""
        self.background_prompts = list(prompts)

    def background_text_features(self) -> Tensor:
        """L2-normalised features ``(K, D)`` of :attr:`background_prompts`; here from the frozen model,
        computed once per set of prompts (methods with deep text prompts pass them through those, as
        DAPT does, and recompute them)."""
        if not self.background_prompts:
            raise ValueError("background_text_features needs background prompts (set_background_prompts).")
        key = (tuple(self.background_prompts), self.device)
        if self._background_text_cache is None or self._background_text_cache[0] != key:
            with torch.no_grad():
                features = self.backbone.encode_text(self.background_prompts, normalize=True)
            self._background_text_cache = (key, features)
        return self._background_text_cache[1]

    @torch.no_grad()
    def frozen_image_features(self, images: Tensor) -> Tensor:
        """L2-normalised features of the unprompted image encoder."""
        return F.normalize(self.backbone.encode_image(images).features, dim=-1)

    # -- forward -------------------------------------------------------------------------------------
    def forward(
        self,
        images: Tensor,
        fields: frozenset[str] = frozenset(),
        teacher_images: Tensor | None = None,
        masks: Tensor | None = None,
    ) -> PromptOutput:
        """Classify ``images`` ``(B, 3, H, W)`` against the current classes.

        Args:
            images: the images the method sees.
            fields: optional output fields to fill (``frozen_*``, ``foreground_image_features``…).
            teacher_images: what the frozen model sees for ``frozen_image_features`` (default: ``images``).
            masks: ``(B, 1, H, W)`` foreground masks in ``{0, 1}`` for the foreground/background fields
                (applied to the normalised images, as DAPT does).
        """
        image = self.image_features(images)
        text = self.encode_class_prompts()
        logits = self.backbone.logit_scale * image @ text.t().to(image.dtype)
        output = PromptOutput(logits=logits, image_features=image, text_features=text)
        if "frozen_text_features" in fields:
            output.frozen_text_features = self.frozen_text_features()
        if "frozen_image_features" in fields:
            if teacher_images is None and self.image_side_frozen:
                output.frozen_image_features = image.detach()
            else:
                output.frozen_image_features = self.frozen_image_features(
                    images if teacher_images is None else teacher_images
                )
        if fields & {"foreground_image_features", "background_image_features"}:
            if masks is None:
                raise ValueError("foreground/background features need masks (data masks: true, or GradCAMMasks).")
            masks = masks.to(images.dtype)
            output.foreground_image_features = self.image_features(images * masks)
            output.background_image_features = self.image_features(images * (1.0 - masks))
        if "background_text_features" in fields:
            output.background_text_features = self.background_text_features()
        return output

    def forward_batch(self, batch: Any, fields: frozenset[str] = frozenset()) -> PromptOutput:
        return self(batch["image"], fields, batch.get("image_view2"), batch.get("mask"))
