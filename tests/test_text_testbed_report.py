"""The text testbed's report (benchmarks/text_testbed.py), on rows written by hand."""

import runpy
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "text_testbed.py"


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
