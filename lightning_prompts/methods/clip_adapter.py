"""CLIP-Adapter (Gao, Geng, Zhang, Ma, Fang, Zhang, Li, Qiao — "CLIP-Adapter: Better Vision-Language
Models with Feature Adapters", IJCV 2024; official code: github.com/gaopengcuhk/CLIP-Adapter).

Instead of learning words around the class name, CLIP-Adapter learns a small bottleneck MLP on the
frozen image feature and blends it with the feature it came from:

    f' = r · A(f) + (1 − r) · f,      A = ReLU ∘ W₂ ∘ ReLU ∘ W₁      (no biases; W₁: d → d/4)

and classifies ``s · <f'/|f'|, w_c>`` against the frozen text features ``w_c`` of one hand-written
template per dataset (``"a photo of a {}, a type of pet."`` for Oxford Pets…). Only ``A`` trains,
with cross-entropy; the residual ratio ``r`` is 0.2 in the official code.

Faithful to the official code (``tests/methods/test_clip_adapter.py`` re-computes its forward pass):
the adapter's layers, reduction 4 and ReLUs, the blend, the frozen text side. Deviations: the width
comes from the backbone (the official code hard-codes RN50's 1024); the released repository has no
training configuration, so the recipes use CoOp's optimiser and schedule and say so; the class text
features are computed once per class set (the official code re-encodes the templates every step).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from lightning_prompts.backbones.vision_language import VisionLanguageBackbone
from lightning_prompts.methods.base import CLIPPromptModule
from lightning_prompts.prompts.adapter import ResidualAdapter
from lightning_prompts.registry import register_method


@register_method(
    family="clip",
    title="CLIP-Adapter",
    paper="Gao et al., IJCV 2024 — CLIP-Adapter: Better Vision-Language Models with Feature Adapters",
    code="gaopengcuhk/CLIP-Adapter",
)
class CLIPAdapter(CLIPPromptModule):
    """A residual feature adapter on a frozen CLIP's image features.

    Args:
        backbone: a CLIP-family backbone (:class:`~lightning_prompts.backbones.OpenCLIP`,
            :class:`~lightning_prompts.backbones.StandInCLIP`).
        classnames: the training classes (linked from the data module by the CLI).
        template: the dataset's hand-written prompt with ``{}`` for the class name.
        ratio: the adapter's share ``r`` of the blended feature (0.2).
        reduction: the bottleneck factor (4).
        **kwargs: the optimisation arguments of :class:`~lightning_prompts.methods.PromptModule`
            (default optimizer: SGD, lr 0.002, momentum 0.9, weight decay 5e-4).
    """

    def __init__(
        self,
        backbone: VisionLanguageBackbone,
        classnames: Sequence[str] | None = None,
        template: str = "a photo of a {}.",
        ratio: float = 0.2,
        reduction: int = 4,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("frozen_template", None)  # the template *is* the frozen prompt here
        super().__init__(backbone, classnames, frozen_template=template, **kwargs)
        # the frozen template is ``template``: not a hyperparameter of its own (a checkpoint would otherwise
        # disagree with every config that omits it)
        self.hparams.pop("frozen_template", None)
        self.adapter = ResidualAdapter(self.backbone.embed_dim, ratio, reduction)

    def class_text_features(self) -> Tensor:
        """The frozen text features of the template, computed once per set of classes."""
        return self.frozen_text_features()

    def image_features(self, images: Tensor) -> Tensor:
        return F.normalize(self.adapter(self.backbone.encode_image(images, patch_tokens=False).features), dim=-1)
