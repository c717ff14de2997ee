"""DiffTPT (Feng, Yu, Liu, Khan, Zuo — "Diverse Data Augmentation with Diffusions for Effective Test-time
Prompt Tuning", ICCV 2023; official code: github.com/chunmeifeng/DiffTPT) as an evaluator.

TPT (:class:`~lightning_prompts.evaluation.TestTimePromptTuning`) with more, and filtered, views. Per test
image the prompt is tuned on the image, its ``N`` augmented views (64: the official ``difftpt`` mode builds
``batch_size`` of them where TPT's mode builds ``batch_size − 1``) and ``K`` views generated from it
by a diffusion model (63 Stable Diffusion image variations, ``lambdalabs/sd-image-variations-diffusers``,
guidance 3, generated beforehand):

1. **cosine filter**: among the views, keep the ``cosine_selection`` = 80 % whose logit vectors are most
   cosine-similar to the image's own logits (the image itself always passes);
2. **confidence filter**: of those and the image, keep the ``selection`` = 30 % with the lowest entropy;
3. minimise the entropy of their averaged probability for ``steps`` = 4 AdamW steps (lr 5e-3) from the
   reset prompt, then classify the image. The selection is made at the first step and kept.

Generated views come from the data module (``generated_views`` / ``generated_views_root``: files in the
official layout, ``<root>/<folder>/<stem>_<k><ext>``), or from a ``view_generator`` callable given in
Python (``image (3, H, W) → views (K, 3, H, W)``: bring a diffusion pipeline). The diffusion model itself
cannot run offline here, so none is shipped. As everywhere, a selection keeps at least one view where the
official ``int(n · fraction)`` would keep none.

Note: the paper evaluates on 1,000 random test images per dataset (official issue #3), so its numbers
are not directly comparable with full-test-set TPT numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.nn import functional as F

from lightning_prompts.batch import GENERATED_VIEWS, IMAGE, IMAGE_VIEWS
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.evaluation.test_time import TestTimePromptTuning, select_confident
from lightning_prompts.registry import register_evaluator

if TYPE_CHECKING:
    from lightning_prompts.methods.base import PromptModule

ViewGenerator = Callable[[Tensor], Tensor]


def select_by_cosine_then_entropy(logits: Tensor, cosine_fraction: float, entropy_fraction: float) -> Tensor:
    """Indices into ``logits`` ``(1 + V, C)`` (row 0: the image) kept by DiffTPT's two filters (see the module
    docstring), at least one at each stage."""
    logits = logits.float()  # bf16 cosines tie (43 distinct among 63 views), and the cut would fall among ties
    cosine = F.cosine_similarity(logits[1:], logits[:1], dim=-1)
    kept = torch.argsort(cosine, descending=True)[: max(1, int(cosine.shape[0] * cosine_fraction))] + 1
    candidates = torch.cat([torch.zeros(1, dtype=kept.dtype, device=kept.device), kept])
    return candidates[select_confident(logits[candidates], entropy_fraction)]


@register_evaluator()
class DiffTPT(TestTimePromptTuning):
    """DiffTPT at test (see the module docstring); validation is plain accuracy.

    Args:
        steps: optimisation steps per test image (4).
        lr: AdamW learning rate (5e-3).
        selection: share kept by confidence after the cosine filter (0.3).
        cosine_selection: share of views kept by cosine similarity to the image's logits (0.8).
        view_generator: makes views from a test image, in Python (``None``: the data module's
            ``generated_views``).
    """

    __test__ = False

    def __init__(
        self,
        steps: int = 4,
        lr: float = 5e-3,
        selection: float = 0.3,
        cosine_selection: float = 0.8,
        view_generator: ViewGenerator | None = None,
    ) -> None:
        super().__init__(steps=steps, lr=lr, selection=selection)
        if not 0 < cosine_selection <= 1:
            raise ConfigurationError(f"DiffTPT: 0 < cosine_selection <= 1, got {cosine_selection}.")
        self.cosine_selection, self.view_generator = cosine_selection, view_generator

    def check_ready(self, module: PromptModule, datamodule: Any | None, stage: str) -> None:
        if stage == "test" and self.view_generator is None and not getattr(datamodule, "generated_views", 0):
            raise ConfigurationError(
                "DiffTPT needs generated views: give the data module generated_views and generated_views_root "
                "(pre-generated images), or the evaluator a view_generator."
            )
        super().check_ready(module, datamodule, stage)

    def views(self, batch: Any, index: int) -> Tensor:
        """The augmented views followed by the generated ones."""
        augmented = batch[IMAGE_VIEWS][index]
        if self.view_generator is not None:
            generated = self.view_generator(batch[IMAGE][index]).to(augmented)
        else:
            generated = batch[GENERATED_VIEWS][index]
        return torch.cat([augmented, generated])

    def select(self, logits: Tensor) -> Tensor:
        return select_by_cosine_then_entropy(logits, self.cosine_selection, self.selection)
