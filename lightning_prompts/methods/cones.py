"""ConES ("ConES: Concept Embedding Search for Parameter Efficient Tuning Large Vision Language
Models", arXiv 2023). No official code has been released, so what follows is our
reading of the paper's idea for CLIP classification, pinned by equation tests
(``tests/methods/test_cones.py``).

Prompt tuning back-propagates through the text encoder to reach a few input vectors. ConES learns
in the space the text encoder *outputs* into instead: one concept embedding ``e_c`` per class,
initialised from the zero-shot class text feature (the template ensemble ``w_c``), and classifies

    z_c = s · <f(x), e_c / |e_c|>

with the frozen image feature ``f(x)`` (L2-normalised) and CLIP's logit scale ``s``. Only the
embeddings train, with cross-entropy; the text encoder runs once at construction and never in
training, so a step costs one frozen image forward (none with
:class:`~lightning_prompts.callbacks.FrozenFeatureCache`) and a ``(B, D) × (D, C)`` product.

Decisions where the paper is silent for CLIP classification: the embeddings are normalised before the
product (as every CLIP class weight is); classes the method was not trained on (base-to-novel's novel
set, new class lists) are scored with their zero-shot features, while trained classes keep their
learned embeddings; the optimiser defaults to the CLIP family's (SGD, lr 0.002, momentum 0.9, weight
decay 5e-4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_prompts.backbones.vision_language import VisionLanguageBackbone
from lightning_prompts.methods.base import CLIPPromptModule
from lightning_prompts.methods.base.clip import template_ensemble
from lightning_prompts.registry import register_method


@register_method(
    family="clip",
    title="ConES",
    paper="arXiv 2023 — ConES: Concept Embedding Search for Parameter Efficient Tuning Large Vision Language Models",
)
class ConES(CLIPPromptModule):
    """Class embeddings learned in CLIP's text-feature space, initialised from zero-shot text features.

    Args:
        backbone: a CLIP-family backbone (:class:`~lightning_prompts.backbones.OpenCLIP`,
            :class:`~lightning_prompts.backbones.StandInCLIP`).
        classnames: the training classes (linked from the data module by the CLI).
        templates: templates with ``{}`` whose ensemble initialises the embeddings and scores classes the
            method was not trained on (``"a photo of a {}."``).
        **kwargs: the optimisation arguments of :class:`~lightning_prompts.methods.PromptModule`.
    """

    image_side_frozen: ClassVar[bool] = True

    def __init__(
        self,
        backbone: VisionLanguageBackbone,
        classnames: Sequence[str] | None = None,
        templates: Sequence[str] = ("a photo of a {}.",),
        **kwargs: Any,
    ) -> None:
        kwargs.pop("frozen_template", None)
        if not templates or any("{}" not in template for template in templates):
            raise ValueError(f"every template needs a '{{}}' for the class name, got {list(templates)}.")
        super().__init__(backbone, classnames, frozen_template=templates[0], **kwargs)
        self.templates = list(templates)
        # the frozen template follows from ``templates``; it is not an argument of this method, so it is not
        # a hyperparameter either (a checkpoint would otherwise disagree with every config that omits it)
        self.hparams.pop("frozen_template", None)
        #: The classes the embeddings belong to (the training classes), in row order.
        self.embedding_classnames = list(self.classnames)
        self.class_embeddings = nn.Parameter(template_ensemble(self.backbone, self.embedding_classnames, templates))

    def class_text_features(self) -> Tensor:
        """Normalised learned embeddings of the trained classes, zero-shot features of any other class."""
        if self.classnames == self.embedding_classnames:
            return F.normalize(self.class_embeddings, dim=-1)
        rows = {name: row for row, name in enumerate(self.embedding_classnames)}
        unseen = [name for name in self.classnames if name not in rows]
        zero_shot = template_ensemble(self.backbone, unseen, self.templates) if unseen else None
        learned = F.normalize(self.class_embeddings, dim=-1)
        features = []
        for name in self.classnames:
            if name in rows:
                features.append(learned[rows[name]])
            else:
                assert zero_shot is not None
                features.append(zero_shot[unseen.index(name)].to(learned.dtype))
        return torch.stack(features)

    def image_features(self, images: Tensor) -> Tensor:
        return F.normalize(self.backbone.encode_image(images, patch_tokens=False).features, dim=-1)
