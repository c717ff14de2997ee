"""Base-to-novel results of CLIP prompt methods on the offline testbed (stand-in CLIP, Fashion-MNIST).

For every method recipe in ``recipes/testbed/`` and every seed, trains on the 5 base classes (16
shots) and tests on base and novel classes; writes per-seed logs, a Markdown table (mean ± std over
seeds of base, novel and harmonic mean; HM also from the seed-averaged accuracies, as papers report
it) and a bar chart. Zero-shot does not depend on the few-shot seed, so it runs once; it is also
reported on all 10 classes at once.

    python -m lightning_prompts.testbed prepare --root data/testbed      # once
    python benchmarks/testbed_base_to_novel.py [--methods zeroshot coop] [--seeds 1 2 3] [--out docs/testbed]
    python benchmarks/testbed_base_to_novel.py --methods maple --report zeroshot coop maple   # reuse earlier logs
    python benchmarks/testbed_base_to_novel.py --methods --report zeroshot coop maple coprompt dapt   # report only
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import time
from pathlib import Path

from lightning_prompts import registry
from lightning_prompts.cli import run_cli
from lightning_prompts.metrics import harmonic_mean
from lightning_prompts.recipes import merged_section, model_class

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "testbed"


def label(method: str) -> str:
    """How the table names a testbed recipe: its method's registry title, and "(text branch)" when the
    recipe switches the visual prompts off (the stand-in's image tower is a CNN)."""
    recipe = RECIPES / f"{method}.yaml"
    title = registry.get(model_class(recipe) or "").title
    model = merged_section(recipe, "model") or {}
    text_only = (model.get("init_args") or {}).get("vision_prompts") is False
    callbacks = (merged_section(recipe, "trainer") or {}).get("callbacks") or []
    cached = any(str(c.get("class_path", "")).endswith("FrozenFeatureCache") for c in callbacks)
    augmented = ((merged_section(recipe, "data") or {}).get("init_args") or {}).get("augmentation") == "clip"
    marks = (("text branch", text_only), ("crops and flips", augmented), ("cached image features", cached))
    notes = [note for note, present in marks if present]
    return f"{title} ({', '.join(notes)})" if notes else title


def run_method(method: str, seed: int, workdir: Path, logs: Path, data_root: str) -> dict[str, float]:
    """Fit (unless zero-shot) and test one seed; return the test metrics and copy the logs."""
    recipe = str(RECIPES / f"{method}.yaml")
    folder = workdir / method / f"seed{seed}"
    common = [
        "--config",
        recipe,
        "--seed_everything",
        str(seed),
        "--data.init_args.seed",
        str(seed),
        "--data.init_args.root",
        data_root,
        "--trainer.default_root_dir",
        str(folder),
        "--trainer.enable_progress_bar",
        "false",
    ]
    start = time.perf_counter()
    checkpoint: list[str] = []
    timing: dict[str, float] = {}
    if method != "zeroshot":
        fit = run_cli(
            [
                "fit",
                *common,
                "--trainer.logger",
                "lightning.pytorch.loggers.CSVLogger",
                "--trainer.logger.save_dir",
                str(folder),
            ]
        )
        checkpoint = ["--ckpt_path", "last"]  # the last epoch, as the Dassl protocol evaluates
        fitted = time.perf_counter()
        timing = {"fit_minutes": (fitted - start) / 60, "epoch_seconds": (fitted - start) / fit.trainer.current_epoch}
        shutil.copy(Path(fit.trainer.logger.log_dir) / "metrics.csv", logs / f"{method}_seed{seed}_fit.csv")
    test = run_cli(["test", *common, "--trainer.logger", "false", *checkpoint])
    metrics = {k: float(v) for k, v in test.trainer.callback_metrics.items() if k.startswith("test/")}
    metrics["minutes"] = (time.perf_counter() - start) / 60
    metrics.update(timing)
    (logs / f"{method}_seed{seed}_test.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def load_runs(method: str, logs: Path) -> list[dict[str, float]]:
    """The per-seed test metrics an earlier run wrote."""
    return [json.loads(path.read_text()) for path in sorted(logs.glob(f"{method}_seed*_test.json"))]


def zero_shot_all_classes(workdir: Path, data_root: str) -> float:
    test = run_cli(
        [
            "test",
            "--config",
            str(RECIPES / "zeroshot.yaml"),
            "--data.init_args.subsample_classes",
            "all",
            "--data.init_args.root",
            data_root,
            "--trainer.default_root_dir",
            str(workdir / "zeroshot_all"),
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    return float(test.trainer.callback_metrics["test/acc"])


def summarise(results: dict[str, list[dict[str, float]]]) -> list[dict[str, str | float]]:
    rows = []
    for method, runs in results.items():
        row: dict[str, str | float] = {"method": label(method), "seeds": len(runs)}
        for key in ("acc_base", "acc_novel", "hm"):
            values = [100 * run[f"test/{key}"] for run in runs]
            row[key] = statistics.mean(values)
            row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        row["hm_of_means"] = float(harmonic_mean(row["acc_base"], row["acc_novel"]))
        row["minutes"] = statistics.mean(run["minutes"] for run in runs)
        timed = [run["epoch_seconds"] for run in runs if "epoch_seconds" in run]
        row["epoch_seconds"] = statistics.mean(timed) if timed else float("nan")
        rows.append(row)
    return rows


def write_table(rows: list[dict[str, str | float]], all_classes: float | None, path: Path) -> None:
    lines = [
        "| method | seeds | base | novel | HM (per seed) | HM of means | minutes per run | s per epoch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [f"{row[k]:.1f} ± {row[k + '_std']:.1f}" for k in ("acc_base", "acc_novel", "hm")]
        seconds = float(row["epoch_seconds"])
        epoch = "—" if seconds != seconds else f"{seconds:.1f}"  # not timed (zero-shot, older logs)
        lines.append(
            f"| {row['method']} | {row['seeds']} | {' | '.join(cells)} | {row['hm_of_means']:.1f} "
            f"| {row['minutes']:.1f} | {epoch} |"
        )
    if all_classes is not None:
        lines.append("")
        lines.append(f"Zero-shot on all 10 classes at once: **{100 * all_classes:.1f}%** (chance 10%).")
    path.write_text("\n".join(lines) + "\n")


def write_chart(rows: list[dict[str, str | float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys, names = ("acc_base", "acc_novel", "hm"), ("base", "novel", "HM")
    width = 0.8 / len(rows)
    figure, axis = plt.subplots(figsize=(7.5, 3.5))
    for index, row in enumerate(rows):
        positions = [k + index * width for k in range(len(keys))]
        axis.bar(
            positions,
            [row[k] for k in keys],
            width,
            yerr=[row[k + "_std"] for k in keys],
            capsize=3,
            label=str(row["method"]),
        )
    axis.set_xticks([k + width * (len(rows) - 1) / 2 for k in range(len(keys))], names)
    axis.set_ylabel("accuracy (%)")
    axis.axhline(20, color="grey", linewidth=0.8, linestyle="--", label="chance (5 classes)")
    axis.set_title("Stand-in CLIP on Fashion-MNIST, base-to-novel, 16 shots")
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, not over them
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="*", default=["zeroshot", "coop"], help="methods to run (none: report only)")
    parser.add_argument("--report", nargs="+", default=None, help="methods in the table (default: --methods)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--data-root", default="data/testbed")
    parser.add_argument("--workdir", default="outputs/testbed")
    parser.add_argument("--out", default="docs/testbed")
    args = parser.parse_args()
    out, workdir = Path(args.out), Path(args.workdir)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for method in args.methods:
        seeds = args.seeds[:1] if method == "zeroshot" else args.seeds  # zero-shot ignores the few-shot seed
        runs = [run_method(method, seed, workdir, logs, args.data_root) for seed in seeds]
        print(method, runs, flush=True)
    if "zeroshot" in args.methods:
        all_classes = {"test/acc": zero_shot_all_classes(workdir, args.data_root)}
        (logs / "zeroshot_all_classes_test.json").write_text(json.dumps(all_classes, indent=1))
    all_classes_file = logs / "zeroshot_all_classes_test.json"
    all_classes = json.loads(all_classes_file.read_text())["test/acc"] if all_classes_file.is_file() else None
    rows = summarise({method: load_runs(method, logs) for method in (args.report or args.methods)})
    write_table(rows, all_classes, out / "results_table.md")
    write_chart(rows, out / "results.png")
    with (out / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print((out / "results_table.md").read_text())


if __name__ == "__main__":
    main()
