"""SetwiseAccuracy and the base/novel harmonic mean."""

from __future__ import annotations

import pytest
import torch

from lightning_prompts.metrics import SetwiseAccuracy, harmonic_mean


def test_accuracy_per_set_and_harmonic_mean():
    metric = SetwiseAccuracy(["base", "novel"])
    metric.update(
        torch.tensor([[2.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0]]), torch.tensor([0, 1, 1, 1]), set_index=0
    )
    metric.update(torch.tensor([1, 0]), torch.tensor([1, 1]), set_index=1)
    result = metric.compute()
    assert result["base"].item() == pytest.approx(0.75)
    assert result["novel"].item() == pytest.approx(0.5)
    assert result["hm"].item() == pytest.approx(2 * 0.75 * 0.5 / 1.25)


def test_harmonic_mean_edge_cases():
    assert harmonic_mean(0.0, 0.0).item() == 0.0
    assert harmonic_mean(0.8, 0.8).item() == pytest.approx(0.8)
    # CoOp's published ViT-B/16 base-to-novel average: base 82.69, novel 63.22 -> HM 71.66
    assert harmonic_mean(82.69, 63.22).item() == pytest.approx(71.66, abs=0.01)


def test_single_set_has_no_hm_and_names_must_be_distinct():
    metric = SetwiseAccuracy()
    metric.update(torch.tensor([1]), torch.tensor([1]))
    assert metric.compute().keys() == {"test"}
    with pytest.raises(ValueError):
        SetwiseAccuracy(["a", "a"])


def test_multilabel_continual_metrics_score_seen_classes_as_the_official_protocol():
    from lightning_prompts.metrics import MultiLabelCLMetrics

    metric = MultiLabelCLMetrics(num_classes=3, threshold=0.8)
    probabilities = torch.tensor([[0.9, 0.2, 0.7], [0.85, 0.95, 0.1], [0.3, 0.5, 0.99], [0.1, 0.81, 0.2]])
    targets = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 0, 1], [0, 0, 0]])
    metric.update(probabilities[:2], targets[:2])
    metric.update(probabilities[2:], targets[2:])
    result = metric.scores(seen=2)
    # class 0: ranked 0.9 (+), 0.85 (-), 0.3 (+): AP = 0.5·1 + 0.5·(2/3); class 1 has no positive: left out
    assert result["map"].item() == pytest.approx(0.5 + 0.5 * 2 / 3)
    # > 0.8: class 0 predicts rows 0, 1 (TP 1, FP 1, FN 1): F1 0.5; class 1 predicts rows 1, 3 (FP 2): F1 0
    assert result["cf1"].item() == pytest.approx(0.25)
    # pooled: TP 1, FP 3, FN 1 → precision 1/4, recall 1/2, F1 1/3
    assert result["of1"].item() == pytest.approx(1 / 3)
    assert metric.compute()["map"].item() == pytest.approx((0.5 + 0.5 * 2 / 3 + 1.0) / 2)  # class 2 seen too
    with pytest.raises(ValueError, match="must both be"):
        metric.update(probabilities[:, :2], targets[:, :2])
