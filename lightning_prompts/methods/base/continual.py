"""What a class-incremental method shares (LAE, MULTI-LANE): the task schedule of a
:class:`~lightning_prompts.data.protocols.TaskStream` data module, run as one ``fit``.

* :attr:`ContinualMixin.current_task`: the task being learned, from the stream's schedule during ``fit``;
* :meth:`ContinualMixin.seen_tasks`: tasks that score (all of them when testing or predicting);
* :meth:`ContinualMixin.epoch_in_task`: the epoch within the current task;
* :meth:`ContinualMixin.restart_optimisation`: a fresh optimizer at a task boundary, as both official codes
  build one per task: the optimizer state is cleared, and a configured schedule starts again from its base
  learning rates;
* the check that the stream has the method's ``num_tasks``.
"""

from __future__ import annotations

from typing import Any

from lightning_prompts.data.protocols import TaskStream, provided
from lightning_prompts.errors import ConfigurationError


class ContinualMixin:
    """Mixed into a :class:`~lightning_prompts.methods.PromptModule` that sets ``self.num_tasks``."""

    num_tasks: int
    _task: int = 0

    @property
    def current_task(self) -> int:
        """The task being learned (from the data module's task schedule during ``fit``)."""
        trainer = self._trainer
        stream = provided(self.datamodule, TaskStream)
        if stream is not None and trainer is not None:
            return int(stream.task_of_epoch(trainer.current_epoch))
        return self._task

    @current_task.setter
    def current_task(self, task: int) -> None:
        self._task = int(task)

    def seen_tasks(self) -> int:
        """Tasks that score: every task when testing or predicting, else tasks ``0..current``."""
        trainer = self._trainer
        if trainer is not None and (trainer.testing or trainer.predicting):
            return self.num_tasks
        return self.current_task + 1

    def epoch_in_task(self) -> int:
        stream = provided(self.datamodule, TaskStream)
        epochs_per_task = stream.epochs_per_task if stream is not None else self.trainer.max_epochs
        return self.trainer.current_epoch - self.current_task * epochs_per_task

    def check_stream(self, datamodule: Any | None) -> None:
        stream = provided(datamodule, TaskStream)
        if stream is not None and stream.num_tasks != self.num_tasks:
            name, tasks = type(self).__name__, stream.num_tasks
            raise ConfigurationError(f"{name} has num_tasks={self.num_tasks} but the data stream has {tasks} tasks.")

    def restart_optimisation(self) -> None:
        """Clear every optimizer's state and restart the schedules from their base learning rates."""
        for optimizer in self.trainer.optimizers:
            optimizer.state.clear()
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, strict=True):
                group["lr"] = base
            scheduler.last_epoch = 0
