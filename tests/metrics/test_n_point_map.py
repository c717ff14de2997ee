"""ELEVATER's 11-point mAP (NPointMeanAveragePrecision) against an independent re-computation of
vision-evaluation's MeanAveragePrecisionNPointsEvaluator: scikit-learn's precision-recall curve, recall levels
from numpy's linspace(1, 0, 11), the running maximum of precision over the levels, classes without a positive
dropped."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import precision_recall_curve

from lightning_prompts.metrics import NPointMeanAveragePrecision
from lightning_prompts.metrics.n_point_map import recall_levels


def official_n_point_map(scores: np.ndarray, targets: np.ndarray, points: int = 11) -> float:
    values = []
    for c in range(targets.shape[1]):
        if not targets[:, c].any():  # filter_out_zero_tgt
            continue
        precision, recall, _ = precision_recall_curve(targets[:, c], scores[:, c])
        best, index, interpolated = 0.0, 0, []
        for level in np.linspace(1, 0, points, endpoint=True):  # recall falls along sklearn's curve
            while index < len(recall) and level <= recall[index]:
                best = max(best, precision[index])
                index += 1
            interpolated.append(best)
        values.append(np.mean(interpolated))
    return float(np.mean(values))


def multilabel_batch(seed: int, size: int = 80, classes: int = 6, quantise: bool = False):
    generator = torch.Generator().manual_seed(seed)
    targets = (torch.rand(size, classes, generator=generator) < 0.3).long()
    targets[:, -1] = 0  # a class with no positive image: dropped from the mean
    scores = torch.randn(size, classes, generator=generator) + 1.2 * targets
    if quantise:  # many tied scores: tied images enter the curve together
        scores = (scores * 2).round() / 2
    return scores, targets


def test_recall_levels_are_numpys_linspace_bit_for_bit():
    for points in (2, 11, 101):
        assert np.array_equal(recall_levels(points).numpy(), np.linspace(1, 0, points))


def test_the_official_packages_own_test_case():
    # vision-evaluation's test of MeanAveragePrecisionNPointsEvaluator(11): 0.7406926406926406
    targets = torch.tensor([[1, 0], [0, 1], [0, 1], [0, 1], [1, 0], [1, 0], [0, 1], [0, 1], [0, 1], [1, 0]])
    first = [1, 0, 0.5, 0.1, 0.44, 0.09, 0.91, 0.37, 0.34, 0.89]
    scores = torch.tensor([[p, 1 - p] for p in first], dtype=torch.float64)
    metric = NPointMeanAveragePrecision()
    metric.update(scores, targets)
    assert float(metric.compute()) == pytest.approx(0.7406926406926406, abs=1e-12)


@pytest.mark.parametrize("quantise", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_the_official_procedure_in_batches(seed, quantise):
    scores, targets = multilabel_batch(seed, quantise=quantise)
    metric = NPointMeanAveragePrecision()
    for start in range(0, len(scores), 16):  # batch by batch, as an evaluator feeds it
        metric.update(scores[start : start + 16], targets[start : start + 16])
    expected = official_n_point_map(scores.double().numpy(), targets.numpy())
    assert float(metric.compute()) == pytest.approx(expected, abs=1e-12)


def test_zero_level_always_counts_precision_one():
    # one positive ranked last of four: precision 1/4 at every recall level but 0, where sklearn's appended point
    # gives 1 (the VOC devkit would give 0.25)
    metric = NPointMeanAveragePrecision()
    metric.update(torch.tensor([[0.9], [0.8], [0.7], [0.1]]), torch.tensor([[0], [0], [0], [1]]))
    assert float(metric.compute()) == pytest.approx((10 * 0.25 + 1.0) / 11, abs=1e-12)


def test_a_per_class_monotone_map_leaves_it_unchanged_and_a_softmax_does_not():
    scores, targets = multilabel_batch(3)
    values = []
    for transformed in (scores, torch.sigmoid(scores.double()), scores.softmax(dim=1)):
        metric = NPointMeanAveragePrecision()
        metric.update(transformed, targets)
        values.append(float(metric.compute()))
    assert values[0] == pytest.approx(values[1], abs=1e-12) and abs(values[0] - values[2]) > 1e-4


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="multi-hot targets"):
        NPointMeanAveragePrecision().update(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))
