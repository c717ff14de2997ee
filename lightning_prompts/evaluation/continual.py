"""Class-incremental evaluation: accuracy on every class seen so far after each task (A_t), the
average incremental accuracy and the forgetting, with the history kept in checkpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from lightning_prompts.batch import TASK
from lightning_prompts.data.protocols import TaskStream, provided
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.evaluation.base import Evaluator, Stage
from lightning_prompts.metrics.continual import ContinualAccuracy, TaskAccuracy
from lightning_prompts.registry import register_evaluator

if TYPE_CHECKING:
    from lightning_prompts.methods.base import PromptModule


@register_evaluator()
class ContinualEvaluator(Evaluator):
    """The continual protocol on a :class:`~lightning_prompts.data.protocols.TaskStream` data module.

    Validation at the end of task ``t`` sees the test images of tasks ``0..t`` (``batch["task"]`` tells
    each sample's task) and logs ``val/acc`` (A_t), ``val/avg_incremental_acc`` and ``val/forgetting``
    from the history ``R[t, j]`` (:class:`~lightning_prompts.metrics.ContinualAccuracy`); test logs
    ``test/acc`` over all tasks and ``test/acc_task<j>``.

    Args:
        average: what ``acc`` averages: ``"samples"``, the accuracy over every seen test image (LAE's official
            ``Acc``), or ``"tasks"``, the mean of the seen tasks' accuracies (L2P, DualPrompt and MULTI-LANE's
            ``evaluate_till_now``). The two differ where tasks hold different numbers of test images (ImageNet-R).
    """

    def __init__(self, average: Literal["samples", "tasks"] = "samples") -> None:
        if average not in ("samples", "tasks"):
            raise ConfigurationError(f"ContinualEvaluator: average must be 'samples' or 'tasks', got {average!r}.")
        self.average = average
        self.num_tasks = 0
        self.task_accuracy: TaskAccuracy | None = None
        self.history: ContinualAccuracy | None = None
        self._pending: dict[str, Any] | None = None

    def setup(self, module: PromptModule, datamodule: Any | None, stage: str) -> None:
        stream = provided(datamodule, TaskStream)
        if stream is None:
            raise ConfigurationError("ContinualEvaluator needs a task-stream data module (ClassIncrementalDataModule).")
        if self.num_tasks != stream.num_tasks:
            self.num_tasks = stream.num_tasks
            self.task_accuracy = TaskAccuracy(self.num_tasks)
            self.history = ContinualAccuracy(self.num_tasks)
        if self._pending is not None:
            self.load_state_dict(self._pending)

    def check_ready(self, module: PromptModule, datamodule: Any | None, stage: str) -> None:
        if provided(datamodule, TaskStream) is None:
            raise ConfigurationError(
                f"{type(module).__name__} evaluates a continual stream: use a task-stream data module "
                f"(ClassIncrementalDataModule)."
            )

    def start(self, module: PromptModule, stage: Stage) -> None:
        assert self.task_accuracy is not None and self.history is not None
        self.task_accuracy = self.task_accuracy.to(module.device)
        self.history = self.history.to(module.device)
        self.task_accuracy.reset()

    def update(
        self, module: PromptModule, batch: Any, scores: Tensor, targets: Tensor, stage: Stage, dataloader_idx: int
    ) -> None:
        assert self.task_accuracy is not None
        self.task_accuracy.update(scores, targets, batch[TASK])

    def finish(self, module: PromptModule, stage: Stage) -> dict[str, Tensor]:
        assert self.task_accuracy is not None and self.history is not None
        overall, per_task = self.task_accuracy.compute()
        if self.average == "tasks":  # tasks without test images here (not seen yet) are NaN, so left out
            overall = per_task.nanmean()
        self.task_accuracy.reset()
        if stage == "test":
            return {"test/acc": overall, **{f"test/acc_task{t}": a for t, a in enumerate(per_task)}}
        trainer = module._trainer
        if trainer is not None and trainer.sanity_checking:
            return {}
        stream = provided(module.datamodule, TaskStream)
        task = stream.task_of_epoch(trainer.current_epoch) if stream is not None and trainer is not None else 0
        self.history.update(task, overall, per_task)
        history = self.history.compute()
        return {
            "val/acc": history["acc"],
            "val/avg_incremental_acc": history["avg_incremental_acc"],
            "val/forgetting": history["forgetting"],
        }

    def state_dict(self) -> dict[str, Any]:
        if self.history is None:
            return {}
        return {key: value.detach().cpu() for key, value in self.history.metric_state.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if self.history is None:  # restored before setup (load_from_checkpoint): apply at setup
            self._pending = dict(state)
            return
        for key, value in state.items():
            setattr(self.history, key, torch.as_tensor(value).to(getattr(self.history, key).device))
        self._pending = None
