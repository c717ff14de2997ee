"""OOD detection on the offline testbed: ID = Fashion-MNIST's 5 base classes; OOD = real MNIST digits,
scikit-learn's digits, and Fashion-MNIST's 5 novel classes (near-OOD).

For each method recipe (``recipes/testbed/ood_<method>.yaml``) and seed, runs ``fit`` (methods that
train) and ``test`` through the command, each run in ``<workdir>/<method>/seed<k>/``; then reads every
run's logged test metrics (``metrics.csv``) and writes a Markdown table (mean ± std over seeds of ID
accuracy and of FPR95/AUROC per OOD set, MCM's convention), a chart of AUROC per set and method, and
seed 1's score histograms; every run's test metrics go to ``ood_runs.json`` there, from which a method whose run
folders are gone is still reported. Methods that train nothing (zero-shot MCM, NegLabel) do not depend on the
few-shot seed and run once.

    python -m lightning_prompts.testbed prepare --root data/testbed && python -m lightning_prompts.testbed prepare-ood
    python benchmarks/testbed_ood.py [--methods zeroshot neglabel coop] [--seeds 1 2 3] [--workdir outputs/testbed_ood]
    python benchmarks/testbed_ood.py --methods --report zeroshot neglabel coop    # tables from earlier runs
    python benchmarks/testbed_ood.py --methods local_prompt --report zeroshot neglabel coop local_prompt
    python -m lightning_prompts.testbed prepare-lapt   # LAPT's folders, then:
    python benchmarks/testbed_ood.py --methods lapt --report zeroshot neglabel coop local_prompt lapt
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "testbed"
SETS = ("mnist", "digits", "fashion_novel")
TITLES = {
    "zeroshot": "Zero-shot MCM",
    "neglabel": "NegLabel",
    "coop": "CoOp + MCM",
    "local_prompt": "Local-Prompt + R-MCM",
    "lapt": "LAPT",
}
UNTRAINED = {"zeroshot", "neglabel"}
#: methods whose training recipe is not their test recipe (LAPT trains on ID + negative-label folders)
TRAIN_RECIPES = {"lapt": "ood_lapt_train.yaml"}


def run(method: str, seed: int, workdir: Path) -> None:
    from lightning_prompts.cli import run_cli

    folder = workdir / method / f"seed{seed}"
    common = ["--config", str(RECIPES / f"ood_{method}.yaml"), "--seed_everything", str(seed)]
    common += ["--data.init_args.seed", str(seed), "--trainer.default_root_dir", str(folder)]
    if method not in UNTRAINED:
        train = ["--config", str(RECIPES / TRAIN_RECIPES[method])] + common[2:] if method in TRAIN_RECIPES else common
        run_cli(["fit", *train])
        common += ["--ckpt_path", "last"]
    run_cli(["test", *common])


def test_metrics(folder: Path) -> tuple[dict[str, float], Path]:
    """The test metrics of a run folder (its newest ``metrics.csv`` with test columns) and its log dir."""
    for path in sorted(folder.glob("**/metrics.csv"), key=lambda p: p.stat().st_mtime, reverse=True):
        with path.open() as handle:
            rows = [row for row in csv.DictReader(handle) if row.get("test/auroc")]
        if rows:
            return {
                key: float(value) for key, value in rows[-1].items() if key.startswith("test/") and value
            }, path.parent
    raise FileNotFoundError(f"no test metrics under {folder}")


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def report(methods: list[str], workdir: Path, out: Path) -> None:
    """The table, chart and histograms of ``methods``; each run's test metrics are kept in ``ood_runs.json``
    beside them, and a method whose run folders are gone is reported from there."""
    kept = out / "ood_runs.json"
    stored: dict[str, list[dict[str, float]]] = json.loads(kept.read_text()) if kept.exists() else {}
    results: dict[str, list[dict[str, float]]] = {}
    for method in methods:
        runs = sorted((workdir / method).glob("seed*"))
        if not runs and method in stored:
            results[method] = stored[method]
            continue
        results[method] = [test_metrics(folder)[0] for folder in runs]
        first = test_metrics(runs[0])[1] / "ood_scores.png"
        shutil.copyfile(first, out / f"ood_histogram_{method}.png")
    kept.write_text(json.dumps({**stored, **results}, indent=1) + "\n")
    header = "| method | seeds | ID acc | " + " | ".join(f"{s} FPR95 ↓ | {s} AUROC ↑" for s in SETS)
    header += " | mean FPR95 ↓ | mean AUROC ↑ |"
    lines = [header, "|" + "---|" * (5 + 2 * len(SETS))]
    for method, rows in results.items():
        cells = [TITLES.get(method, method), str(len(rows)), mean_std([r["test/acc"] for r in rows])]
        for name in SETS:
            cells += [
                mean_std([r[f"test/fpr95_{name}"] for r in rows]),
                mean_std([r[f"test/auroc_{name}"] for r in rows]),
            ]
        cells += [mean_std([r["test/fpr95"] for r in rows]), mean_std([r["test/auroc"] for r in rows])]
        lines.append("| " + " | ".join(cells) + " |")
    (out / "ood_table.md").write_text("\n".join(lines) + "\n")
    chart(results, out / "ood_results.png")
    print("\n".join(lines))


def chart(results: dict[str, list[dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 3.2))
    width = 0.8 / len(results)
    for offset, (method, rows) in enumerate(results.items()):
        means = [100 * statistics.mean(r[f"test/auroc_{name}"] for r in rows) for name in SETS]
        axis.bar([i + offset * width for i in range(len(SETS))], means, width, label=TITLES.get(method, method))
    axis.axhline(50, color="grey", linewidth=0.8, linestyle="--")
    axis.set_xticks([i + width * (len(results) - 1) / 2 for i in range(len(SETS))], SETS)
    axis.set_ylabel("AUROC (%)")
    axis.set_title("OOD detection on the testbed (ID: Fashion-MNIST base classes)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="*", default=["zeroshot", "neglabel", "coop"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--workdir", default="outputs/testbed_ood")
    parser.add_argument("--out", default=str(ROOT / "docs" / "testbed"))
    parser.add_argument("--report", nargs="*", default=None, help="methods to report (default: those run)")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    for method in args.methods:
        for seed in [1] if method in UNTRAINED else args.seeds:
            run(method, seed, workdir)
    report(args.report if args.report is not None else args.methods, workdir, Path(args.out))


if __name__ == "__main__":
    main()
