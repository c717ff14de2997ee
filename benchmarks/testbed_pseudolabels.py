"""Pseudolabel prompt tuning on the offline testbed: FPL, IFPL and GRIP (Menghini et al., NeurIPS 2023) against
zero-shot and against CoOp on the labelled images only, in the semi-supervised setting.

Stand-in CLIP on Fashion-MNIST, all 10 classes: 40 training images per class drawn per seed, 2 of them labelled
(``pseudolabels: {setting: ssl}``) and 38 unlabelled; the recipes ``recipes/testbed/grip_ssl*.yaml`` and
``coop_ssl_labelled.yaml``; test accuracy on the 2,000 test images; seeds 1, 2, 3 (they draw the images, the
labelled ones and the initial order). Also records the pseudolabels' accuracy per round. Resumable: a finished
(method, seed) is read back from its logs. ``--shard i/n`` runs every n-th job (two processes on two cores).

    python -m lightning_prompts.testbed prepare --root data/testbed      # once
    python benchmarks/testbed_pseudolabels.py --shard 0/2 & python benchmarks/testbed_pseudolabels.py --shard 1/2
    python benchmarks/testbed_pseudolabels.py --report-only
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

import torch
from testbed_base_to_novel import run_method, zero_shot_all_classes
from testbed_report import write_report

METHODS = {
    "coop_ssl_labelled": "CoOp, labelled images only",
    "grip_ssl_fpl": "FPL",
    "grip_ssl_fpl_low_gamma": "FPL with IFPL's γ",
    "grip_ssl_ifpl": "IFPL",
    "grip_ssl": "GRIP",
}


def pseudolabel_accuracy_by_round(fit_log: Path) -> list[float]:
    """The accuracy of each round's pseudolabels, from the fit's CSV log."""
    with fit_log.open() as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("pseudolabels/accuracy")]
    return [100 * float(row["pseudolabels/accuracy"]) for row in rows]


def report(logs: Path, out: Path, seeds: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    zero_shot = json.loads((logs / "zeroshot_all_classes_test.json").read_text())["test/acc"]
    lines = ["| method | seeds | test accuracy (%) | minutes per run |", "|---|---|---|---|"]
    lines.append(f'| zero-shot ("a photo of a {{}}.") | — | {100 * zero_shot:.1f} | — |')
    means, sds, names, curves = [], [], [], {}
    for method, name in METHODS.items():
        done = [s for s in seeds if (logs / f"{method}_seed{s}_test.json").is_file()]  # the ablation: one seed
        runs = [json.loads((logs / f"{method}_seed{s}_test.json").read_text()) for s in done]
        values = [100 * run["test/acc"] for run in runs]
        means.append(statistics.mean(values))
        sds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
        names.append(name)
        minutes = statistics.mean(run["minutes"] for run in runs)
        lines.append(f"| {name} | {len(runs)} | {means[-1]:.1f} ± {sds[-1]:.1f} | {minutes:.1f} |")
        if method in ("grip_ssl_fpl", "grip_ssl_ifpl", "grip_ssl"):  # the others repeat FPL's zero-shot labels
            curves[name] = [pseudolabel_accuracy_by_round(logs / f"{method}_seed{s}_fit.csv") for s in done]
    lines += ["", "Pseudolabel accuracy (%) per round, mean over seeds (the share of the pseudolabels that are right):"]
    lines += ["", "| method | " + " | ".join(f"round {r + 1}" for r in range(10)) + " |", "|---|" + "---|" * 10]
    for name, per_seed in curves.items():
        rounds = [statistics.mean(values) for values in zip(*per_seed)]
        lines.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in rounds) + " |" * (1 + 10 - len(rounds)))

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    ticks = [name.replace(", labelled images only", "\n(labelled only)").replace(" with ", "\nwith ") for name in names]
    left.bar(["zero-shot", *ticks], [100 * zero_shot, *means], yerr=[0.0, *sds], capsize=3,
             color=["grey", "tab:blue", "tab:orange", "tab:olive", "tab:green", "tab:red"])  # fmt: skip
    left.axhline(10, color="grey", linestyle=":", linewidth=1)
    left.set_ylabel("test accuracy (%), mean ± sd over seeds")
    left.set_title("SSL: 2 labelled + 38 unlabelled images per class", fontsize=9)
    left.tick_params(axis="x", labelsize=7)
    for name, per_seed in curves.items():
        rounds = [statistics.mean(values) for values in zip(*per_seed)]
        right.plot(range(1, len(rounds) + 1), rounds, marker="o", markersize=9 if len(rounds) == 1 else 5, label=name)
    right.set_xlabel("round")
    right.set_ylabel("pseudolabels right (%)")
    right.set_title("Pseudolabel accuracy per round", fontsize=9)
    right.legend(fontsize=8)
    write_report(out, lines, figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--shard", default="0/1", help="i/n: run every n-th (method, seed) job from the i-th")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help="recipes to run (default: all)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--data-root", default="data/testbed")
    parser.add_argument("--workdir", default="outputs/testbed_pseudolabels")
    parser.add_argument("--out", type=Path, default=Path("docs/testbed/pseudolabels"))
    args = parser.parse_args()
    logs = args.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    index, count = (int(part) for part in args.shard.split("/"))
    if count > 1:
        torch.set_num_threads(1)  # one process per core
    if not args.report_only:
        jobs = [(method, seed) for seed in args.seeds for method in args.methods]
        if index == 0 and not (logs / "zeroshot_all_classes_test.json").is_file():
            accuracy = zero_shot_all_classes(Path(args.workdir), args.data_root)
            (logs / "zeroshot_all_classes_test.json").write_text(json.dumps({"test/acc": accuracy}, indent=1))
        for method, seed in jobs[index::count]:
            if not (logs / f"{method}_seed{seed}_test.json").is_file():
                print(method, seed, run_method(method, seed, Path(args.workdir), logs, args.data_root), flush=True)
    if args.report_only or (count == 1 and args.methods == list(METHODS)):
        report(logs, args.out, args.seeds)


if __name__ == "__main__":
    main()
