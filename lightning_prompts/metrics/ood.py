"""Out-of-distribution detection metrics: FPR at 95% recall, AUROC and AUPR, in both conventions
the CLIP OOD papers use.

Every score here is an *ID score*: higher means "more in-distribution" (MCM's maximum softmax
probability, LAPT's ID probability mass). The two conventions differ in which side is the positive
class, so their FPR95s are different operating points: MCM's is the share of OOD samples accepted when
95 % of the ID samples are, OpenOOD's the share of ID samples rejected when 95 % of the OOD samples are.
They differ on almost any scores (ID ~ N(1.5, 1) against OOD ~ N(0, 2): 0.53 and 0.94), and also in how a
tie between thresholds is broken. Always say which one a number uses.

``"mcm"`` (MCM, GL-MCM, Local-Prompt; the outlier-exposure evaluation code they share):
    ID is positive. FPR95 is the share of OOD samples scored at or above the distinct-score
    threshold whose ID recall is *nearest* 0.95 (a tie between two thresholds goes to the higher
    recall); AUPR is the average precision with ID positive (``aupr``).
``"openood"`` (OpenOOD and OpenOOD-VLM, used by LAPT):
    OOD is positive and ranked by the negated score. FPR95 is the share of ID samples flagged as OOD
    at the first threshold whose OOD recall *reaches* 0.95; AUPR-In (ID positive) and AUPR-Out (OOD
    positive) are trapezoid areas under the precision-recall curves (``aupr_in``, ``aupr_out``).

AUROC is the same in both (the probability that a random ID sample scores above a random OOD one,
ties counting one half). All sums run in float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

Convention = Literal["mcm", "openood"]
CONVENTIONS = ("mcm", "openood")


def threshold_counts(scores: Tensor, positive: Tensor) -> tuple[Tensor, Tensor]:
    """True and false positive counts ``(T,)`` when everything scored at or above each distinct score
    is called positive, from the highest distinct score down (ties share one threshold)."""
    order = torch.argsort(scores, descending=True, stable=True)
    ranked, is_positive = scores[order], positive[order].to(torch.float64)
    last_of_each_value = torch.cat(
        [torch.nonzero(ranked[1:] != ranked[:-1]).flatten(), torch.tensor([ranked.numel() - 1], device=scores.device)]
    )
    true_positives = torch.cumsum(is_positive, 0)[last_of_each_value]
    false_positives = (last_of_each_value + 1).to(torch.float64) - true_positives
    return true_positives, false_positives


def auroc(id_scores: Tensor, ood_scores: Tensor) -> Tensor:
    """Area under the ROC curve with ID positive (trapezoids through the tied thresholds)."""
    true_positives, false_positives = threshold_counts(*_joined(id_scores, ood_scores))
    tpr = torch.cat([true_positives.new_zeros(1), true_positives / id_scores.numel()])
    fpr = torch.cat([false_positives.new_zeros(1), false_positives / ood_scores.numel()])
    return torch.trapezoid(tpr, fpr)


def fpr_at_recall(
    id_scores: Tensor, ood_scores: Tensor, recall: float = 0.95, convention: Convention = "mcm"
) -> Tensor:
    """The false positive rate at ``recall`` in ``convention`` (see the module docstring)."""
    _check_convention(convention)
    if convention == "mcm":
        true_positives, false_positives = threshold_counts(*_joined(id_scores, ood_scores))
        # the curve up to the first threshold that recalls every ID sample
        reached = int(torch.nonzero(true_positives == true_positives[-1])[0])
        recalls = true_positives[: reached + 1] / true_positives[-1]
        distance = (recalls - recall).abs()
        nearest = int(torch.nonzero(distance == distance.min())[-1])  # a tie goes to the higher recall
        return false_positives[nearest] / ood_scores.numel()
    # OOD positive, ranked by the negated ID score; the first threshold reaching the recall
    scores, is_ood = _joined(-ood_scores, -id_scores)
    true_positives, false_positives = threshold_counts(scores, is_ood)
    first = int(torch.nonzero(true_positives / ood_scores.numel() >= recall - 1e-12)[0])
    return false_positives[first] / id_scores.numel()


def average_precision(scores: Tensor, positive: Tensor) -> Tensor:
    """``Σ_n (R_n − R_{n−1}) P_n`` over the distinct thresholds (scikit-learn's average precision)."""
    true_positives, false_positives = threshold_counts(scores, positive)
    precision = true_positives / (true_positives + false_positives)
    recall = true_positives / true_positives[-1]
    steps = torch.diff(recall, prepend=recall.new_zeros(1))
    return (steps * precision).sum()


def trapezoid_precision_recall_area(scores: Tensor, positive: Tensor) -> Tensor:
    """Trapezoid area under the precision-recall curve through every distinct threshold and the point
    (recall 0, precision 1) (OpenOOD's AUPR-In/Out)."""
    true_positives, false_positives = threshold_counts(scores, positive)
    precision = torch.cat([true_positives.new_ones(1), true_positives / (true_positives + false_positives)])
    recall = torch.cat([true_positives.new_zeros(1), true_positives / true_positives[-1]])
    return torch.trapezoid(precision, recall)


def ood_metrics(
    id_scores: Tensor, ood_scores: Tensor, convention: Convention = "mcm", recall: float = 0.95
) -> dict[str, Tensor]:
    """``fpr95``, ``auroc`` and ``aupr`` (``"mcm"``) or ``aupr_in`` and ``aupr_out`` (``"openood"``).

    Example:
        >>> id_scores, ood_scores = torch.tensor([0.9, 0.8, 0.7, 0.4]), torch.tensor([0.8, 0.3, 0.2])
        >>> {k: round(float(v), 4) for k, v in ood_metrics(id_scores, ood_scores).items()}
        {'fpr95': 0.3333, 'auroc': 0.7917, 'aupr': 0.8042}
    """
    _check_convention(convention)
    id_scores, ood_scores = id_scores.detach().flatten().double(), ood_scores.detach().flatten().double()
    if id_scores.numel() == 0 or ood_scores.numel() == 0:
        raise ValueError(f"OOD metrics need ID and OOD scores; got {id_scores.numel()} and {ood_scores.numel()}.")
    if not (torch.isfinite(id_scores).all() and torch.isfinite(ood_scores).all()):
        raise ValueError("OOD scores must be finite.")
    metrics = {
        "fpr95": fpr_at_recall(id_scores, ood_scores, recall, convention),
        "auroc": auroc(id_scores, ood_scores),
    }
    if convention == "mcm":
        metrics["aupr"] = average_precision(*_joined(id_scores, ood_scores))
    else:
        metrics["aupr_in"] = trapezoid_precision_recall_area(*_joined(id_scores, ood_scores))
        metrics["aupr_out"] = trapezoid_precision_recall_area(*_joined(-ood_scores, -id_scores))
    return metrics


def _joined(positive_scores: Tensor, negative_scores: Tensor) -> tuple[Tensor, Tensor]:
    scores = torch.cat([positive_scores, negative_scores])
    positive = torch.cat(
        [torch.ones_like(positive_scores, dtype=torch.bool), torch.zeros_like(negative_scores, dtype=torch.bool)]
    )
    return scores, positive


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"Unknown OOD metric convention {convention!r}; choose one of {list(CONVENTIONS)}.")


class OODDetection(Metric):
    """Collects ID scores and the scores of each named OOD set; ``compute()`` gives ``ood_metrics`` per
    set (keys ``<metric>_<set>``) and their mean over the sets (keys ``<metric>``). Scores are
    gathered from every process before computing (the metrics are not averages of per-process values).

    Args:
        ood_set_names: the OOD sets, in the order of their ``set_index`` (1, 2, …; 0 is ID).
        convention: ``"mcm"`` or ``"openood"`` (see :mod:`lightning_prompts.metrics.ood`).

    Example:
        >>> metric = OODDetection(["mnist"])
        >>> metric.update(torch.tensor([0.9, 0.8, 0.7, 0.4]), set_index=0)
        >>> metric.update(torch.tensor([0.8, 0.3, 0.2]), set_index=1)
        >>> results = metric.compute()
        >>> {k: round(float(v), 4) for k, v in results.items() if k.endswith("_mnist")}
        {'fpr95_mnist': 0.3333, 'auroc_mnist': 0.7917, 'aupr_mnist': 0.8042}
        >>> sorted(results)  # and the means over the OOD sets
        ['aupr', 'aupr_mnist', 'auroc', 'auroc_mnist', 'fpr95', 'fpr95_mnist']
    """

    is_differentiable = False
    full_state_update = False

    def __init__(self, ood_set_names: Sequence[str], convention: Convention = "mcm", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _check_convention(convention)
        if not ood_set_names:
            raise ValueError("OODDetection needs at least one OOD set.")
        self.ood_set_names, self.convention = list(ood_set_names), convention
        for index in range(len(self.ood_set_names) + 1):
            self.add_state(f"scores_{index}", default=[], dist_reduce_fx="cat")

    def update(self, scores: Tensor, set_index: int) -> None:
        """Add the ID scores (``set_index=0``) or those of OOD set ``set_index``."""
        if not 0 <= set_index <= len(self.ood_set_names):
            raise IndexError(f"set_index {set_index} is not 0 (ID) or one of the {len(self.ood_set_names)} OOD sets.")
        getattr(self, f"scores_{set_index}").append(scores.detach().flatten().to(torch.float64))

    def scores(self, set_index: int) -> Tensor:
        """The scores of a set so far (ID for 0), concatenated: this process's, or every process's
        inside ``compute`` and :meth:`all_scores`."""
        value = getattr(self, f"scores_{set_index}")
        if isinstance(value, Tensor):  # synchronised: torchmetrics gathered the list into one tensor
            return value
        return dim_zero_cat(value) if value else torch.zeros(0, dtype=torch.float64, device=self.device)

    def all_scores(self) -> dict[str, Tensor]:
        """``{"id": …, <set>: …}`` with the scores of every process (a collective call: every process
        must make it)."""
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn, distributed_available=self.distributed_available_fn, should_unsync=True
        ):
            return {name: self.scores(i).clone() for i, name in enumerate(["id", *self.ood_set_names])}

    def compute(self) -> dict[str, Tensor]:
        return self.metrics_of({name: self.scores(i) for i, name in enumerate(["id", *self.ood_set_names])})

    def metrics_of(self, scores: dict[str, Tensor]) -> dict[str, Tensor]:
        """What :meth:`compute` returns, for scores already gathered (:meth:`all_scores`)."""
        per_set = {name: ood_metrics(scores["id"], scores[name], self.convention) for name in self.ood_set_names}
        results = {f"{metric}_{name}": value for name, metrics in per_set.items() for metric, value in metrics.items()}
        for metric in next(iter(per_set.values())):
            results[metric] = torch.stack([metrics[metric] for metrics in per_set.values()]).mean()
        return results
