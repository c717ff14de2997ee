"""``ConsistencyRegularization``: keep prompted features close to the frozen model's (CoPrompt).

Roy and Etemad, "Consistency-guided Prompt Learning for Vision-Language Models", ICLR 2024;
official code: github.com/ShuvenduRoy/CoPrompt. A prompt tuned on a few base classes drifts away
from what the frozen model knows, which costs accuracy on unseen classes. The term pulls the
prompted model's features back towards the frozen model's:

* **text**: each class's prompted text feature towards the frozen model's feature of a description
  of that class: one description index per step, drawn at random and shared by all classes, from a
  JSON file ``{class name: [description, ...]}`` (CoPrompt's LLM descriptions) or, without one,
  from hand-written templates;
* **image**: each image's prompted feature towards the frozen image encoder's feature of a *second*
  augmented view (``image_view2``, made by the data module with ``views: 2``; the same view
  otherwise).

``distance="cosine"``: ``(1 − mean_c cos(t_c, t̂_c)) + (1 − mean_b cos(f_b, f̂_b))``; ``"mse"``:
the mean squared error of the L2-normalised features. The term is ``weight ×`` the sum.

The frozen text features are computed once per set of classes, at the first step, by the method's
frozen text encoder (``module.encode_texts``, so the text term needs a CLIP-family method); each step
only indexes them. The per-step description draw is seeded from the run's seed
(``seed_everything``) unless ``seed`` is given, so runs with different seeds draw different sequences.
The frozen image features come from the method's
``frozen_image_features`` output field. With ``text=False`` the term needs only image features, so
it also regularises visual prompts (VPT).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_prompts.callbacks.loss_term import LossTerm
from lightning_prompts.callbacks.seeded_draws import SeededDraws
from lightning_prompts.errors import ConfigurationError, DatasetError
from lightning_prompts.registry import register_callback
from lightning_prompts.utils.json_files import read_json
from lightning_prompts.utils.resources import resolve_path

if TYPE_CHECKING:
    from lightning_prompts.methods.base import PromptModule
    from lightning_prompts.outputs import PromptOutput

Distance = Literal["cosine", "mse"]


def feature_distance(student: Tensor, teacher: Tensor, distance: Distance) -> Tensor:
    """CoPrompt's distance between rows of L2-normalised features."""
    student, teacher = F.normalize(student.float(), dim=-1), F.normalize(teacher.float(), dim=-1)
    if distance == "cosine":
        return 1.0 - F.cosine_similarity(student, teacher, dim=-1, eps=1e-7).mean()
    return F.mse_loss(student, teacher)


def read_descriptions(path: str | Path, classnames: Sequence[str]) -> list[list[str]]:
    """Per-class description lists from a CoPrompt-style UTF-8 JSON file ``{class name: [description, ...]}``, in
    ``classnames`` order; lists of different lengths are cycled to the longest (CoPrompt needs equal counts). A
    class given one description as a plain string (``{"cat": "a small furry pet"}``) gets that one description:
    friendlier than refusing it, and never split into characters."""
    file = resolve_path(path)
    content = read_json(file, "Description file")
    if not isinstance(content, dict):
        raise DatasetError(f"Description file {file} must be an object {{class name: [description, ...]}}.")
    lists = []
    for name in classnames:
        key = name.replace("_", " ")
        entries = content.get(key, content.get(name))
        if not entries:
            raise DatasetError(f"Description file {file} has no descriptions for class {key!r}.")
        if isinstance(entries, str):
            entries = [entries]
        if not isinstance(entries, list) or not all(isinstance(entry, str) for entry in entries):
            shown = json.dumps(entries)
            raise DatasetError(
                f"Description file {file}: class {key!r} must list description strings, got "
                f"{shown if len(shown) <= 80 else shown[:80] + '…'}."
            )
        lists.append(entries)
    longest = max(len(entries) for entries in lists)
    return [[entries[i % len(entries)] for i in range(longest)] for entries in lists]


@register_callback(
    family="clip",
    paper="Roy and Etemad, ICLR 2024 — Consistency-guided Prompt Learning for Vision-Language Models",
    code="ShuvenduRoy/CoPrompt",
    docs="callbacks/consistency.md",
)
class ConsistencyRegularization(SeededDraws, LossTerm):
    """CoPrompt's consistency term, usable on any method whose outputs fit (see the module docstring).

    Args:
        weight: λ (CoPrompt tunes it per dataset, 0.1 to 8).
        distance: ``"cosine"`` (CoPrompt's default) or ``"mse"``.
        text: regularise the class text features (needs ``text_features`` and a CLIP-family backbone).
        image: regularise the image features (needs ``image_features`` and ``frozen_image_features``).
        descriptions: JSON file ``{class name: [description, ...]}`` for the frozen text features
            (``pkg://`` paths work); ``None`` uses ``templates``.
        templates: hand-written templates used without ``descriptions``.
        seed: seed of the per-step description draw (the same on every DDP rank); default: the run's seed.
        name: logged as ``train/<name>``.
    """

    #: with the defaults (text and image); an instance keeps only what its ``text``/``image`` switches read
    required_fields = ("text_features", "image_features", "frozen_image_features")

    def __init__(
        self,
        weight: float = 1.0,
        distance: Distance = "cosine",
        text: bool = True,
        image: bool = True,
        descriptions: str | None = None,
        templates: Sequence[str] = ("a photo of a {}.",),
        seed: int | None = None,
        name: str = "consistency",
    ) -> None:
        super().__init__(weight, name)
        if distance not in ("cosine", "mse"):
            raise ValueError(f"distance must be 'cosine' or 'mse', got {distance!r}.")
        if not (text or image):
            raise ValueError("ConsistencyRegularization needs text=True, image=True or both.")
        if any("{}" not in template for template in templates):
            raise ValueError(f"every template needs a '{{}}' for the class name, got {list(templates)}.")
        self.distance, self.text, self.image = distance, text, image
        self.descriptions, self.templates = descriptions, list(templates)
        self.required_fields = (("text_features",) if text else ()) + (
            ("image_features", "frozen_image_features") if image else ()
        )
        self.seed = seed
        self.init_draws(seed)
        self._teacher: tuple[Any, Tensor] | None = None

    def check_ready(self, module: PromptModule, datamodule: Any | None, callbacks: Sequence[Any] = ()) -> None:
        if not self.text:
            return
        if not callable(getattr(module, "encode_texts", None)):
            raise ConfigurationError(
                f"ConsistencyRegularization's text term needs a CLIP-family method (encode_texts); "
                f"{type(module).__name__} has none. Set text: false to regularise image features only."
            )
        if self.descriptions is not None:  # a missing file or class fails now, not at the first step
            read_descriptions(self.descriptions, module.classnames)

    def teacher_text_features(self, module: PromptModule) -> Tensor:
        """``(n_sources, C, D)`` frozen features of every description (or template) of the current
        classes; computed once per class set and device."""
        key = (tuple(module.classnames), module.device)
        if self._teacher is None or self._teacher[0] != key:
            self.check_ready(module, None)
            names = list(module.classnames)
            if self.descriptions is not None:
                per_class = read_descriptions(self.descriptions, names)
            else:
                per_class = [[t.format(n.replace("_", " ")) for t in self.templates] for n in names]
            with torch.no_grad():
                rows = [module.encode_texts(texts) for texts in per_class]  # (n_sources, D) each
            self._teacher = (key, torch.stack(rows, dim=1))
        return self._teacher[1]

    def compute(self, module: PromptModule, batch: Any, output: PromptOutput) -> Tensor:
        loss = output.logits.new_zeros(())
        if self.text:
            teacher = self.teacher_text_features(module)
            index = self.rng.randrange(teacher.shape[0])  # one description for all classes, as CoPrompt
            loss = loss + feature_distance(output.text_features, teacher[index], self.distance)
        if self.image:
            loss = loss + feature_distance(output.image_features, output.frozen_image_features, self.distance)
        return loss
