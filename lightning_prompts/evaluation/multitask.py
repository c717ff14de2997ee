"""Multi-task binary prediction with missing labels (MoleculeNet): mean ROC-AUC over tasks.

Logged per stage: ``<stage>/roc_auc`` (the mean over tasks that have both classes among their labelled
examples, the metric of Pretrain-GNNs and GPF and the default ``best.ckpt`` monitor) and
``<stage>/tasks_scored`` (the share of tasks that entered the mean). A data module that tests on several sets names
them (``test_sets``, in the order of its test loaders; the bio dataset's ``broad`` and ``none``): each is scored on
its own, ``test/roc_auc_<name>`` and ``test/tasks_scored_<name>``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

from lightning_prompts.errors import ConfigurationError
from lightning_prompts.evaluation.base import Evaluator, Stage
from lightning_prompts.metrics.multitask_auroc import MultiTaskAUROC
from lightning_prompts.registry import register_evaluator

if TYPE_CHECKING:
    from lightning_prompts.methods.base import PromptModule


@register_evaluator()
class MultiTaskAUROCEvaluator(Evaluator):
    """Mean per-task ROC-AUC of the method's per-task logits (see the module docstring)."""

    monitor: ClassVar[tuple[str, str] | None] = ("val/roc_auc", "max")

    def __init__(self) -> None:
        self._metrics: dict[str, list[MultiTaskAUROC]] = {}
        self._test_sets: list[str] = []

    def setup(self, module: PromptModule, datamodule: Any | None, stage: str) -> None:
        self._test_sets = list(getattr(datamodule, "test_sets", None) or [])

    def check_ready(self, module: PromptModule, datamodule: Any | None, stage: str) -> None:
        if datamodule is not None and not getattr(datamodule, "binary_tasks", False):
            raise ConfigurationError(
                "MultiTaskAUROCEvaluator needs multi-task binary labels (e.g. MoleculeNetDataModule)."
            )

    def _set_names(self, stage: Stage) -> list[str]:
        """The suffix of each loader's values: ``""`` for a stage of one set."""
        return [f"_{name}" for name in self._test_sets] if stage == "test" and len(self._test_sets) > 1 else [""]

    def start(self, module: PromptModule, stage: Stage) -> None:
        count = len(self._set_names(stage))
        self._metrics[stage] = [MultiTaskAUROC(len(module.classnames)).to(module.device) for _ in range(count)]

    def update(
        self, module: PromptModule, batch: Any, scores: Tensor, targets: Tensor, stage: Stage, dataloader_idx: int
    ) -> None:
        metrics = self._metrics[stage]
        metrics[dataloader_idx if len(metrics) > 1 else 0].update(scores, targets)

    def finish(self, module: PromptModule, stage: Stage) -> dict[str, Tensor]:
        values: dict[str, Tensor] = {}
        for suffix, metric in zip(self._set_names(stage), self._metrics.get(stage, [])):
            if not metric.update_called:
                continue
            mean, per_task = metric.compute()
            metric.reset()
            values[f"{stage}/roc_auc{suffix}"] = mean
            values[f"{stage}/tasks_scored{suffix}"] = (~per_task.isnan()).float().mean()
        return values
