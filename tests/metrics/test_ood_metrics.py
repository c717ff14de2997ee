"""OOD metrics: a hand computation on a tied score set, and the official evaluation code's formulas
(the outlier-exposure code of MCM/Local-Prompt, OpenOOD's scikit-learn calls) re-computed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_prompts.metrics.ood import ood_metrics

# ID scores 5, 4, 4, 3, 2 and OOD scores 4, 2, 1, 1: ties inside ID and across ID and OOD.
ID_SCORES = torch.tensor([5.0, 4.0, 4.0, 3.0, 2.0])
OOD_SCORES = torch.tensor([4.0, 2.0, 1.0, 1.0])


def test_hand_computation_in_both_conventions():
    # thresholds from the top, ID positive: (tp, fp) = 5:(1,0) 4:(3,1) 3:(4,1) 2:(5,2) 1:(5,4)
    mcm = ood_metrics(ID_SCORES, OOD_SCORES, convention="mcm")
    # recall nearest 0.95 among 0.2, 0.6, 0.8, 1.0 is 1.0, where 2 of 4 OOD samples pass
    assert float(mcm["fpr95"]) == pytest.approx(0.5)
    # ID beats OOD in 16 of 20 pairs and ties in 1: (16 + 0.5) / 20
    assert float(mcm["auroc"]) == pytest.approx(16.5 / 20)
    # recall steps 0.2, 0.4, 0.2, 0.2 at precisions 1, 3/4, 4/5, 5/7
    assert float(mcm["aupr"]) == pytest.approx(0.2 + 0.4 * 0.75 + 0.2 * 0.8 + 0.2 * 5 / 7)

    # OOD positive on negated scores: (tp, fp) = -1:(2,0) -2:(3,1) -3:(3,2) -4:(4,4) -5:(4,5); OOD recall
    # first reaches 0.95 at -4, where 4 of 5 ID samples are flagged
    openood = ood_metrics(ID_SCORES, OOD_SCORES, convention="openood")
    assert float(openood["fpr95"]) == pytest.approx(0.8)
    assert float(openood["auroc"]) == pytest.approx(16.5 / 20)
    # trapezoids through (0,1) (.2,1) (.6,.75) (.8,.8) (1,5/7) (1,5/9)
    assert float(openood["aupr_in"]) == pytest.approx(0.2 + 0.4 * 1.75 / 2 + 0.2 * 1.55 / 2 + 0.2 * (0.8 + 5 / 7) / 2)
    # trapezoids through (0,1) (.5,1) (.75,.75) (.75,.6) (1,.5) (1,4/9)
    assert float(openood["aupr_out"]) == pytest.approx(0.5 + 0.25 * 1.75 / 2 + 0.25 * 1.1 / 2)


def outlier_exposure_fpr(id_scores: np.ndarray, ood_scores: np.ndarray, level: float = 0.95) -> float:
    """MCM/Local-Prompt's FPR: a curve over distinct thresholds, cut where recall first hits 1, read
    at the recall nearest ``level``, scanning from full recall down (numpy argmin keeps the first)."""
    scores = np.concatenate([id_scores, ood_scores])
    truth = np.concatenate([np.ones(len(id_scores), bool), np.zeros(len(ood_scores), bool)])
    order = np.argsort(scores, kind="mergesort")[::-1]
    scores, truth = scores[order], truth[order]
    ends = np.r_[np.where(np.diff(scores))[0], truth.size - 1]
    tps = np.cumsum(truth)[ends]
    fps = 1 + ends - tps
    recall = tps / tps[-1]
    cut = tps.searchsorted(tps[-1])
    recall, fps = np.r_[recall[cut::-1], 1], np.r_[fps[cut::-1], 0]
    return fps[np.argmin(np.abs(recall - level))] / len(ood_scores)


@pytest.mark.parametrize("seed", range(5))
def test_both_conventions_equal_the_official_formulas_on_tied_random_scores(seed):
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    id_scores = np.round(rng.normal(1.0, 1.0, 200), 1)  # rounding makes many ties
    ood_scores = np.round(rng.normal(0.0, 1.0, 150), 1)
    truth = np.r_[np.ones(200), np.zeros(150)]
    scores = np.r_[id_scores, ood_scores]
    ours = ood_metrics(torch.from_numpy(id_scores), torch.from_numpy(ood_scores), convention="mcm")
    assert float(ours["fpr95"]) == pytest.approx(outlier_exposure_fpr(id_scores, ood_scores), abs=1e-12)
    assert float(ours["auroc"]) == pytest.approx(metrics.roc_auc_score(truth, scores), abs=1e-12)
    assert float(ours["aupr"]) == pytest.approx(metrics.average_precision_score(truth, scores), abs=1e-12)

    # OpenOOD: OOD is positive on the negated score; FPR at the first TPR >= 0.95 of sklearn's ROC curve
    theirs = ood_metrics(torch.from_numpy(id_scores), torch.from_numpy(ood_scores), convention="openood")
    fpr, tpr, _ = metrics.roc_curve(1 - truth, -scores)
    assert float(theirs["fpr95"]) == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-12)
    assert float(theirs["auroc"]) == pytest.approx(metrics.auc(fpr, tpr), abs=1e-12)
    precision_in, recall_in, _ = metrics.precision_recall_curve(truth, scores)
    precision_out, recall_out, _ = metrics.precision_recall_curve(1 - truth, -scores)
    assert float(theirs["aupr_in"]) == pytest.approx(metrics.auc(recall_in, precision_in), abs=1e-12)
    assert float(theirs["aupr_out"]) == pytest.approx(metrics.auc(recall_out, precision_out), abs=1e-12)


def test_bad_scores_are_refused():
    with pytest.raises(ValueError, match="need ID and OOD scores"):
        ood_metrics(torch.tensor([1.0]), torch.tensor([]))
    with pytest.raises(ValueError, match="finite"):
        ood_metrics(torch.tensor([1.0, float("nan")]), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="Unknown OOD metric convention"):
        ood_metrics(ID_SCORES, OOD_SCORES, convention="sklearn")


def test_the_metric_gathers_batches_and_averages_over_sets():
    from lightning_prompts.metrics import OODDetection

    metric = OODDetection(["near", "far"], convention="openood")
    metric.update(ID_SCORES[:2], set_index=0)
    metric.update(ID_SCORES[2:], set_index=0)
    metric.update(OOD_SCORES, set_index=1)
    metric.update(OOD_SCORES - 10, set_index=2)  # far below every ID score: perfectly separated
    results = metric.compute()
    near = ood_metrics(ID_SCORES, OOD_SCORES, convention="openood")
    assert float(results["fpr95_near"]) == pytest.approx(float(near["fpr95"]))
    assert float(results["fpr95_far"]) == 0.0 and float(results["auroc_far"]) == 1.0
    assert float(results["auroc"]) == pytest.approx((float(near["auroc"]) + 1.0) / 2)
    with pytest.raises(IndexError, match="set_index 3"):
        metric.update(OOD_SCORES, set_index=3)


def test_docstring_examples_run():
    import doctest

    from lightning_prompts.metrics import ood

    assert doctest.testmod(ood).failed == 0


def test_metrics_and_histogram_scores_use_every_process_scores():
    """Two processes emulated with torchmetrics' own hooks: this process holds half of the scores and the
    gather returns the other half too; compute and all_scores see the whole set (after a
    synchronisation the list states are one tensor, which the metric must read as such)."""
    from lightning_prompts.metrics import OODDetection

    halves = {0: (ID_SCORES[:2], ID_SCORES[2:]), 1: (OOD_SCORES[:1], OOD_SCORES[1:])}

    def gather(tensor, group=None):  # what the other rank holds, by matching this rank's local state
        for mine, theirs in halves.values():
            if tensor.numel() == mine.numel() and torch.equal(tensor, mine.double()):
                return [tensor, theirs.double()]
        raise AssertionError(tensor)

    metric = OODDetection(["ood"], dist_sync_fn=gather, distributed_available_fn=lambda: True)
    metric.update(halves[0][0], set_index=0)
    metric.update(halves[1][0], set_index=1)
    whole = ood_metrics(ID_SCORES, OOD_SCORES)
    results = metric.compute()
    assert float(results["auroc_ood"]) == pytest.approx(float(whole["auroc"]))
    scores = metric.all_scores()
    assert torch.equal(scores["id"].sort().values, ID_SCORES.double().sort().values)
    assert torch.equal(scores["ood"].sort().values, OOD_SCORES.double().sort().values)
    assert metric.scores(0).numel() == 2  # back to this process's own after the synchronisation
