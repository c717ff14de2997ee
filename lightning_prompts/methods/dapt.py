"""DAPT: Decouple before Align (Zhang et al., "Decouple before Align: Visual Disentanglement Enhances
Prompt Tuning", TPAMI 2025; official code: github.com/Ferenas/DAPT).

DAPT is MaPLe trained with a foreground/background decoupling of each image:

* masks split every training image into a foreground and a background view: from segmentation
  masks on disk (DAPT-S; the data module's ``masks: true`` reads ``<dataset>/mask/`` mirroring the
  image tree) or from Grad-CAM of the prompted model, refreshed every epoch (DAPT-G;
  :class:`~lightning_prompts.callbacks.GradCAMMasks`);
* the loss adds the reusable :class:`~lightning_prompts.callbacks.PullPushRegularization`: first a
  triplet "visual pull-push" (image towards its foreground, away from its background), then, after
  ``switch_epoch``, alignment of the foreground with its class prompt and of the background with
  background prompts ("a clean origami {word}."), whose text runs through MaPLe's deep prompts.

Defaults follow the official few-shot config (``vit_b16_t``): MaPLe prompts with 2 context vectors
and depth 9, SGD lr 0.0035, 10 epochs, batch 4, weights 0.8 / 0.1 / 0.5, margin 1.5, switch after
epoch 6. See :mod:`lightning_prompts.callbacks.pull_push` and
:mod:`lightning_prompts.callbacks.gradcam_masks` for where and why we deviate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from lightning.pytorch import Callback
from torch import Tensor

from lightning_prompts.backbones.vision_language import VisionLanguageBackbone
from lightning_prompts.callbacks.gradcam_masks import GradCAMMasks
from lightning_prompts.callbacks.pull_push import BACKGROUND_TEMPLATE, BACKGROUND_WORDS, PullPushRegularization
from lightning_prompts.methods.base import provides
from lightning_prompts.methods.maple import MaPLe
from lightning_prompts.outputs import PromptOutput
from lightning_prompts.registry import register_method


@register_method(
    family="clip",
    paper="Zhang et al., TPAMI 2025 — Decouple before Align: Visual Disentanglement Enhances Prompt Tuning",
    code="Ferenas/DAPT",
    example={"depth": 3, "masks": "gradcam", "gradcam_refresh": "step"},
)
class DAPT(MaPLe):
    """DAPT on a frozen CLIP (MaPLe prompts + foreground/background decoupling).

    Args:
        backbone, classnames, n_ctx, ctx_init, depth, vision_prompts: see :class:`~lightning_prompts.methods.MaPLe`.
        masks: ``"data"`` (DAPT-S: the data module must read masks, ``masks: true``) or ``"gradcam"`` (DAPT-G).
        gradcam_refresh: ``"epoch"`` (DAPT; needs deterministic training preprocessing) or ``"step"``.
        triplet_weight, margin, foreground_weight, background_weight, switch_epoch: see
            :class:`~lightning_prompts.callbacks.PullPushRegularization`.
        background_words, background_template: see :class:`~lightning_prompts.callbacks.PullPushRegularization`.
        **kwargs: see :class:`~lightning_prompts.methods.MaPLe`.
    """

    def __init__(
        self,
        backbone: VisionLanguageBackbone,
        classnames: Sequence[str] | None = None,
        n_ctx: int = 2,
        ctx_init: str | None = "a photo of a",
        depth: int = 9,
        vision_prompts: bool = True,
        masks: Literal["data", "gradcam"] = "data",
        gradcam_refresh: Literal["epoch", "step"] = "epoch",
        triplet_weight: float = 0.8,
        margin: float = 1.5,
        foreground_weight: float = 0.1,
        background_weight: float = 0.5,
        switch_epoch: int = 6,
        background_words: Sequence[str] = BACKGROUND_WORDS,
        background_template: str = BACKGROUND_TEMPLATE,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, classnames, n_ctx, ctx_init, depth, vision_prompts, **kwargs)
        if masks not in ("data", "gradcam"):
            raise ValueError(f"masks must be 'data' or 'gradcam', got {masks!r}.")
        self.masks, self.gradcam_refresh = masks, gradcam_refresh
        if "{}" not in background_template or not background_words:
            raise ValueError("DAPT needs background words and a background template with '{}'.")
        self.background_prompts = [background_template.format(word) for word in background_words]
        self.pull_push = {
            "triplet_weight": triplet_weight,
            "margin": margin,
            "foreground_weight": foreground_weight,
            "background_weight": background_weight,
            "switch_epoch": switch_epoch,
            "background_words": list(background_words),
            "background_template": background_template,
        }

    def configure_callbacks(self) -> list[Callback]:
        # part of DAPT's objective; by Lightning's rule these replace callbacks of the same types
        callbacks: list[Callback] = [PullPushRegularization(**self.pull_push)]
        if self.masks == "gradcam":
            callbacks.insert(0, GradCAMMasks(refresh=self.gradcam_refresh))
        return callbacks

    @provides("background_text_features")
    def _provide_background_text(self, batch: Any, output: PromptOutput) -> Tensor:
        """The background prompts through MaPLe's deep text prompts (they learn from the background term)."""
        return self.encode_prompted_texts(self.background_prompts)
