"""Multi-task binary prediction with missing labels (MoleculeNet): mean ROC-AUC over tasks.

Logged per stage: ``<stage>/roc_auc`` (the mean over tasks that have both classes among their labelled
examples, the metric of Pretrain-GNNs and GPF and the default ``best.ckpt`` monitor) and
``<stage>/tasks_scored`` (the share of tasks that entered the mean).
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
        self._metrics: dict[str, MultiTaskAUROC] = {}

    def check_ready(self, module: PromptModule, datamodule: Any | None, stage: str) -> None:
        if datamodule is not None and not getattr(datamodule, "binary_tasks", False):
            raise ConfigurationError(
                "MultiTaskAUROCEvaluator needs multi-task binary labels (e.g. MoleculeNetDataModule)."
            )

    def start(self, module: PromptModule, stage: Stage) -> None:
        self._metrics[stage] = MultiTaskAUROC(len(module.classnames)).to(module.device)

    def update(
        self, module: PromptModule, batch: Any, scores: Tensor, targets: Tensor, stage: Stage, dataloader_idx: int
    ) -> None:
        self._metrics[stage].update(scores, targets)

    def finish(self, module: PromptModule, stage: Stage) -> dict[str, Tensor]:
        metric = self._metrics.get(stage)
        if metric is None or not metric.update_called:
            return {}
        mean, per_task = metric.compute()
        metric.reset()
        return {f"{stage}/roc_auc": mean, f"{stage}/tasks_scored": (~per_task.isnan()).float().mean()}
