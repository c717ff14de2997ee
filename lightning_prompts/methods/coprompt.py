"""CoPrompt: Consistency-guided Prompt Learning (Roy and Etemad, ICLR 2024; official code:
github.com/ShuvenduRoy/CoPrompt).

CoPrompt is MaPLe plus three things:

* two residual adapters on the final features, trained with the prompts:
  ``f ← 0.1·A_I(f) + 0.9·f`` for images and ``t ← 0.2·A_T(t) + 0.8·t`` for text
  (:class:`~lightning_prompts.prompts.ResidualAdapter`), used at training and test time;
* two augmented views of each training image (the data module's ``views: 2`` with RandAugment):
  the prompted model sees the first, the frozen model the second;
* the consistency term, ``λ·[(1 − cos(t, t̂)) + (1 − cos(f, f̂))]`` towards the frozen model's text
  features of LLM descriptions (one random description per step) and its image features of the
  second view. It is the reusable :class:`~lightning_prompts.callbacks.ConsistencyRegularization`
  callback, which this module attaches itself (``configure_callbacks``); any other method can use it
  too.

Faithful to the official code: adapter architecture and mixing ratios, the loss, the teacher's
text features computed once from the description file and indexed per step, MaPLe's prompts.
``tests/methods/test_coprompt.py`` re-computes the adapter mixing and the loss. Deviations: fp32 master
weights with mixed precision left to the Trainer; the hand-written templates, which the official
code computes but never uses, are the fallback when no description file is given; description
lists of unequal length are cycled to the longest (the official code needs equal lengths).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch.nn.functional as F
from lightning.pytorch import Callback
from torch import Tensor

from lightning_prompts.backbones.vision_language import VisionLanguageBackbone
from lightning_prompts.callbacks.consistency import ConsistencyRegularization
from lightning_prompts.methods.maple import MaPLe
from lightning_prompts.prompts.adapter import ResidualAdapter
from lightning_prompts.registry import register_method


@register_method(
    family="clip",
    paper="Roy and Etemad, ICLR 2024 — Consistency-guided Prompt Learning for Vision-Language Models",
    code="ShuvenduRoy/CoPrompt",
    example={"depth": 3},
)
class CoPrompt(MaPLe):
    """CoPrompt on a frozen CLIP.

    Args:
        backbone: a CLIP-family backbone with a ViT image tower (or ``vision_prompts=False``).
        classnames: the training classes (linked from the data module by the CLI).
        n_ctx, ctx_init, depth, vision_prompts: MaPLe's prompts (CoPrompt: n_ctx 2 or 4, depth 9 or 12
            per dataset).
        image_adapter_ratio, text_adapter_ratio: the adapters' share of the features (0.1, 0.2).
        consistency_weight: λ of the consistency term (per dataset, 0.1 to 8; config default 1).
        distance: ``"cosine"`` or ``"mse"``.
        descriptions: JSON ``{class name: [description, ...]}`` for the teacher text (CoPrompt's
            ``gpt_file/<dataset>_prompt.json``); ``None`` uses ``templates``.
        templates: hand-written teacher templates used without ``descriptions``.
        **kwargs: see :class:`~lightning_prompts.methods.MaPLe`. Default optimizer: SGD, lr 0.0035,
            momentum 0.9, weight decay 5e-4.
    """

    def __init__(
        self,
        backbone: VisionLanguageBackbone,
        classnames: Sequence[str] | None = None,
        n_ctx: int = 2,
        ctx_init: str | None = "a photo of a",
        depth: int = 9,
        vision_prompts: bool = True,
        image_adapter_ratio: float = 0.1,
        text_adapter_ratio: float = 0.2,
        consistency_weight: float = 1.0,
        distance: Literal["cosine", "mse"] = "cosine",
        descriptions: str | None = None,
        templates: Sequence[str] = ("a photo of a {}.",),
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, classnames, n_ctx, ctx_init, depth, vision_prompts, **kwargs)
        width = self.backbone.embed_dim
        self.image_adapter = ResidualAdapter(width, image_adapter_ratio)
        self.text_adapter = ResidualAdapter(width, text_adapter_ratio)
        self.consistency = {
            "weight": consistency_weight,
            "distance": distance,
            "descriptions": descriptions,
            "templates": list(templates),
        }

    def configure_callbacks(self) -> list[Callback]:
        # part of CoPrompt's objective; by Lightning's rule it replaces a ConsistencyRegularization
        # given to the Trainer, so its knobs are CoPrompt's arguments
        return [ConsistencyRegularization(**self.consistency)]

    def class_text_features(self) -> Tensor:
        return F.normalize(self.text_adapter(self.encode_text_prompts()), dim=-1)

    def image_features(self, images: Tensor) -> Tensor:
        return F.normalize(self.image_adapter(self.encode_prompted_images(images)), dim=-1)
