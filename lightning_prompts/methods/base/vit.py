"""``ViTPromptModule``: what every prompt method on a frozen timm ViT shares (VPT, LAE, …).

A ViT method plugs its prompt modules into the backbone's blocks through one block hook
(:meth:`ViTPromptModule.block_hooks`: prompt tokens, PET modules, prefixes) and classifies the pooled
feature timm's head would read (:meth:`ViTPromptModule.classify`). The base runs the prompted ViT,
fills ``pooled_features``/``image_features``/``patch_tokens``, and provides ``frozen_image_features``
(the unprompted ViT, on the batch's second view when there is one) for regularisers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from lightning_prompts.backbones.hooks import BlockHook
from lightning_prompts.backbones.timm_vit import TimmViT, ViTEncoding
from lightning_prompts.batch import IMAGE, IMAGE_VIEW2
from lightning_prompts.methods.base.fields import provides
from lightning_prompts.methods.base.module import PromptModule
from lightning_prompts.outputs import PromptOutput


class ViTPromptModule(PromptModule):
    """Base of ViT prompt methods (see the module docstring).

    Args:
        backbone: the frozen :class:`~lightning_prompts.backbones.TimmViT`.
        classnames: the classes (their number sizes the heads).
        **kwargs: see :class:`~lightning_prompts.methods.PromptModule`.
    """

    produced_fields: ClassVar[frozenset[str]] = frozenset(
        {"logits", "pooled_features", "image_features", "patch_tokens"}
    )

    def __init__(self, backbone: TimmViT, classnames: Sequence[str] | None = None, **kwargs: Any) -> None:
        super().__init__(backbone, classnames, **kwargs)
        if not self.classnames:
            raise ValueError(f"{type(self).__name__} needs classnames to size its head (the CLI links them).")

    # -- what a ViT method implements ----------------------------------------------------------------
    def block_hooks(self) -> BlockHook | None:
        """The prompt modules of this forward pass as one block hook (``None``: the plain ViT)."""
        return None

    def classify(self, pooled: Tensor) -> Tensor:
        """Logits ``(B, C)`` from the pooled feature ``(B, W)``."""
        raise NotImplementedError

    # -- forward -------------------------------------------------------------------------------------
    def encode(self, images: Tensor) -> ViTEncoding:
        """The prompted ViT on ``images`` ``(B, 3, H, W)``."""
        return self.backbone.forward_features(images, hooks=self.block_hooks())

    def forward(self, images: Tensor, fields: frozenset[str] = frozenset()) -> PromptOutput:
        """Classify ``images``; ``image_features`` and ``pooled_features`` are the feature the head reads."""
        encoded = self.encode(images)
        return PromptOutput(
            logits=self.classify(encoded.pooled),
            pooled_features=encoded.pooled,
            image_features=encoded.pooled,
            patch_tokens=encoded.patch_tokens,
        )

    def forward_batch(self, batch: Any, fields: frozenset[str] = frozenset()) -> PromptOutput:
        return self(batch[IMAGE], fields)

    @provides("frozen_image_features")
    def _provide_frozen_image(self, batch: Any, output: PromptOutput) -> Tensor:
        """The unprompted ViT's pooled feature of the second view (of the images without one)."""
        second = batch.get(IMAGE_VIEW2)
        with torch.no_grad():
            return self.backbone.forward_features(batch[IMAGE] if second is None else second).pooled
