"""LAPT: Label-driven Automated Prompt Tuning for OOD detection (ECCV 2024; official code in
github.com/YBZh/OpenOOD-VLM), the trained counterpart of :class:`~lightning_prompts.methods.NegLabel`.

CLIP scores the ID classes *and* negative labels (words far from every ID name). Two learned contexts,
one shared by the ID names and one shared by the negative names ("distribution-aware prompts"), build
their prompts, CoOp-style. Training images come per label — ID classes and negative labels alike (the
paper synthesises them with SDXL and retrieves them from LAION; neither set is released, so give the
folders yourself, one per label, beside the ID classes). Each training image is mixed with a frozen text
feature of its own label (cross-modal mixing, the released setting):

    f̃ = normalize(λ · f_image + (1 − λ) · t_{y,k}),   λ ~ Beta(1, 1),   k ~ one of the templates,

and the loss is the cross-entropy of ``s · cos(f̃, learned text features)`` against ``y``, on the mixed
features only. At test the ID score is the probability mass of the ID classes among ID + negative labels,
averaged over groups of negatives (``OODEvaluator(score="id_mass", convention="openood")``, the default
evaluator): FPR95 and AUPR in OpenOOD's convention, as the release reports them (OOD positive: FPR95 is the
share of ID images rejected at 95 % OOD recall, a different operating point from MCM's convention, so the
paper's numbers compare with these only).

Label layout: ``classnames`` are the data module's classes; a name that is a negative label uses the
negative context. Negative labels that are not among them are scored after them. So one checkpoint
serves both stages: ``fit`` on folders of ID + negative labels (1,000 + 1,000 in the paper), then ``test``
on the ID set with its OOD sets and as many negative labels as you like (10,000 in 100 groups): the
contexts do not depend on the names.

One λ is drawn per step for the whole batch, as the release's ``mixup_data`` draws it.

Cross-distribution mixing (``cross_distribution=True``; the release's ``mix_strategy: wccm_cd``, which none
of its scripts use): a second branch from the same clean image features mixes each sample with a random
sample of the other distribution in the batch (ID ↔ negative label), ``normalize(λ f_a + (1 − λ) f_b)``
against the soft label ``λ y_a + (1 − λ) y_b``, its own λ per step, and adds that soft cross-entropy to the
cross-modal loss. Where a batch holds only one of the two distributions the release's pairing returns
nothing (and fails); here each sample is then its own partner (the clean features' cross-entropy).

The seven templates are CLIP's ImageNet ensemble, the release's ``tip_imagenet_templates`` (it draws one of
their frozen text features per image). Decided here: both image and template features are L2-normalised
before mixing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.nn import functional as F

from lightning_prompts.backbones.vision_language import VisionLanguageBackbone
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods.coop import CoOp
from lightning_prompts.metrics.ood import Convention
from lightning_prompts.outputs import PromptOutput
from lightning_prompts.prompts.negative_labels import read_word_list
from lightning_prompts.prompts.text_context import ClassContextPrompt
from lightning_prompts.registry import register_method
from lightning_prompts.utils.similarity import similarity_logits

#: CLIP's seven-template ensemble for ImageNet.
SEVEN_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)


def uniform_mixing_weight() -> Tensor:
    """One λ ~ Beta(1, 1), drawn in float32 whatever the default dtype (a ``bf16-true`` step runs with bfloat16 as
    the default, and torch's Dirichlet, under its Beta, has no bfloat16 sampler)."""
    one = torch.ones((), dtype=torch.float32)
    return torch.distributions.Beta(one, one).sample()


@register_method(
    family="clip",
    paper="ECCV 2024 — LAPT: Label-driven Automated Prompt Tuning for OOD Detection with Vision-Language Models",
    code="YBZh/OpenOOD-VLM",
    example={"negative_labels": ["teapot", "volcano", "violin", "glacier"], "negative_groups": 2, "n_ctx": 2},
    overlay="lapt",
)
class LAPT(CoOp):
    """Distribution-aware prompts for ID and negative labels, trained with cross-modal mixing (see the
    module docstring).

    Args:
        backbone: a CLIP-family backbone.
        classnames: the data module's classes (ID classes, and at ``fit`` also the negative labels that have
            training folders).
        negative_labels: the negative labels, or a file with one per line (mine WordNet's nouns and adjectives
            with :func:`~lightning_prompts.prompts.negative_labels.mine_nouns_and_adjectives` and the release's
            templates, as docs/methods/lapt.md shows).
        n_ctx, ctx_init: each context's length and initial phrase (the release: 2 vectors).
        templates: the frozen templates whose text features are mixed into the images.
        negative_groups: groups of the default evaluator's ``id_mass`` score (100 at test in the paper).
        convention: the default evaluator's OOD metric convention: ``"openood"`` (the release's: OOD positive)
            or ``"mcm"`` (ID positive; the offline testbed's, to compare with the other methods there).
        cross_distribution: add the paper's cross-distribution mixing (the release's ``mix_strategy: wccm_cd``,
            which its scripts do not use): each image feature mixed with that of a random sample of the other
            distribution in the batch (ID ↔ negative label), soft label ``λ y_a + (1 − λ) y_b``, a second λ ~
            Beta(1, 1) per step; the soft cross-entropy is added to the cross-modal loss.
        **kwargs: see :class:`~lightning_prompts.methods.CoOp`; groups ``"prompt"`` (ID context) and
            ``"negative_prompt"``. Default optimizer: SGD Nesterov, lr 0.01, momentum 0.9, weight decay 1e-5.
    """

    default_optimizer: ClassVar[dict[str, Any]] = {
        "class_path": "torch.optim.SGD",
        "init_args": {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-5, "nesterov": True},
    }
    #: the test scores more negative labels in more groups than training (10,000 in 100 against 1,000); the
    #: contexts do not depend on them, and the templates and mixing only shape training
    test_time_hparams: ClassVar[frozenset[str]] = frozenset(
        {"negative_labels", "negative_groups", "templates", "cross_distribution", "convention"}
    )

    def __init__(
        self,
        backbone: VisionLanguageBackbone,
        classnames: Sequence[str] | None = None,
        negative_labels: Sequence[str] | str | None = None,
        n_ctx: int | None = 2,
        ctx_init: str | None = None,
        templates: Sequence[str] = SEVEN_TEMPLATES,
        negative_groups: int = 100,
        cross_distribution: bool = False,
        convention: Convention = "openood",
        **kwargs: Any,
    ) -> None:
        if negative_labels is None:
            raise ConfigurationError("LAPT needs negative_labels (a list, or a file with one label per line).")
        negatives = read_word_list(negative_labels) if isinstance(negative_labels, (str, Path)) else negative_labels
        self._negatives = list(dict.fromkeys(negatives))
        if kwargs.get("evaluator") is None:
            from lightning_prompts.evaluation import OODEvaluator

            kwargs["evaluator"] = OODEvaluator(score="id_mass", convention=convention, negative_groups=negative_groups)
        if not templates or any("{}" not in t for t in templates):
            raise ConfigurationError("LAPT's templates need a '{}' for the label each.")
        self._templates = list(templates)
        self.cross_distribution = cross_distribution
        super().__init__(backbone, classnames, n_ctx=n_ctx, ctx_init=ctx_init, **kwargs)
        self.rebuild_class_prompts(self.classnames)  # CoOp built its prompt over every class; ID names only
        self.negative_prompt = ClassContextPrompt(self.backbone, self._negatives, n_ctx=n_ctx, ctx_init=ctx_init)
        self._template_cache: tuple[Any, Tensor] | None = None
        self._scored_text: Tensor | None = None

    # -- the label layout ------------------------------------------------------------------------------
    @property
    def negative_labels(self) -> list[str]:
        return list(self._negatives)

    def id_names(self, classnames: Sequence[str]) -> list[str]:
        negatives = set(self._negatives)
        return [name for name in classnames if name not in negatives]

    def scored_labels(self) -> list[str]:
        """Every label the logits cover, in column order: the classes, then the other negative labels."""
        present = set(self.classnames)
        return list(self.classnames) + [name for name in self._negatives if name not in present]

    def accepts_trained_classes(self, trained: Sequence[str]) -> bool:
        """A checkpoint trained on ID classes and negative labels serves a test on those ID classes (any order:
        the contexts are shared, the names' rows are rebuilt)."""
        return set(self.classnames_for_training) <= set(trained)

    def rebuild_class_prompts(self, classnames: Sequence[str]) -> None:
        names = self.id_names(classnames)
        if not names:
            raise ConfigurationError("LAPT needs at least one ID class that is not a negative label.")
        self.prompt.set_classnames(names, self.backbone)

    def param_groups(self) -> list[dict[str, Any]]:
        return [
            {"name": "prompt", "params": list(self.prompt.parameters())},
            {"name": "negative_prompt", "params": list(self.negative_prompt.parameters())},
        ]

    def class_text_features(self) -> Tensor:
        """Learned features of :meth:`scored_labels`: ID names through the ID context, negatives through theirs."""
        id_prompts, id_eot = self.prompt()
        neg_prompts, neg_eot = self.negative_prompt()
        id_features = F.normalize(self.backbone.encode_text_embeddings(id_prompts, id_eot), dim=-1)
        negative_features = F.normalize(self.backbone.encode_text_embeddings(neg_prompts, neg_eot), dim=-1)
        id_index = {name: i for i, name in enumerate(self.prompt.classnames)}
        negative_index = {name: i for i, name in enumerate(self._negatives)}
        rows = [
            negative_features[negative_index[name]] if name in negative_index else id_features[id_index[name]]
            for name in self.scored_labels()
        ]
        return torch.stack(rows)

    def classify_features(self, image: Tensor) -> PromptOutput:
        """Logits over :meth:`scored_labels`; ``text_features`` are the classes' rows only (what loss terms
        compare with the classes' frozen features), the negatives' rows are kept for the mixing loss."""
        text = self.encode_class_prompts()
        self._scored_text = text
        logits = similarity_logits(self.logit_scale, image, text)
        return PromptOutput(logits=logits, image_features=image, text_features=text[: len(self.classnames)])

    # -- training: cross-modal mixing ------------------------------------------------------------------
    def template_features(self) -> Tensor:
        """``(T, C, D)`` frozen, L2-normalised features of every class under every template (cached)."""
        key = (self._classes_version, self.device)
        if self._template_cache is None or self._template_cache[0] != key:
            names = [name.replace("_", " ") for name in self.classnames]
            features = torch.stack([self.encode_texts([t.format(n) for n in names]) for t in self._templates])
            self._template_cache = (key, features)
        return self._template_cache[1]

    def mixed_logits(self, output: PromptOutput, targets: Tensor, weights: Tensor, templates: Tensor) -> Tensor:
        """Logits of ``normalize(λ f + (1 − λ) t_{y,k})`` for per-sample ``weights`` λ and template indices k."""
        text = self.template_features()[templates, targets].to(output.image_features.dtype)
        lam = weights.to(text.dtype).unsqueeze(-1)
        mixed = F.normalize(lam * output.image_features + (1 - lam) * text, dim=-1)
        scored = self._scored_text  # every scored label's learned feature, from this step's forward pass
        return similarity_logits(self.logit_scale, mixed, scored)

    def task_loss(self, output: PromptOutput, targets: Tensor) -> Tensor:
        if not self.training:
            return super().task_loss(output, targets)
        size = targets.shape[0]
        # one λ per step for the whole batch, as the release's mixup_data draws it
        weights = uniform_mixing_weight().expand(size).to(targets.device)
        templates = torch.randint(len(self._templates), (size,), device=targets.device)
        loss = F.cross_entropy(self.mixed_logits(output, targets, weights, templates), targets)
        if self.cross_distribution:
            weight = uniform_mixing_weight().to(targets.device)
            loss = loss + self.cross_distribution_loss(output, targets, self.distribution_partners(targets), weight)
        return loss

    # -- training: cross-distribution mixing (option) --------------------------------------------------
    def distribution_partners(self, targets: Tensor) -> Tensor:
        """For each sample, a random sample of the batch from the other distribution (ID ↔ negative label),
        drawn with replacement; itself when the batch lacks one of the two."""
        negatives = set(self._negatives)
        is_negative = torch.tensor([name in negatives for name in self.classnames], device=targets.device)[targets]
        id_rows, negative_rows = torch.where(~is_negative)[0], torch.where(is_negative)[0]
        partners = torch.arange(targets.shape[0], device=targets.device)
        if len(id_rows) and len(negative_rows):
            partners[id_rows] = negative_rows[torch.randint(len(negative_rows), (len(id_rows),), device=targets.device)]
            partners[negative_rows] = id_rows[torch.randint(len(id_rows), (len(negative_rows),), device=targets.device)]
        return partners

    def cross_distribution_loss(
        self, output: PromptOutput, targets: Tensor, partners: Tensor, weight: Tensor
    ) -> Tensor:
        """Soft cross-entropy of ``normalize(λ f_a + (1 − λ) f_b)`` against ``λ y_a + (1 − λ) y_b`` over every
        scored label, ``b`` the partner of ``a`` (:meth:`distribution_partners`), from the clean image features."""
        image = output.image_features
        lam = weight.to(image.dtype)
        mixed = F.normalize(lam * image + (1 - lam) * image[partners], dim=-1)
        logits = similarity_logits(self.logit_scale, mixed, self._scored_text)
        one_hot = F.one_hot(targets, logits.shape[1]).float()
        soft = float(weight) * one_hot + (1 - float(weight)) * one_hot[partners]
        return -(soft * F.log_softmax(logits, dim=1)).sum(dim=1).mean()

    def check_ready(self, stage: str, callbacks: Any, datamodule: Any | None) -> None:
        super().check_ready(stage, callbacks, datamodule)
        from lightning_prompts.evaluation import OODEvaluator

        if stage != "fit" and not isinstance(self.resolve_evaluator(datamodule), OODEvaluator):
            raise ConfigurationError("LAPT scores negative labels beside the classes: test it with OODEvaluator.")
