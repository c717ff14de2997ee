"""ELEVATER's N-point mean average precision, the official metric of VOC 2007 classification (``11point_mAP``).

ELEVATER (and MVLPT, which evaluates with a copy of it) scores a multi-label dataset with vision-evaluation's
``MeanAveragePrecisionNPointsEvaluator(11)``. For each class it takes scikit-learn's precision-recall curve of
the class's scores, then at each recall level ``t`` of ``linspace(1, 0, 11)`` the highest precision among the
curve's points with recall ``>= t``, and averages the 11 values; the classes with no positive image are dropped
and the rest averaged. Details that change the number and that we reproduce:

* the curve has one point per distinct score (tied images enter together), and scikit-learn appends the point
  (recall 0, precision 1), so the level ``t = 0`` always contributes 1: an AP is at least 1/11 (the VOC devkit's
  own 11-point AP does not do this, so the figures are not the devkit's);
* recall levels and recalls are compared in float64, as numpy builds ``linspace(1, 0, 11)`` (0.3 is
  0.30000000000000004 there, so a recall of exactly 3/10 does not reach it);
* the scores are whatever the method gives: MVLPT passes raw logits (any per-class monotone map — a sigmoid —
  leaves the figure unchanged; a softmax across classes does not).

The result is a fraction in ``[0, 1]`` (ELEVATER's tables print it times 100). Scores and targets are kept
until :meth:`compute`, as ``cat`` states that gather over DDP ranks.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def recall_levels(points: int) -> Tensor:
    """``numpy.linspace(1, 0, points)`` bit for bit (float64): ``arange · step + start``, the end set to 0."""
    levels = torch.arange(points, dtype=torch.float64) * (-1.0 / (points - 1)) + 1.0
    levels[-1] = 0.0
    return levels


def n_point_average_precision(scores: Tensor, positives: Tensor, points: int = 11) -> Tensor:
    """One class's N-point interpolated AP as ELEVATER computes it (see the module docstring).

    Args:
        scores: ``(N,)`` the class's score for each image.
        positives: ``(N,)`` bool, whether each image has the class (at least one must).
    """
    order = torch.argsort(scores.double(), descending=True, stable=True)
    ranked, hits = scores.double()[order], positives[order].double()
    # one curve point per distinct score: the last image of each run of tied scores
    last_of_run = torch.ones_like(ranked, dtype=torch.bool)
    last_of_run[:-1] = ranked[1:] != ranked[:-1]
    true_positives = torch.cumsum(hits, 0)[last_of_run]
    predicted = (torch.nonzero(last_of_run).squeeze(1) + 1).double()
    # the appended end point on the scores' device (a CPU constant failed every GPU evaluation of VOC 2007)
    precision = torch.cat([true_positives / predicted, true_positives.new_ones(1)])
    recall = torch.cat([true_positives / true_positives[-1], true_positives.new_zeros(1)])
    levels = recall_levels(points).to(scores.device)
    reaches = recall.unsqueeze(0) >= levels.unsqueeze(1)  # (points, curve points)
    return torch.where(reaches, precision.unsqueeze(0), torch.zeros_like(precision)).amax(dim=1).mean()


class NPointMeanAveragePrecision(Metric):
    """ELEVATER's ``11point_mAP`` (``points=11``): the mean over classes with a positive image of each class's
    N-point interpolated average precision.

    Example:
        >>> metric = NPointMeanAveragePrecision()
        >>> metric.update(torch.tensor([[0.9], [0.8], [0.7], [0.1]]), torch.tensor([[0], [1], [0], [1]]))
        >>> round(float(metric.compute()), 4)  # precision 1/2 at recall 0.1 ... 1.0, and 1 at recall 0
        0.5455
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, points: int = 11, **kwargs) -> None:
        super().__init__(**kwargs)
        if points < 2:
            raise ValueError(f"points must be at least 2, got {points}.")
        self.points = points
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, scores: Tensor, targets: Tensor) -> None:
        """Add a batch: ``scores`` ``(B, C)``, ``targets`` ``(B, C)`` multi-hot."""
        if scores.dim() != 2 or targets.shape != scores.shape:
            raise ValueError(
                f"scores and multi-hot targets must both be (B, C), got {tuple(scores.shape)} and "
                f"{tuple(targets.shape)}."
            )
        self.scores.append(scores.detach().double())
        self.targets.append(targets.detach() > 0)

    def compute(self) -> Tensor:
        if len(self.targets) == 0:  # a list of batches, or one tensor once synchronised over processes
            return torch.tensor(0.0, device=self.device)
        scores, targets = dim_zero_cat(self.scores), dim_zero_cat(self.targets)
        present = [c for c in range(scores.shape[1]) if bool(targets[:, c].any())]
        if not present:
            return torch.tensor(0.0, device=self.device)
        values = [n_point_average_precision(scores[:, c], targets[:, c], self.points) for c in present]
        return torch.stack(values).mean()
