"""The benchmarks' reports (text_testbed.py, testbed_ood.py, post_testbed.py), on results written by hand."""

import json
import runpy
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPT = BENCHMARKS / "text_testbed.py"


def row(method: str, seed: int, accuracy: float, step_ms: float, mib: float) -> dict:
    return {"task": "sentiment", "method": method, "seed": seed, "accuracy": accuracy, "prompt_parameters": 9216,
            "step_ms": step_ms, "activations_mib": mib}  # fmt: skip


def test_report_divides_by_prompt_tuning_and_survives_a_subset_without_it(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # as when run as a script: its folder on the path
    report = runpy.run_path(str(SCRIPT))["report"]
    rows = [row("PromptTuning", 0, 0.70, 100.0, 50.0), row("PromptTuning", 1, 0.72, 120.0, 50.0),
            row("DePT", 0, 0.74, 80.0, 40.0), row("DePT", 1, 0.76, 90.0, 40.0)]  # fmt: skip
    report(rows, tmp_path)
    lines = (tmp_path / "results.md").read_text().splitlines()
    # DePT: step 85 / 110 ms, activations 40 / 50 MiB; accuracy 75.0 ± sd(74, 76) = 1.4
    assert lines[3] == "| sentiment | DePT | 75.0 ± 1.4 | 9,216 | 0.77 | 0.80 |"
    assert (tmp_path / "accuracy.png").stat().st_size > 0

    subset = tmp_path / "subset"  # `--methods DePT` into a fresh folder: no PromptTuning row
    subset.mkdir()
    report(rows[2:], subset)
    assert (subset / "results.md").read_text().splitlines()[2] == "| sentiment | DePT | 75.0 ± 1.4 | 9,216 | – | – |"


def ood_run(acc: float, auroc: float) -> dict:
    metrics = {"test/acc": acc, "test/fpr95": 1 - auroc, "test/auroc": auroc}
    for name in ("mnist", "digits", "fashion_novel"):
        metrics |= {f"test/fpr95_{name}": 1 - auroc, f"test/auroc_{name}": auroc}
    return metrics


def test_ood_report_reads_methods_whose_run_folders_are_gone_from_the_kept_metrics(tmp_path):
    report = runpy.run_path(str(BENCHMARKS / "testbed_ood.py"))["report"]
    kept = {"lapt": [ood_run(0.5, 0.9), ood_run(0.52, 0.94)], "neglabel": [ood_run(0.36, 0.65)]}
    (tmp_path / "ood_runs.json").write_text(json.dumps(kept))
    report(["neglabel", "lapt"], tmp_path / "no_runs", tmp_path)
    lines = (tmp_path / "ood_table.md").read_text().splitlines()
    assert lines[2].startswith("| NegLabel | 1 | 36.0 | 35.0 | 65.0 |")
    assert lines[3].startswith("| LAPT | 2 | 51.0 ± 1.4 | 8.0 ± 2.8 | 92.0 ± 2.8 |")
    assert lines[3].endswith("| 8.0 ± 2.8 | 92.0 ± 2.8 |")
    assert json.loads((tmp_path / "ood_runs.json").read_text()) == kept
    assert (tmp_path / "ood_results.png").stat().st_size > 0


def test_post_report_names_the_students_layers_and_reads_rows_from_before_the_flag(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    report = runpy.run_path(str(BENCHMARKS / "post_testbed.py"))["report"]
    distilled = {"stage": "distillation", "steps": 100, "step_s": 12.8, "trainable_parameters": 33.4e6,
                 "val_ce": 2.64, "val_loss": 3.56}  # fmt: skip
    rows = [distilled, {"stage": "zero-shot Gemma", "accuracy": 0.73},
            {"stage": "source (student)", "seed": 0, "accuracy": 0.5, "step_s": 1.8},
            {"stage": "source (student)", "seed": 1, "accuracy": 0.6, "step_s": 2.0}]  # fmt: skip
    report(rows, tmp_path)
    lines = (tmp_path / "results.md").read_text().splitlines()
    assert lines[2] == "| zero-shot Gemma | 0.730 | (no training) |  |"
    assert lines[3] == "| source (student) | 0.550 ± 0.071 | 0.500, 0.600 | 1.90 s |"
    assert lines[-1].startswith("Distillation into Gemma's first 3 and last 3 of 18 layers: 100 steps, 12.8 s")
    report([distilled | {"layers": [6, 6]}], tmp_path)
    assert "first 6 and last 6 of 18 layers" in (tmp_path / "results.md").read_text()


def test_saved_bytes_counts_what_a_step_keeps_and_then_frees_it(monkeypatch):
    """benchmarks/saved_memory.py: the storages a graph saves for backward, the weights left out; the graph is
    released afterwards. Its pack hook once returned the tensor itself: a saved output then held its own
    grad_fn, a cycle the garbage collector cannot see, and the reference's 17.8 GiB graph stayed allocated
    for the rest of coop_step.py (inflating the first GPU run's peak memory)."""
    import gc
    import weakref

    import torch

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    saved_bytes = runpy.run_path(str(BENCHMARKS / "saved_memory.py"))["saved_bytes"]
    layer = torch.nn.Linear(64, 64)
    outputs = []

    def loss() -> torch.Tensor:
        hidden = layer(torch.randn(32, 64)).relu()  # saved: the input (for the weight's gradient), relu's output
        outputs.append(weakref.ref(hidden))
        return hidden.sum()

    assert saved_bytes(loss, layer) == 2 * 32 * 64 * 4
    gc.collect()
    assert outputs[0]() is None


def test_dispatched_ops_counts_forward_and_backward_kernels_not_views():
    """benchmarks/dispatched_ops.py, whose counts coop_step.py --count-ops prints."""
    import torch

    dispatched_ops = runpy.run_path(str(BENCHMARKS / "dispatched_ops.py"))["dispatched_ops"]
    weights = torch.randn(3, 4, requires_grad=True)
    counts = dispatched_ops(lambda: (weights.view(12).t().exp() * 2).sum())
    # forward: exp, mul, sum; backward: the seed gradient (ones_like), sum's expand (a view), mul by 2, mul by
    # exp's output; the views (view, t, expand) launch nothing
    assert counts == {"exp": 1, "mul": 3, "sum": 1, "ones_like": 1}
    assert weights.grad is not None and torch.allclose(weights.grad, 2 * weights.detach().exp())


@pytest.mark.slow  # about 15 s of CPU, mostly reading the corpus; the contract test pins the behaviour in CI
def test_gradient_checkpointing_benchmark_runs_and_reports_equal_gradients(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports its sibling modules
    monkeypatch.setattr("sys.argv", ["gradient_checkpointing.py", "--model", "tiny", "--rounds", "1", "--batch", "8"])
    runpy.run_path(str(BENCHMARKS / "gradient_checkpointing.py"), run_name="__main__")
    printed = capsys.readouterr().out
    assert printed.count("gradient difference 0.0e+00") == 2  # both methods, bitwise
    ratios = [float(line.split(": ")[1]) for line in printed.splitlines() if line.startswith("mem_ratio_")]
    assert len(ratios) == 2 and all(ratio > 2 for ratio in ratios)


def test_half_precision_weights_benchmark_reports_half_the_weights_and_fewer_saved_bytes(monkeypatch, capsys):
    """On the tiny towers (about 8 s): bfloat16 weights are half the bytes, and a step keeps less for backward
    (no autocast copy of the frozen weights in the prompt's gradient path)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr("sys.argv", ["half_precision_weights.py", "--model", "tiny", "--rounds", "1"])
    runpy.run_path(str(BENCHMARKS / "half_precision_weights.py"), run_name="__main__")
    printed = capsys.readouterr().out

    def ratios(prefix: str) -> list[float]:
        return [float(line.split(": ")[1]) for line in printed.splitlines() if line.startswith(prefix)]

    assert ratios("weights_ratio_") == [2.0, 2.0, 2.0]
    assert len(ratios("mem_ratio_")) == 3 and all(ratio > 1.1 for ratio in ratios("mem_ratio_"))
