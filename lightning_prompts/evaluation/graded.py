"""Graded labels (disease grades such as diabetic-retinopathy 0–4): accuracy and quadratic-weighted
Cohen's kappa.

Logged per stage: ``<stage>/acc`` and ``<stage>/kappa`` (torchmetrics' ``MulticlassCohenKappa`` with
quadratic weights: a grade off by two costs four times one off by one), the default ``best.ckpt``
monitor being ``val/kappa``. The classes must be listed in grade order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassCohenKappa

from lightning_prompts.errors import ConfigurationError
from lightning_prompts.evaluation.base import Evaluator, Stage
from lightning_prompts.registry import register_evaluator

if TYPE_CHECKING:
    from lightning_prompts.methods.base import PromptModule


@register_evaluator()
class GradedClassificationEvaluator(Evaluator):
    """Accuracy and quadratic-weighted kappa of ordered classes (see the module docstring).

    Args:
        weights: kappa weighting, ``"quadratic"`` (the grading benchmarks') or ``"linear"``.
    """

    monitor: ClassVar[tuple[str, str] | None] = ("val/kappa", "max")

    def __init__(self, weights: str = "quadratic") -> None:
        if weights not in ("quadratic", "linear"):
            raise ValueError(f"weights must be 'quadratic' or 'linear', got {weights!r}.")
        self.weights = weights
        self._metrics: dict[str, MetricCollection] = {}

    def check_ready(self, module: PromptModule, datamodule: Any | None, stage: str) -> None:
        if len(module.classnames) < 2:
            raise ConfigurationError("GradedClassificationEvaluator needs at least two grades.")

    def start(self, module: PromptModule, stage: Stage) -> None:
        classes = len(module.classnames)
        self._metrics[stage] = MetricCollection(
            {
                "acc": MulticlassAccuracy(classes, average="micro"),
                "kappa": MulticlassCohenKappa(classes, weights=self.weights),
            }
        ).to(module.device)

    def update(
        self, module: PromptModule, batch: Any, scores: Tensor, targets: Tensor, stage: Stage, dataloader_idx: int
    ) -> None:
        self._metrics[stage].update(scores.argmax(dim=-1), targets)

    def finish(self, module: PromptModule, stage: Stage) -> dict[str, Tensor]:
        metrics = self._metrics.get(stage)
        if metrics is None or not metrics["acc"].update_called:
            return {}
        values = metrics.compute()
        metrics.reset()
        return {f"{stage}/{name}": value for name, value in values.items()}
