"""``CLIPPromptModule``: what every prompt method on a CLIP-family backbone shares.

A CLIP method scores an image against one text feature per class: ``logits = s · <f(x), w_c>``
with both L2-normalised and ``s`` the backbone's logit scale. Methods differ in how they make the
two features, so a subclass implements :meth:`CLIPPromptModule.class_text_features` and
:meth:`CLIPPromptModule.image_features`; this base adds the rest:

* in eval mode the class text features are computed once per set of classes and parameter values
  (the cache key is the version counter of every trainable parameter, which an optimizer step
  bumps), not once per batch;
* providers of the output fields a regulariser may ask for: ``frozen_text_features`` (the unprompted
  model on ``frozen_template``, computed once per class set), ``frozen_image_features`` (the unprompted
  image encoder, on the batch's second view when the data module makes one, as CoPrompt feeds its
  teacher) and the foreground/background image features of masked images (the batch's ``mask``);
* the module protocol CLIP loss terms use: :meth:`~CLIPPromptModule.encode_texts` (the frozen text
  encoder), :attr:`~CLIPPromptModule.logit_scale` and :meth:`~CLIPPromptModule.gradcam_target`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_prompts.backbones.vision_language import GradCAMTarget, VisionLanguageBackbone
from lightning_prompts.batch import IMAGE, IMAGE_FEATURES, IMAGE_VIEW2, MASK
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods.base.fields import provides
from lightning_prompts.methods.base.module import PromptModule
from lightning_prompts.outputs import PromptOutput
from lightning_prompts.utils.similarity import similarity_logits


@torch.no_grad()
def template_ensemble(backbone: VisionLanguageBackbone, classnames: Sequence[str], templates: Sequence[str]) -> Tensor:
    """``(C, D)``: the normalised mean over ``templates`` of the normalised features of each filled-in
    template (CLIP's prompt ensembling; one template gives its features), in float32 whatever the backbone's
    dtype (ConES trains these as its parameters). ``_`` in names becomes a space."""
    per_template = [
        backbone.encode_text([template.format(name.replace("_", " ")) for name in classnames], normalize=True)
        for template in templates
    ]
    return F.normalize(torch.stack(per_template).float().mean(dim=0), dim=-1)


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

    produced_fields: ClassVar[frozenset[str]] = frozenset({"logits", "image_features", "text_features"})
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

    def check_ready(self, stage: str, callbacks: Any, datamodule: Any | None) -> None:
        super().check_ready(stage, callbacks, datamodule)
        size = getattr(datamodule, "image_size", None)
        if getattr(self.backbone, "requires_image_size", False) and isinstance(size, int):
            if size != self.backbone.image_size:
                raise ConfigurationError(
                    f"the data module makes {size}-pixel images but {self.backbone.name} takes "
                    f"{self.backbone.image_size}-pixel ones; set data.init_args.image_size: {self.backbone.image_size}."
                )

    # -- what a CLIP method implements -------------------------------------------------------------
    def class_text_features(self) -> Tensor:
        """L2-normalised text features ``(C, D)`` of the current classes."""
        raise NotImplementedError

    def image_features(self, images: Tensor) -> Tensor:
        """L2-normalised image features ``(B, D)``."""
        raise NotImplementedError

    def rebuild_class_prompts(self, classnames: Sequence[str]) -> None:
        """Rebuild whatever depends on the class names (CoOp's fixed prompt parts)."""

    # -- the module protocol of CLIP loss terms ------------------------------------------------------
    @property
    def logit_scale(self) -> Tensor:
        """CLIP's temperature ``s`` (``logits = s · cos``)."""
        return self.backbone.logit_scale

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        """L2-normalised features of plain strings by the frozen, unprompted text encoder."""
        return self.backbone.encode_text(list(texts), normalize=True)

    def gradcam_target(self) -> GradCAMTarget:
        """The activations Grad-CAM weighs in the image encoder."""
        return self.backbone.gradcam_target()

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
            self._frozen_text_cache = (key, self.encode_texts(texts))
        return self._frozen_text_cache[1]

    @torch.no_grad()
    def frozen_image_features(self, images: Tensor) -> Tensor:
        """L2-normalised features of the unprompted image encoder."""
        return F.normalize(self.backbone.encode_image(images, patch_tokens=False).features, dim=-1)

    # -- forward -------------------------------------------------------------------------------------
    def forward(self, images: Tensor, fields: frozenset[str] = frozenset()) -> PromptOutput:
        """Classify ``images`` ``(B, 3, H, W)`` against the current classes (optional ``fields`` are filled
        by :meth:`~lightning_prompts.methods.PromptModule.compute_output`, which calls this)."""
        return self.classify_features(self.image_features(images))

    def classify_features(self, image: Tensor) -> PromptOutput:
        """The output for L2-normalised image features ``(B, D)``."""
        text = self.encode_class_prompts()
        logits = similarity_logits(self.logit_scale, image, text)
        return PromptOutput(logits=logits, image_features=image, text_features=text)

    def forward_batch(self, batch: Any, fields: frozenset[str] = frozenset()) -> PromptOutput:
        cached = batch.get(IMAGE_FEATURES) if self.image_side_frozen else None
        if cached is not None:  # the frozen image encoder's features, precomputed (FrozenFeatureCache)
            return self.classify_features(cached.to(self.device))
        return self(batch[IMAGE], fields)

    # -- providers of the optional output fields -----------------------------------------------------
    @provides("frozen_text_features")
    def _provide_frozen_text(self, batch: Any, output: PromptOutput) -> Tensor:
        return self.frozen_text_features()

    @provides("frozen_image_features")
    def _provide_frozen_image(self, batch: Any, output: PromptOutput) -> Tensor:
        """The frozen image encoder on the batch's second view (the images themselves without one)."""
        second = batch.get(IMAGE_VIEW2)
        if second is None and self.image_side_frozen:
            return output.image_features.detach()  # the method's image features are the frozen model's
        return self.frozen_image_features(batch[IMAGE] if second is None else second)

    @provides("foreground_image_features")
    def _provide_foreground(self, batch: Any, output: PromptOutput) -> Tensor:
        """Image features of image × mask, computed like ``image_features`` (DAPT masks normalised images)."""
        images, masks = self._masked(batch)
        return self.image_features(images * masks)

    @provides("background_image_features")
    def _provide_background(self, batch: Any, output: PromptOutput) -> Tensor:
        """Image features of image × (1 − mask)."""
        images, masks = self._masked(batch)
        return self.image_features(images * (1.0 - masks))

    def _masked(self, batch: Any) -> tuple[Tensor, Tensor]:
        masks = batch.get(MASK)
        if masks is None:
            raise ConfigurationError(
                f"{type(self).__name__}: foreground/background features need masks in the batch "
                f"(data masks: true, or the GradCAMMasks callback)."
            )
        images = batch[IMAGE]
        return images, masks.to(images.dtype)
