"""ROC-AUC of multi-task binary prediction with missing labels, as MoleculeNet is reported.

Each task's AUROC is taken over the molecules labelled for that task; tasks whose labelled molecules
are all of one class have no AUROC and are left out of the mean (as Pretrain-GNNs and GPF do, which
print the share of tasks left out). Scores and labels are kept until :meth:`compute`, so the metric
is exact (ties included) and gathers across DDP ranks.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc
from torchmetrics.utilities import dim_zero_cat


class MultiTaskAUROC(Metric):
    """Mean over tasks of the per-task AUROC (see the module docstring).

    ``update(scores, targets)``: ``scores`` ``(N, T)`` logits or probabilities; ``targets`` ``(N, T)``
    with 1 / 0 for labelled entries and ``nan`` (or any negative value) for missing ones.
    ``compute()`` returns ``(mean AUROC, per-task AUROC with nan for tasks left out)``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_tasks: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.num_tasks = num_tasks
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, scores: Tensor, targets: Tensor) -> None:
        if scores.shape != targets.shape or scores.dim() != 2 or scores.shape[1] != self.num_tasks:
            raise ValueError(
                f"scores and targets must both be (N, {self.num_tasks}); got {tuple(scores.shape)} and "
                f"{tuple(targets.shape)}."
            )
        targets = targets.float()
        self.scores.append(scores.detach().float())
        self.targets.append(torch.where(torch.isnan(targets), torch.full_like(targets, -1.0), targets))

    def compute(self) -> tuple[Tensor, Tensor]:
        scores, targets = dim_zero_cat(self.scores), dim_zero_cat(self.targets)
        per_task = torch.full((self.num_tasks,), float("nan"), device=scores.device)
        for task in range(self.num_tasks):
            labelled = targets[:, task] >= 0
            labels = targets[labelled, task].long()
            if labels.numel() and 0 < int(labels.sum()) < labels.numel():
                per_task[task] = binary_auroc(scores[labelled, task], labels, thresholds=None)
        valid = ~torch.isnan(per_task)
        mean = per_task[valid].mean() if valid.any() else torch.tensor(float("nan"), device=scores.device)
        return mean, per_task
