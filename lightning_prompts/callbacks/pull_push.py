"""``PullPushRegularization``: DAPT's foreground/background decoupling as a loss term.

Zhang et al., "Decouple before Align: Visual Disentanglement Enhances Prompt Tuning", TPAMI 2025;
official code: github.com/Ferenas/DAPT (``trainers/maple.py``). Each training image is split by
its foreground mask into a foreground view (image × mask) and a background view (image × (1 − mask),
the masking done on the normalised tensor); the method encodes both like the full image.

* **early stage** (epochs ``0..switch_epoch``, 0-based): the visual pull-push, a triplet loss that
  pulls the image feature towards its foreground's and pushes it from its background's,
  ``triplet_weight · TripletMargin(f, sg(f_fg), sg(f_bg), margin)`` (Euclidean, mean);
* **late stage** (later epochs): foreground alignment ``foreground_weight · CE(s·sg(f_fg)·Tᵀ, y)``
  (only the text side learns) plus background alignment ``background_weight · CE(s·f_bg·Bᵀ, ŷ)``
  against background prompts ``B`` ("a clean origami {word}." for a background vocabulary), with the
  pseudo-label ``ŷ`` the most similar background word.

Defaults are the official ones: weights 0.8 / 0.1 / 0.5, margin 1.5, switch after epoch 6 of 10,
DAPT's 32 background words and template. Masks arrive in the batch (``batch["mask"]``): from the data
module (``masks: true``, DAPT-S: a folder mirroring the images) or from a callback that puts them there
(:class:`~lightning_prompts.callbacks.GradCAMMasks`, DAPT-G). The background prompts' text features
come from the method when it provides ``background_text_features`` (DAPT runs them through its deep
text prompts); otherwise the term encodes its own background prompts with the frozen text encoder
(``module.encode_texts``), once.

Where we deviate: the official code slices the last 25 of the 32 background prompts for the
background term and leaves the other 7 as extra columns of the class logits (so it classifies among
C + 7 classes in training and at test); we use all background prompts for the background term and
keep the class logits to the C classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch.nn.functional as F
from torch import Tensor

from lightning_prompts.batch import MASK
from lightning_prompts.callbacks.loss_term import LossTerm
from lightning_prompts.data.protocols import BatchKeys, provided
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.registry import register_callback

if TYPE_CHECKING:
    from lightning_prompts.methods.base import PromptModule
    from lightning_prompts.outputs import PromptOutput

#: DAPT's background vocabulary: 25 scene words and 7 table-scene words (for food images).
BACKGROUND_WORDS = (
    "ground",
    "land",
    "grass",
    "tree",
    "building",
    "wall",
    "sky",
    "lake",
    "water",
    "river",
    "sea",
    "railway",
    "railroad",
    "keyboard",
    "helmet",
    "cloud",
    "house",
    "mountain",
    "ocean",
    "road",
    "rock",
    "street",
    "valley",
    "bridge",
    "sign",
    "table",
    "forks",
    "tablecloth",
    "hands",
    "spoon",
    "glasses",
    "dishes",
)
BACKGROUND_TEMPLATE = "a clean origami {}."


@register_callback(
    family="clip",
    paper="Zhang et al., TPAMI 2025 — Decouple before Align: Visual Disentanglement Enhances Prompt Tuning",
    code="Ferenas/DAPT",
    docs="callbacks/pull_push.md",
)
class PullPushRegularization(LossTerm):
    """DAPT's decoupling term (see the module docstring).

    Args:
        triplet_weight, margin: the early-stage pull-push (0.8, 1.5).
        foreground_weight, background_weight: the late-stage alignments (0.1, 0.5).
        switch_epoch: last epoch (0-based) of the early stage (DAPT: 6 of 10 epochs).
        background_words, background_template: the background prompts.
        name: logged as ``train/<name>``; the stage is logged as ``train/<name>_stage`` (1 or 2).
    """

    required_fields = (
        "image_features",
        "text_features",
        "foreground_image_features",
        "background_image_features",
    )
    optional_fields = ("background_text_features",)

    def __init__(
        self,
        triplet_weight: float = 0.8,
        margin: float = 1.5,
        foreground_weight: float = 0.1,
        background_weight: float = 0.5,
        switch_epoch: int = 6,
        background_words: Sequence[str] = BACKGROUND_WORDS,
        background_template: str = BACKGROUND_TEMPLATE,
        name: str = "pull_push",
    ) -> None:
        super().__init__(1.0, name)
        if "{}" not in background_template:
            raise ValueError(f"background_template needs a '{{}}', got {background_template!r}.")
        if not background_words:
            raise ValueError("background_words must not be empty.")
        self.triplet_weight, self.margin = triplet_weight, margin
        self.foreground_weight, self.background_weight = foreground_weight, background_weight
        self.switch_epoch = switch_epoch
        self.background_prompts = [background_template.format(word) for word in background_words]
        self._background: tuple[Any, Tensor] | None = None

    def check_ready(self, module: PromptModule, datamodule: Any | None, callbacks: Sequence[Any] = ()) -> None:
        data = provided(datamodule, BatchKeys)
        from_data = data is not None and MASK in data.batch_keys
        from_callback = any(MASK in getattr(callback, "provides_batch_keys", ()) for callback in callbacks)
        if not (from_data or from_callback):
            raise ConfigurationError(
                f"PullPushRegularization on {type(module).__name__} needs foreground masks in the batch: read them "
                f"from disk (data: masks: true, DAPT-S) or add a callback that makes them (GradCAMMasks, DAPT-G)."
            )
        if "background_text_features" not in module.output_fields and not callable(
            getattr(module, "encode_texts", None)
        ):
            raise ConfigurationError(
                f"PullPushRegularization needs background text features: {type(module).__name__} neither provides "
                f"background_text_features nor encodes texts (a CLIP-family method)."
            )

    def background_text_features(self, module: PromptModule, output: PromptOutput) -> Tensor:
        """The method's background text features, or the frozen encoder's of this term's prompts (cached)."""
        if output.background_text_features is not None:
            return output.background_text_features
        key = (tuple(self.background_prompts), module.device)
        if self._background is None or self._background[0] != key:
            self._background = (key, module.encode_texts(self.background_prompts))
        return self._background[1]

    def early_stage(self, epoch: int) -> bool:
        return epoch <= self.switch_epoch

    def compute(self, module: PromptModule, batch: Any, output: PromptOutput) -> Tensor:
        if self.early_stage(module.current_epoch):
            module.log(f"train/{self.name}_stage", 1.0, batch_size=output.logits.shape[0])
            return self.triplet_weight * F.triplet_margin_loss(
                output.image_features,
                output.foreground_image_features.detach(),
                output.background_image_features.detach(),
                margin=self.margin,
            )
        module.log(f"train/{self.name}_stage", 2.0, batch_size=output.logits.shape[0])
        scale = module.logit_scale
        targets = module.batch_targets(batch)
        foreground_logits = scale * output.foreground_image_features.detach() @ output.text_features.t()
        background = output.background_image_features @ self.background_text_features(module, output).t()
        pseudo_labels = background.argmax(dim=1).detach()
        return self.foreground_weight * F.cross_entropy(foreground_logits.float(), targets) + (
            self.background_weight * F.cross_entropy((scale * background).float(), pseudo_labels)
        )
