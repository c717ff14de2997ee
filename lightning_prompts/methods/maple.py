"""MaPLe: Multi-modal Prompt Learning (Khattak, Rasheed, Maaz, Khan, Khan — CVPR 2023; official
code: github.com/muzairkhattak/multimodal-prompt-learning).

Deep prompts on both encoders, coupled: the text encoder gets CoOp-style context at its input and a
fresh set of context vectors before each of its first ``depth`` layers; the image encoder gets, at
the same levels, linear projections of those text prompts (text → vision coupling), appended after
the patch tokens. Only the prompts and the projections train, with cross-entropy
(:mod:`lightning_prompts.prompts.coupled` has the details).

Faithful to the official code (``tests/methods/test_maple.py`` re-computes its forward pass on a tiny
CLIP): slot replacement at positions ``1..n_ctx`` of the text and at the last ``n_ctx`` tokens of
the image sequence for layers ``1..depth-1``; visual prompts appended before ``ln_pre`` and
without positional embedding; projections initialised as copies of one Linear; the
``n_ctx``-smaller-than-phrase quirk. Deviations: fp32 master weights with mixed precision left to
the Trainer (the official code casts the prompts and projections to fp16); the text encoder stops
at the last end-of-text token (exact).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from lightning_prompts.backbones.vision_language import VisionLanguageBackbone
from lightning_prompts.methods.base import CLIPPromptModule
from lightning_prompts.prompts.coupled import CoupledPrompts
from lightning_prompts.registry import register_method


@register_method(
    family="clip",
    paper="Khattak, Rasheed, Maaz, Khan, Khan, CVPR 2023 — MaPLe: Multi-modal Prompt Learning",
    code="muzairkhattak/multimodal-prompt-learning",
    example={"depth": 3},
)
class MaPLe(CLIPPromptModule):
    """MaPLe on a frozen CLIP.

    Args:
        backbone: a CLIP-family backbone with a ViT image tower (or ``vision_prompts=False``).
        classnames: the training classes (linked from the data module by the CLI).
        n_ctx: context vectors per level (2).
        ctx_init: phrase initialising the first-level context ("a photo of a").
        depth: prompted layers, the input layer included (9; 1 makes it shallow).
        vision_prompts: prompt the image encoder too (MaPLe); ``False`` keeps only the deep text prompts,
            which is what runs on a CNN image tower.
        **kwargs: ``frozen_template`` (:class:`~lightning_prompts.methods.CLIPPromptModule`) and the
            optimisation arguments of :class:`~lightning_prompts.methods.PromptModule`. Default
            optimizer: SGD, lr 0.0035, momentum 0.9, weight decay 5e-4 (MaPLe's base-to-novel config).
    """

    default_optimizer = {
        "class_path": "torch.optim.SGD",
        "init_args": {"lr": 0.0035, "momentum": 0.9, "weight_decay": 5e-4},
    }

    def __init__(
        self,
        backbone: VisionLanguageBackbone,
        classnames: Sequence[str] | None = None,
        n_ctx: int = 2,
        ctx_init: str | None = "a photo of a",
        depth: int = 9,
        vision_prompts: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, classnames, **kwargs)
        self.prompt = CoupledPrompts(self.backbone, self.classnames, n_ctx, ctx_init, depth, vision_prompts)

    def rebuild_class_prompts(self, classnames: Sequence[str]) -> None:
        self.prompt.set_classnames(classnames, self.backbone)

    def encode_text_prompts(self) -> Tensor:
        """Projected (not normalised) text features of the deep-prompted class prompts."""
        prompts, eot = self.prompt.text()
        return self.backbone.encode_text_embeddings(prompts, eot, hooks=self.prompt.text_hooks())

    def encode_prompted_images(self, images: Tensor) -> Tensor:
        """Projected (not normalised) features of the images with the coupled visual prompts."""
        return self.backbone.encode_image(images, hooks=self.prompt.vision_hooks(), patch_tokens=False).features

    def encode_prompted_texts(self, texts: Sequence[str]) -> Tensor:
        """L2-normalised features of plain strings through the deep text prompts (their first layer left
        as written), as DAPT encodes its background prompts."""
        ids = self.backbone.tokenize(list(texts), what="text")
        features = self.backbone.encode_text_embeddings(
            self.backbone.embed_tokens(ids), self.backbone.eot_positions(ids), hooks=self.prompt.text_hooks()
        )
        return F.normalize(features, dim=-1)

    def class_text_features(self) -> Tensor:
        return F.normalize(self.encode_text_prompts(), dim=-1)

    def image_features(self, images: Tensor) -> Tensor:
        return F.normalize(self.encode_prompted_images(images), dim=-1)
