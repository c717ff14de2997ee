"""MVLPT on the offline testbed: a prompt trained on several source tasks at once, transferred to a few-shot target.

Source stage (``recipes/testbed/mvlpt_source.yaml``): one CoOp context on Fashion-MNIST's five base classes, MNIST
and scikit-learn's digits in a merged label space, 16 shots each, seeds 1, 2, 3, averaged into the source prompt
(``lightning-prompts average``), as MVLPT does; and, to tell the multitask source from a single one, the same on
Fashion-MNIST's base classes alone (50 epochs, the testbed's CoOp). Target stage: Fashion-MNIST's five novel
classes, 1 and 4 shots, seeds 1, 2, 3, CoOp from each source prompt (``mvlpt_target.yaml``) against CoOp from
"a photo of a" (``mvlpt_target_coop.yaml``), the words the source prompts started from; plus zero-shot and each
source prompt without target tuning. 1 shot trains 50 epochs, 4 shots 100 (CoOp's schedule). The targets test the
first ``--per-class`` (100) test images of each class. Resumable; writes ``results.json``, ``results.md`` and
``results.png`` to ``--out``:

    python -m lightning_prompts.testbed prepare --root data/testbed           # once
    python -m lightning_prompts.testbed prepare-digits --root data/testbed    # once
    python benchmarks/testbed_mvlpt.py --out docs/testbed/mvlpt
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

from testbed_report import write_report

from lightning_prompts.cli import run_cli
from lightning_prompts.export.average import average_prompt_files
from lightning_prompts.testbed.fashion_mnist import write_test_subset

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "testbed"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.logger", "false"]
EPOCHS = {1: 50, 4: 100}  # CoOp's epochs for 1 and 4 shots
ARMS = {
    "coop": 'CoOp from "a photo of a"',
    "single": "CoOp from the Fashion-MNIST-base prompt (one source task)",
    "mvlpt": "MVLPT: CoOp from the multitask source prompt",
}
SOURCES = {"mvlpt": [], "single": ["--data.init_args.tasks", "[fashion_mnist]", "--trainer.max_epochs", "50"]}


def train_source(source: str, seed: int, data_root: Path, workdir: Path) -> dict:
    """Fit one seed of a source prompt and export it; return its validation accuracy per task."""
    start = time.perf_counter()
    fit = run_cli(
        ["fit", "--config", str(RECIPES / "mvlpt_source.yaml"), *SOURCES[source], "--seed_everything", str(seed),
         "--data.init_args.seed", str(seed), "--data.init_args.root", str(data_root),
         "--trainer.default_root_dir", str(workdir / f"{source}_source{seed}"), *QUIET]
    )  # fmt: skip
    fit.model.export_prompt(workdir / f"{source}_source_seed{seed}.safetensors")
    metrics = {k: 100 * float(v) for k, v in fit.trainer.callback_metrics.items() if k.startswith("val/acc")}
    return {"stage": "source", "source": source, "seed": seed, **metrics, "minutes": (time.perf_counter() - start) / 60}


def test_target(arm: str, shots: int, seed: int, root: Path, workdir: Path) -> dict:
    """Fit (``shots`` > 0) and test one target run; ``shots`` 0 tests the untrained module."""
    recipe = {"zeroshot": "zeroshot.yaml", "coop": "mvlpt_target_coop.yaml"}.get(arm, "mvlpt_target.yaml")
    common = ["--config", str(RECIPES / recipe), "--seed_everything", str(seed), "--data.init_args.seed", str(seed),
              "--data.init_args.root", str(root), "--data.init_args.subsample_classes", "new",
              "--trainer.default_root_dir", str(workdir / f"{arm}_{shots}shot_seed{seed}"), *QUIET]  # fmt: skip
    if arm in SOURCES:
        common += ["--model.init_args.prompt_init", str(workdir / f"{arm}_source.safetensors")]
    start = time.perf_counter()
    checkpoint: list[str] = []
    if shots:
        run_cli(["fit", *common, "--data.init_args.shots", str(shots), "--trainer.max_epochs", str(EPOCHS[shots])])
        checkpoint = ["--ckpt_path", "last"]  # the last epoch, as the Dassl protocol evaluates
    fitted = time.perf_counter()
    test = run_cli(["test", *common, *checkpoint])
    return {"stage": "target", "arm": arm, "shots": shots, "seed": seed,
            "accuracy": 100 * float(test.trainer.callback_metrics["test/acc"]),
            "fit_minutes": (fitted - start) / 60, "minutes": (time.perf_counter() - start) / 60}  # fmt: skip


def mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.1f}"


def report(rows: list[dict], out: Path, per_class: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = [r for r in rows if r["stage"] == "source"]
    targets = [r for r in rows if r["stage"] == "target"]
    lines = [
        "Source stage (16 shots per class; validation accuracy on each task's own classes, %, chance 20/10/10):",
        "",
        "| source | seed | Fashion-MNIST base | MNIST | digits | minutes |",
        "|---|---|---|---|---|---|",
    ]
    tasks = ("val/acc_fashion_mnist", "val/acc_mnist", "val/acc_digits")
    for r in sources:
        cells = [f"{r[key]:.1f}" if key in r else "—" for key in tasks]
        if r["source"] == "single":  # one task: its accuracy is the whole validation accuracy
            cells[0] = f"{r['val/acc']:.1f}"
        lines.append(f"| {r['source']} | {r['seed']} | " + " | ".join(cells) + f" | {r['minutes']:.1f} |")
    untrained = {r["arm"]: r["accuracy"] for r in targets if r["shots"] == 0}
    lines += [
        "",
        f"Target: Fashion-MNIST's 5 novel classes, {per_class} test images per class (accuracy %, mean ± sd, 3 seeds):",
        "",
        "| method | 0 shots | 1 shot | 4 shots | fit minutes (4 shots) |",
        "|---|---|---|---|---|",
        f'| zero-shot ("a photo of a {{}}.") | {untrained.get("zeroshot", math.nan):.1f} | — | — | — |',
    ]
    chart = {}
    for arm, name in ARMS.items():
        cells = [f"{untrained[arm]:.1f}" if arm in untrained else "—"]
        chart[name] = []
        for shots in EPOCHS:
            values = [r["accuracy"] for r in targets if r["arm"] == arm and r["shots"] == shots]
            cells.append(mean_sd(values) if values else "—")
            chart[name].append((statistics.mean(values), statistics.stdev(values)) if len(values) > 1 else None)
        fits = [r["fit_minutes"] for r in targets if r["arm"] == arm and r["shots"] == 4]
        cells.append(f"{statistics.mean(fits):.1f}" if fits else "—")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    figure, axis = plt.subplots(figsize=(6.5, 3.4))
    width = 0.26
    for offset, (name, points) in zip((-width, 0.0, width), chart.items(), strict=True):
        kept = [(i, p) for i, p in enumerate(points) if p]
        axis.bar([i + offset for i, _ in kept], [p[0] for _, p in kept], width, yerr=[p[1] for _, p in kept],
                 capsize=3, label=name)  # fmt: skip
    if "zeroshot" in untrained:
        axis.axhline(untrained["zeroshot"], color="grey", linestyle="--", linewidth=1, label="zero-shot")
    axis.set_xticks(range(len(EPOCHS)), [f"{shots} shot{'s' if shots > 1 else ''}" for shots in EPOCHS])
    axis.set_ylabel("target test accuracy (%), mean ± sd")
    axis.set_title("Target: Fashion-MNIST novel classes; source: its base classes + MNIST + digits", fontsize=9)
    axis.set_ylim(0, 118)  # room for the legend above the bars
    axis.legend(fontsize=7, loc="upper left")
    write_report(out, lines, figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--shots", nargs="+", type=int, default=list(EPOCHS))
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--data-root", type=Path, default=Path("data/testbed"))
    parser.add_argument("--workdir", type=Path, default=Path("outputs/testbed_mvlpt"))
    parser.add_argument("--out", type=Path, default=Path("docs/testbed/mvlpt"))
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.json"
    rows: list[dict] = json.loads(results.read_text()) if results.exists() else []

    def done(**keys) -> bool:  # resumable: a finished run is read back
        return any(all(r.get(k) == v for k, v in keys.items()) for r in rows)

    def record(row: dict) -> None:
        rows.append(row)
        results.write_text(json.dumps(rows, indent=1))
        print(json.dumps(row), flush=True)

    if not args.report_only:
        for source in SOURCES:
            for seed in args.seeds:
                if not done(stage="source", source=source, seed=seed):
                    record(train_source(source, seed, args.data_root, args.workdir))
            seeds = [args.workdir / f"{source}_source_seed{seed}.safetensors" for seed in args.seeds]
            average_prompt_files(seeds, args.workdir / f"{source}_source.safetensors")
        target_root = write_test_subset(args.data_root, args.workdir / "data", args.per_class)
        jobs = [("zeroshot", 0, 1), *((source, 0, 1) for source in SOURCES)]
        jobs += [(arm, shots, seed) for shots in args.shots for seed in args.seeds for arm in ARMS]
        for arm, shots, seed in jobs:
            if not done(stage="target", arm=arm, shots=shots, seed=seed):
                record(test_target(arm, shots, seed, target_root, args.workdir))
    report(rows, args.out, args.per_class)


if __name__ == "__main__":
    main()
