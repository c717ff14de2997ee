"""TPT on the offline testbed: test-time prompt tuning of the stand-in CLIP on Fashion-MNIST (cross-dataset, all
10 classes, nothing trained) against the same prompt without tuning and against zero-shot.

Every test image costs 64 image forwards (63 AugMix views and the image) and one tuning step, about 2.7 s on 2 CPU
cores, so the script tests ``--per-class`` (10) images of each class: the first ones of the testbed's test split,
written as a split file of their own under ``--workdir`` (the images are linked, not copied). Seeds 1, 2, 3 draw
the views; the untuned prompt and zero-shot do not depend on them and run once. Writes ``results.json``,
``results.md`` and ``results.png`` to ``--out``:

    python -m lightning_prompts.testbed prepare --root data/testbed      # once
    python benchmarks/testbed_tpt.py --out docs/testbed/tpt

``--shifts rotation inversion blur noise`` tests the same rows on the corrupted test images of
:mod:`lightning_prompts.testbed.shifts` instead (one testbed root per shift under ``--workdir``) and reports them
per shift:

    python benchmarks/testbed_tpt.py --shifts rotation inversion blur noise --per-class 2 --seeds 1 \
        --out docs/testbed/tpt_shifts
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from testbed_report import write_report

from lightning_prompts.cli import run_cli
from lightning_prompts.testbed.fashion_mnist import CLASSNAMES, write_test_subset
from lightning_prompts.testbed.shifts import SHIFTS, write_shifted_root

ROOT = Path(__file__).resolve().parents[1]
RUNS = {
    "zero-shot (\"a photo of a {}.\")": ("zeroshot.yaml", ["--data.init_args.subsample_classes", "all"]),
    "CoOp's initial context \"a photo of a\", untuned": (
        "tpt.yaml", ["--model.init_args.evaluator", "null", "--data.init_args.test_views", "0"],
    ),
    "TPT (1 step, 63 AugMix views, 10% most confident)": ("tpt.yaml", []),
}  # fmt: skip


def run(name: str, seed: int, root: Path, workdir: Path) -> dict[str, float]:
    recipe, extra = RUNS[name]
    start = time.perf_counter()
    cli = run_cli(
        ["test", "--config", str(ROOT / "recipes" / "testbed" / recipe), *extra, "--seed_everything", str(seed),
         "--data.init_args.seed", str(seed), "--data.init_args.root", str(root), "--trainer.logger", "false",
         "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(workdir / "runs")]
    )  # fmt: skip
    images = sum(len(dataset) for dataset in cli.datamodule._datasets["test"])
    seconds = time.perf_counter() - start
    accuracy = float(cli.trainer.callback_metrics["test/acc"])
    return {"method": name, "seed": seed, "accuracy": accuracy, "images": images, "seconds_per_image": seconds / images}


def report(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = ["| method | seeds | accuracy (%) | s per test image |", "|---|---|---|---|"]
    names, means, sds = [], [], []
    for name in RUNS:
        chosen = [r for r in rows if r["method"] == name]
        values = [100 * r["accuracy"] for r in chosen]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        speed = statistics.mean(r["seconds_per_image"] for r in chosen)
        lines.append(f"| {name} | {len(chosen)} | {statistics.mean(values):.1f} ± {sd:.1f} | {speed:.2f} |")
        names.append(name.split(" (")[0].split(",")[0])
        means.append(statistics.mean(values))
        sds.append(sd)
    lines.append("")
    lines.append(f"{rows[0]['images']} test images (the first {rows[0]['images'] // 10} of each class); chance 10%.")
    figure, axis = plt.subplots(figsize=(6.5, 3.4))
    axis.bar(names, means, yerr=sds, capsize=3, color=["grey", "tab:blue", "tab:green"])
    axis.axhline(10, color="grey", linestyle=":", linewidth=1)
    axis.set_ylabel("test accuracy (%), mean ± sd")
    axis.set_title("Stand-in CLIP on Fashion-MNIST (10 classes), test-time prompt tuning", fontsize=9)
    axis.tick_params(axis="x", labelsize=8)
    write_report(out, lines, figure)


def report_shifts(rows: list[dict], out: Path, shifts: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = ["| method | " + " | ".join(shifts) + " |", "|---|" + "---|" * len(shifts)]
    bars: dict[str, list[float]] = {}
    for name in RUNS:
        cells = []
        for shift in shifts:
            values = [100 * r["accuracy"] for r in rows if r["method"] == name and r.get("shift") == shift]
            sd = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.1f}{sd}" if values else "—")
            bars.setdefault(name.split(" (")[0].split(",")[0], []).append(statistics.mean(values) if values else 0.0)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    images = {r["shift"]: r["images"] for r in rows if r.get("shift") in shifts}
    lines += ["", "Test images per shift: " + ", ".join(f"{s} {images.get(s, 0)}" for s in shifts) + "; chance 10%."]
    figure, axis = plt.subplots(figsize=(6.5, 3.4))
    width = 0.8 / len(bars)
    for k, (name, values) in enumerate(bars.items()):
        axis.bar([i + (k - (len(bars) - 1) / 2) * width for i in range(len(shifts))], values, width, label=name)
    axis.set_xticks(range(len(shifts)), shifts)
    axis.axhline(10, color="grey", linestyle=":", linewidth=1)
    axis.set_ylabel("test accuracy (%)")
    axis.set_title("Stand-in CLIP on corrupted Fashion-MNIST test images", fontsize=9)
    axis.legend(fontsize=7)
    write_report(out, lines, figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--data-root", type=Path, default=Path("data/testbed"))
    parser.add_argument("--workdir", type=Path, default=Path("outputs/testbed_tpt"))
    parser.add_argument("--out", type=Path, default=Path("docs/testbed/tpt"))
    parser.add_argument("--shifts", nargs="*", choices=sorted(SHIFTS), default=[])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    roots = {"none": write_test_subset(args.data_root, args.workdir / "data", args.per_class)} if not args.shifts else {
        shift: write_shifted_root(args.data_root, args.workdir / f"data_{shift}", shift, args.per_class)
        for shift in args.shifts
    }  # fmt: skip
    results = args.out / "results.json"
    rows: list[dict] = json.loads(results.read_text()) if results.exists() else []
    images = args.per_class * len(CLASSNAMES)
    # resumable; rows of these shifts from another --per-class are dropped (they would be averaged in)
    rows = [r for r in rows if r.get("shift", "none") not in roots or r["images"] == images]
    for shift, root in roots.items():
        for name in RUNS:
            seeds = args.seeds if name.startswith("TPT") else args.seeds[:1]  # only TPT draws anything
            for seed in seeds:
                if any(r["method"] == name and r["seed"] == seed and r.get("shift", "none") == shift for r in rows):
                    continue
                rows.append({**run(name, seed, root, args.workdir), "shift": shift})
                results.write_text(json.dumps(rows, indent=1))
                print(json.dumps(rows[-1]), flush=True)
    if args.shifts:
        report_shifts(rows, args.out, args.shifts)
    else:
        report(rows, args.out)


if __name__ == "__main__":
    main()
