"""Continual-learning metrics: accuracy per task and over all seen classes, last accuracy A_T,
average incremental accuracy and forgetting.

With ``R[t, j]`` the accuracy on task ``j``'s test images after training task ``t`` (argmax over every
class seen so far, "class-incremental") and ``A_t`` the accuracy on all test images of tasks ``0..t``:

* last accuracy ``A_T`` (LAE's and L2P's headline figure);
* average incremental accuracy ``(1/T) Σ_t A_t``;
* forgetting after task ``T``: ``mean_{j<T} ( max_{t∈[j, T−1]} R[t, j] − R[T, j] )`` (Chaudhry et al.).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class TaskAccuracy(Metric):
    """Accuracy over all samples and per task of ``update(scores, targets, tasks)`` calls.

    Args:
        num_tasks: number of tasks of the stream.
    """

    full_state_update = False

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        self.add_state("correct", torch.zeros(num_tasks, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(num_tasks, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, scores: Tensor, targets: Tensor, tasks: Tensor) -> None:
        hits = (scores.argmax(dim=-1) == targets).long()
        self.correct += torch.bincount(tasks, weights=hits, minlength=self.num_tasks).long()
        self.total += torch.bincount(tasks, minlength=self.num_tasks)

    def compute(self) -> tuple[Tensor, Tensor]:
        """``(accuracy over all samples, per-task accuracy (NaN for tasks without samples))``."""
        overall = self.correct.sum().float() / self.total.sum().clamp(min=1).float()
        per_task = self.correct.float() / self.total.float()
        return overall, torch.where(self.total > 0, per_task, torch.full_like(per_task, float("nan")))


def average_incremental_accuracy(task_end_accuracies: Tensor) -> Tensor:
    """Mean of ``A_t`` over the tasks evaluated so far (NaN entries are tasks not reached yet)."""
    return task_end_accuracies.nanmean()


def forgetting(matrix: Tensor, last: int) -> Tensor:
    """Average forgetting after task ``last`` from ``matrix[t, j] = R[t, j]`` (0 when ``last`` is 0)."""
    if last == 0:
        return matrix.new_zeros(())
    drops = [matrix[j:last, j].max() - matrix[last, j] for j in range(last)]
    return torch.stack(drops).mean()


class ContinualAccuracy(Metric):
    """The history of a class-incremental run: ``R[t, j]`` and ``A_t`` for every task evaluated so far
    (``update(task, overall, per_task)`` after a task's evaluation, e.g. from :class:`TaskAccuracy`),
    and from it the last accuracy, the average incremental accuracy and the forgetting. Its states are
    saved with the module (``persistent``) and never reset between evaluations; every rank records
    the same, already synchronised, values.

    Args:
        num_tasks: number of tasks of the stream.
    """

    full_state_update = True

    def __init__(self, num_tasks: int) -> None:
        super().__init__(sync_on_compute=False)
        self.num_tasks = num_tasks
        nan = float("nan")
        self.add_state("matrix", torch.full((num_tasks, num_tasks), nan), dist_reduce_fx=None, persistent=True)
        self.add_state("task_end", torch.full((num_tasks,), nan), dist_reduce_fx=None, persistent=True)
        self.add_state("last_task", torch.tensor(-1), dist_reduce_fx=None, persistent=True)

    def update(self, task: int, overall: Tensor, per_task: Tensor) -> None:
        self.matrix[task] = per_task.to(self.matrix)
        self.task_end[task] = overall.to(self.task_end)
        self.last_task.fill_(task)

    def compute(self) -> dict[str, Tensor]:
        """``{"acc": A_t, "avg_incremental_acc", "forgetting"}`` after the last recorded task ``t``."""
        last = int(self.last_task)
        if last < 0:
            raise RuntimeError("ContinualAccuracy.compute() before any task was recorded.")
        return {
            "acc": self.task_end[last],
            "avg_incremental_acc": average_incremental_accuracy(self.task_end[: last + 1]),
            "forgetting": forgetting(self.matrix, last),
        }
