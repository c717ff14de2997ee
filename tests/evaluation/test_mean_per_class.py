"""ELEVATER's mean per-class accuracy (MeanPerClassAccuracy, ClassificationEvaluator(mean_per_class=True)) against
an independent re-computation of the official procedure: drop the classes with no test image from targets and
scores, argmax over the rest, scikit-learn's balanced accuracy."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from lightning_prompts.evaluation import ClassificationEvaluator
from lightning_prompts.metrics import MeanPerClassAccuracy


def official_mean_per_class(scores: np.ndarray, targets: np.ndarray) -> float:
    one_hot = np.eye(scores.shape[1], dtype=int)[targets]
    kept = np.where(one_hot.any(axis=0))[0]  # ELEVATER's filter_out_zero_tgt
    return balanced_accuracy_score(one_hot[:, kept].argmax(1), scores[:, kept].argmax(1))


def scores_and_targets(seed: int, present: list[int], classes: int = 7, size: int = 60):
    generator = torch.Generator().manual_seed(seed)
    targets = torch.tensor(present)[torch.randint(0, len(present), (size,), generator=generator)]
    scores = torch.randn(size, classes, generator=generator)
    scores[torch.arange(size), targets] += 1.0  # better than chance, not perfect
    return scores, targets


@pytest.mark.parametrize("present", [[0, 1, 2, 3, 4, 5, 6], [0, 1, 3, 4, 6]])
def test_metric_equals_the_official_procedure_over_batches(present):
    scores, targets = scores_and_targets(0, present)
    metric = MeanPerClassAccuracy()
    for chunk in range(0, len(targets), 16):
        metric.update(scores[chunk : chunk + 16], targets[chunk : chunk + 16])
    expected = official_mean_per_class(scores.numpy(), targets.numpy())
    assert float(metric.compute()) == pytest.approx(expected, abs=1e-12)
    plain = (scores.argmax(1) == targets).double().mean()
    assert abs(float(metric.compute()) - float(plain)) > 1e-3  # a different number from accuracy here
    if len(present) < 7:  # predictions of absent classes fall back to the best present class, as ELEVATER does
        unrestricted = balanced_accuracy_score(targets.numpy(), scores.argmax(1).numpy())
        assert (scores.argmax(1)[:, None] == torch.tensor([2, 5])).any() and expected > unrestricted


@pytest.mark.parametrize("stage", ["val", "test"])
def test_evaluator_reports_it_next_to_accuracy_and_monitors_it(stage):
    names = list("abcdefg")
    module = SimpleNamespace(classnames=names, classnames_for_training=names, device="cpu", datamodule=None,
                             set_classnames=lambda names: None)  # fmt: skip
    evaluator = ClassificationEvaluator(mean_per_class=True)
    assert evaluator.monitor == ("val/mean_per_class", "max")
    scores, targets = scores_and_targets(1, [0, 2, 3, 5, 6])
    evaluator.start(module, stage)
    for chunk in range(0, len(targets), 16):
        evaluator.prepare(module, stage, 0)
        evaluator.update(module, None, scores[chunk : chunk + 16], targets[chunk : chunk + 16], stage, 0)
    report = evaluator.finish(module, stage)
    expected = official_mean_per_class(scores.numpy(), targets.numpy())
    assert float(report[f"{stage}/mean_per_class"]) == pytest.approx(expected, abs=1e-12)
    assert float(report[f"{stage}/acc"]) == pytest.approx(float((scores.argmax(1) == targets).double().mean()))
