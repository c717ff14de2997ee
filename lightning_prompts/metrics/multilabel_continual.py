"""Multi-label class-incremental metrics (MULTI-LANE's and KRT's protocol): mAP, CF1 and OF1 over the
classes seen so far.

After each task the model is tested on images containing any seen class, and only the seen classes'
columns are scored:

* **mAP**: the mean over seen classes of the average precision of their scores; a class with no positive
  test image is left out, as the official code's torchmetrics 0.11 did (torchmetrics 1.x would score it 0,
  which moves the number a lot on small test sets);
* **CF1**: the mean over seen classes of the per-class F1 of the predictions ``sigmoid > 0.8`` (strictly
  above the threshold; a class with no predicted and no true positive has F1 0);
* **OF1**: the F1 of all seen-class decisions pooled (micro average) at the same threshold.

Scores and labels are kept until :meth:`MultiLabelCLMetrics.compute`, so the metric is exact and
gathers across DDP ranks.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_average_precision
from torchmetrics.utilities import dim_zero_cat


def f1(true_positive: Tensor, false_positive: Tensor, false_negative: Tensor) -> Tensor:
    """F1 from counts, 0 where it is undefined."""
    denominator = 2 * true_positive + false_positive + false_negative
    return torch.where(denominator > 0, 2 * true_positive / denominator.clamp(min=1), torch.zeros_like(denominator))


class MultiLabelCLMetrics(Metric):
    """mAP, CF1 and OF1 over the first ``seen`` classes (see the module docstring).

    Args:
        num_classes: all classes of the stream, in label order.
        threshold: a class is predicted when its probability is strictly above this (0.8).

    ``update(probabilities, targets)`` with ``(N, C)`` probabilities and multi-hot targets;
    ``scores(seen)`` returns ``{"map", "cf1", "of1"}`` over the first ``seen`` classes (``compute()``: all
    classes; torchmetrics caches ``compute``, so per-task scores go through ``scores``).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, threshold: float = 0.8, **kwargs: object) -> None:
        super().__init__(**kwargs)
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}.")
        self.num_classes, self.threshold = num_classes, threshold
        self.add_state("probabilities", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, probabilities: Tensor, targets: Tensor) -> None:
        if probabilities.shape != targets.shape or probabilities.shape[-1] != self.num_classes:
            raise ValueError(
                f"probabilities and targets must both be (N, {self.num_classes}); got {tuple(probabilities.shape)} "
                f"and {tuple(targets.shape)}."
            )
        self.probabilities.append(probabilities.detach().float())
        self.targets.append(targets.detach().long())

    def compute(self) -> dict[str, Tensor]:
        return self.scores()

    def scores(self, seen: int | None = None) -> dict[str, Tensor]:
        """The metrics over the first ``seen`` classes (default: all)."""
        seen = self.num_classes if seen is None else seen
        if not 0 < seen <= self.num_classes:
            raise ValueError(f"seen must be in [1, {self.num_classes}], got {seen}.")
        with self.sync_context(should_sync=self._to_sync, should_unsync=True):  # gathers ranks, as compute does
            probabilities = dim_zero_cat(self.probabilities)[:, :seen]
            targets = dim_zero_cat(self.targets)[:, :seen]
        precisions = [
            binary_average_precision(probabilities[:, c], targets[:, c], thresholds=None)
            for c in range(seen)
            if targets[:, c].any()
        ]
        mean_ap = torch.stack(precisions).mean() if precisions else torch.tensor(float("nan"), device=targets.device)
        predicted = probabilities > self.threshold
        positive = targets.bool()
        tp = (predicted & positive).sum(0).float()
        fp = (predicted & ~positive).sum(0).float()
        fn = (~predicted & positive).sum(0).float()
        return {"map": mean_ap, "cf1": f1(tp, fp, fn).mean(), "of1": f1(tp.sum(), fp.sum(), fn.sum())}
