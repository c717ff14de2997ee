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
