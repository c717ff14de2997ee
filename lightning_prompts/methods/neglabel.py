"""NegLabel (Jiang et al., "Negative Label Guided OOD Detection with Pretrained Vision-Language
Models", ICLR 2024): zero-shot OOD detection with negative labels, the zero-shot half of LAPT.

Besides the ID classes, CLIP scores thousands of *negative labels*: words mined from a word list
because their text features are far from every ID class name
(:func:`~lightning_prompts.prompts.negative_labels.mine_negative_labels`). An ID image puts its
probability mass on its ID class; an OOD image spreads it over the negative labels that resemble it.
The ID score is the ID classes' share of ``softmax(s · cos)`` over ID and negative labels, averaged over
groups of randomly permuted negatives (``OODEvaluator(score="id_mass", negative_groups=…)``, the
default evaluator of this method). Nothing is trained.

As in LAPT's release (verified against YBZh/OpenOOD-VLM): the closeness of a candidate is its
``int(0.95 · n)``-th smallest cosine to the ``n`` ID names and the farthest candidates are kept; 10,000
negatives in 100 groups at test. NegLabel's release (XueJiang16/NegLabel) mines WordNet's nouns and
adjectives as two lists: with ``adjective_list`` the adjectives are ranked on their own and scored through
``adjective_template`` ("This is a {} photo"), the ID names and nouns through ``templates`` (NegLabel's config:
"the nice {}", which ``recipes/neglabel`` uses), as
:func:`~lightning_prompts.prompts.negative_labels.mine_nouns_and_adjectives` describes (it also says where
the count per part of speech and the percentile read differ from NegLabel's by rounding). With one word list
every word is scored through ``templates``. The negatives are mined once, when the module is built
(``negative_labels`` and ``negative_adjectives`` give them directly instead).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_prompts.backbones.vision_language import VisionLanguageBackbone
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods.base.clip import template_ensemble
from lightning_prompts.methods.zero_shot_clip import ZeroShotCLIP
from lightning_prompts.outputs import PromptOutput
from lightning_prompts.prompts.negative_labels import mine_negative_labels, mine_nouns_and_adjectives, read_word_list
from lightning_prompts.registry import register_method
from lightning_prompts.utils.similarity import similarity_logits


@register_method(
    family="clip",
    title="NegLabel",
    paper="Jiang et al., ICLR 2024 — Negative Label Guided OOD Detection with Pretrained Vision-Language Models",
    example={"negative_labels": ["teapot", "volcano", "violin", "glacier"], "negative_groups": 2},
    overlay="neglabel",
)
class NegLabel(ZeroShotCLIP):
    """Zero-shot CLIP that also scores negative labels mined from a word list (OOD detection).

    Args:
        backbone: a CLIP-family backbone.
        classnames: the ID classes (linked from the data module by the CLI).
        templates: templates with ``{}`` for ID names and negative nouns (ensembled; NegLabel: "the nice {}").
        word_list: a text file, one candidate word or phrase per line (with ``adjective_list``: the nouns;
            NegLabel mines WordNet's nouns and adjectives); required unless ``negative_labels`` is given.
        adjective_list: a text file of adjectives, ranked apart from the nouns and scored through
            ``adjective_template`` (NegLabel's release); ``None``: ``word_list`` is one list.
        adjective_template: the template of the negative adjectives.
        num_negative_labels: how many to keep (10,000), nouns and adjectives together.
        percentile: where a candidate's closeness to the ID names is read (0.95).
        negative_labels: the negative labels themselves (mining skipped); adjectives among them are listed in
            ``negative_adjectives``.
        negative_adjectives: which of ``negative_labels`` are scored through ``adjective_template``.
        negative_groups: the groups of the default evaluator's ``id_mass`` score (100).
        **kwargs: see :class:`~lightning_prompts.methods.ZeroShotCLIP`.
    """

    def __init__(
        self,
        backbone: VisionLanguageBackbone,
        classnames: Sequence[str] | None = None,
        templates: Sequence[str] = ("a photo of a {}.",),
        word_list: str | None = None,
        adjective_list: str | None = None,
        adjective_template: str = "This is a {} photo",
        num_negative_labels: int = 10_000,
        percentile: float = 0.95,
        negative_labels: Sequence[str] | None = None,
        negative_adjectives: Sequence[str] | None = None,
        negative_groups: int = 100,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("evaluator") is None:
            from lightning_prompts.evaluation import OODEvaluator

            kwargs["evaluator"] = OODEvaluator(score="id_mass", negative_groups=negative_groups)
        super().__init__(backbone, classnames, templates=templates, **kwargs)
        if "{}" not in adjective_template:
            raise ConfigurationError(f"NegLabel: adjective_template {adjective_template!r} has no '{{}}' for the word.")
        if negative_labels is None:
            if word_list is None:
                raise ConfigurationError("NegLabel needs a word_list file (or the negative_labels themselves).")
            candidates = read_word_list(word_list)
            if adjective_list is None:
                negative_labels = mine_negative_labels(
                    self.encode_texts, self.classnames, candidates, num_negative_labels, percentile,
                    self.templates[0], at_most=True,
                )  # fmt: skip
            else:
                adjectives = read_word_list(adjective_list)
                nouns, negative_adjectives = mine_nouns_and_adjectives(
                    self.encode_texts, self.classnames, candidates, adjectives, num_negative_labels, percentile,
                    self.templates[0], adjective_template, at_most=True,
                )  # fmt: skip
                negative_labels = [*nouns, *negative_adjectives]
        self.negative_labels = list(negative_labels)
        self.negative_adjectives = list(negative_adjectives or [])
        self.adjective_template = adjective_template
        stray = sorted(set(self.negative_adjectives) - set(self.negative_labels))
        if stray:
            raise ConfigurationError(f"NegLabel: negative_adjectives {stray[:5]} are not among the negative_labels.")
        if len(self.negative_labels) < negative_groups:
            raise ConfigurationError(
                f"NegLabel: {len(self.negative_labels)} negative labels cannot make {negative_groups} groups "
                f"(lower negative_groups or give more words)."
            )
        self._negative_features: Tensor | None = None

    def negative_text_features(self) -> Tensor:
        """``(K, D)`` template-ensemble features of the negative labels, computed once."""
        if self._negative_features is None or self._negative_features.device != self.device:
            adjectives = set(self.negative_adjectives)
            nouns = [label for label in self.negative_labels if label not in adjectives]
            rows: dict[str, Tensor] = {}
            for labels, templates in ((nouns, self.templates), (self.negative_adjectives, [self.adjective_template])):
                if labels:
                    rows.update(zip(labels, template_ensemble(self.backbone, labels, templates)))
            self._negative_features = torch.stack([rows[label] for label in self.negative_labels])  # logits' order
        return self._negative_features

    def classify_features(self, image: Tensor) -> PromptOutput:
        """Logits over the ID classes, then over the negative labels (the evaluator reads the ID columns);
        ``text_features`` stay the ID classes'."""
        output = super().classify_features(image)
        negatives = similarity_logits(self.logit_scale, image, self.negative_text_features())
        return dataclasses.replace(output, logits=torch.cat([output.logits, negatives], dim=-1))

    def check_ready(self, stage: str, callbacks: Any, datamodule: Any | None) -> None:
        super().check_ready(stage, callbacks, datamodule)
        from lightning_prompts.evaluation import OODEvaluator

        if not isinstance(self.resolve_evaluator(datamodule), OODEvaluator):
            raise ConfigurationError(
                "NegLabel scores negative labels beside the classes: evaluate it with OODEvaluator (its default)."
            )
