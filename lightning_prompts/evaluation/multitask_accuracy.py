"""Accuracy per task of a merged label space, and its mean (MVLPT's multi-task evaluation).

Each image is scored on its own task's classes only: the logits are sliced to the task's label range and
the label shifted to it, as the official MVLPT test loop does; ``<stage>/acc_<task>`` per task and
``<stage>/acc``, the mean over tasks (MVLPT's ``average`` key), are logged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lightning_prompts.errors import ConfigurationError
from lightning_prompts.evaluation.base import Evaluator, Stage
from lightning_prompts.metrics.setwise_accuracy import SetwiseAccuracy
from lightning_prompts.registry import register_evaluator

if TYPE_CHECKING:
    from lightning_prompts.methods.base import PromptModule


@register_evaluator()
class MultiTaskAccuracyEvaluator(Evaluator):
    """Per-task accuracy on each task's own classes and the mean over tasks (see the module docstring)."""

    def __init__(self) -> None:
        self._ranges: dict[str, tuple[int, int]] = {}
        self._metrics: dict[str, SetwiseAccuracy] = {}

    def check_ready(self, module: PromptModule, datamodule: Any | None, stage: str) -> None:
        if datamodule is not None and not isinstance(getattr(datamodule, "task_class_ranges", None), dict):
            raise ConfigurationError(
                "MultiTaskAccuracyEvaluator needs a data module with task_class_ranges (MultiTaskImageDataModule)."
            )

    def setup(self, module: PromptModule, datamodule: Any | None, stage: str) -> None:
        self._ranges = dict(getattr(datamodule, "task_class_ranges", {}) or {})

    def start(self, module: PromptModule, stage: Stage) -> None:
        self._metrics[stage] = SetwiseAccuracy(list(self._ranges)).to(module.device)

    def update(
        self, module: PromptModule, batch: Any, scores: Tensor, targets: Tensor, stage: Stage, dataloader_idx: int
    ) -> None:
        metric = self._metrics[stage]
        for index, (start, end) in enumerate(self._ranges.values()):
            inside = (targets >= start) & (targets < end)
            if bool(inside.any()):
                metric.update(scores[inside][:, start:end], targets[inside] - start, set_index=index)

    def finish(self, module: PromptModule, stage: Stage) -> dict[str, Tensor]:
        metric = self._metrics.get(stage)
        if metric is None:
            return {}
        per_task = metric.compute()
        metric.reset()
        if not per_task:
            return {}
        results = {f"{stage}/acc_{task}": value for task, value in per_task.items()}
        results[f"{stage}/acc"] = torch.stack(list(per_task.values())).mean()
        return results
