"""ClassificationEvaluator(macro_f1=True): the macro F1 over classes next to accuracy, against a hand computation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lightning_prompts.evaluation import ClassificationEvaluator


def hand_macro_f1(predicted, targets, classes):
    scores = []
    for c in range(classes):
        tp = sum(int(p == c and t == c) for p, t in zip(predicted, targets))
        fp = sum(int(p == c and t != c) for p, t in zip(predicted, targets))
        fn = sum(int(p != c and t == c) for p, t in zip(predicted, targets))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / classes


def evaluated(evaluator, names, stage, batch_size, seed):
    """The evaluator's report over 3 random batches, with the predicted and true classes it scored."""
    module = SimpleNamespace(classnames=names, classnames_for_training=names, device="cpu", datamodule=None,
                             set_classnames=lambda names: None)  # fmt: skip
    evaluator.start(module, stage)
    generator = torch.Generator().manual_seed(seed)
    predicted, targets = [], []
    for _ in range(3):  # batches
        scores = torch.randn(batch_size, len(names), generator=generator)
        labels = torch.randint(0, len(names), (batch_size,), generator=generator)
        evaluator.prepare(module, stage, 0)
        evaluator.update(module, None, scores, labels, stage, 0)
        predicted += scores.argmax(-1).tolist()
        targets += labels.tolist()
    return evaluator.finish(module, stage), predicted, targets, module


@pytest.mark.parametrize("stage", ["val", "test"])
def test_macro_f1_is_the_mean_of_the_per_class_f1(stage):
    report, predicted, targets, module = evaluated(ClassificationEvaluator(macro_f1=True), ["a", "b", "c"], stage, 7, 0)
    assert float(report[f"{stage}/macro_f1"]) == pytest.approx(hand_macro_f1(predicted, targets, 3), abs=1e-6)
    accuracy = sum(int(p == t) for p, t in zip(predicted, targets)) / len(targets)
    assert float(report[f"{stage}/acc"]) == pytest.approx(accuracy, abs=1e-6)
    plain = ClassificationEvaluator()
    plain.start(module, "val")
    plain.update(module, None, torch.eye(3), torch.arange(3), "val", 0)
    assert set(plain.finish(module, "val")) == {"val/acc"}


@pytest.mark.parametrize("stage", ["val", "test"])
def test_matthews_correlation_is_sklearns_and_picks_the_best_checkpoint(stage):
    """GLUE's CoLA metric, which DePT's code reports and selects on."""
    metrics = pytest.importorskip("sklearn.metrics")
    evaluator = ClassificationEvaluator(matthews=True)
    assert evaluator.monitor == ("val/mcc", "max")
    report, predicted, targets, _ = evaluated(evaluator, ["unacceptable", "acceptable"], stage, 9, 1)
    assert float(report[f"{stage}/mcc"]) == pytest.approx(metrics.matthews_corrcoef(targets, predicted), abs=1e-6)
