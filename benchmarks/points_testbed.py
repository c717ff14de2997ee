"""The offline point-cloud testbed: IDPT vs VPT-deep vs a linear probe on a Point-MAE pre-trained in-repo.

No point-cloud weights or datasets download here, so both stages are honest stand-ins, built in this
script:

1. **Pre-training**: a small Point-MAE (``--width`` 64, ``--depth`` 4, 4 heads, 16 patches of 16 points
   from 256-point clouds) is pre-trained with :class:`~lightning_prompts.pretraining.PointMAEPretraining`
   (60 % of the patches hidden, Chamfer-L2) on procedural clouds of five shapes — sphere, cube,
   cylinder, cone, torus — under random rotations and stretches (labels unused).
2. **Few-shot prompting**: with the encoder frozen, ``--shots`` clouds per class (fresh draws, another
   seed) train IDPT (prompt before the last block), VPT-deep (10 prompts per block) and the linear probe,
   each with IDPT's optimiser (AdamW 5e-4, weight decay 0.05) for ``--epochs`` epochs, seeds 0, 1, 2.
   Each trained model is tested on 200 held-out clouds, clean and corrupted: Gaussian jitter
   (σ = 0.02, 0.05) and outliers (10 %, 25 % of the points replaced by uniform points in the cube).

Writes ``results.json``, ``results.md``, ``accuracy.png`` (with the pre-training curve) and
``pretraining.json`` to ``--out``, the encoder to ``--work``:

    python benchmarks/points_testbed.py --out docs/testbed/points [--seeds 0 1 2] [--epochs 60]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from lightning_prompts.backbones.point_mae import PointMAE
from lightning_prompts.batch import LABEL, POINTS
from lightning_prompts.data.point_clouds import SHAPES, PointCloudDataModule, ProceduralShapes, sample_points
from lightning_prompts.methods.idpt import IDPT
from lightning_prompts.methods.point_linear_probe import PointLinearProbe
from lightning_prompts.methods.point_vpt import PointVPT
from lightning_prompts.pretraining.point_mae import PointMAEPretraining

POINTS_PER_CLOUD = 256
CORRUPTIONS = {
    "clean": ("none", 0.0),
    "jitter 0.02": ("jitter", 0.02),
    "jitter 0.05": ("jitter", 0.05),
    "outliers 10%": ("outliers", 0.10),
    "outliers 25%": ("outliers", 0.25),
}


def backbone_config(width: int, depth: int) -> dict[str, Any]:
    return {"num_patches": 16, "patch_size": 16, "width": width, "depth": depth, "num_heads": 4}


def trainer(epochs: int, callbacks: list[Callback] | None = None, **kwargs: Any) -> Trainer:
    return Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks or [],
        **kwargs,
    )  # fmt: skip


class LossCurve(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.losses.append(float(trainer.callback_metrics["train/loss"]))


def pretrain(out: Path, work: Path, width: int, depth: int, epochs: int, per_class: int) -> tuple[Path, dict[str, Any]]:
    path = work / "point_mae_shapes.pth"  # megabytes: kept out of the docs
    log = out / "pretraining.json"
    if path.exists() and log.exists():
        return path, json.loads(log.read_text())
    seed_everything(0, verbose=False)
    module = PointMAEPretraining(PointMAE(**backbone_config(width, depth)), encoder_path=str(path))
    data = PointCloudDataModule(
        "shapes", num_points=POINTS_PER_CLOUD, shapes_per_class=per_class, shapes_test_per_class=10,
        batch_size=32, seed=100,
    )  # fmt: skip
    curve = LossCurve()
    start = time.perf_counter()
    trainer(epochs, [curve], limit_val_batches=0).fit(module, data)
    record = {"epochs": epochs, "clouds": per_class * len(SHAPES), "loss": curve.losses,
              "seconds": time.perf_counter() - start}  # fmt: skip
    log.write_text(json.dumps(record, indent=1))
    return path, record


def methods(backbone: PointMAE, depth: int) -> dict[str, Any]:
    classes = list(SHAPES)
    return {
        "linear probe": lambda: PointLinearProbe(backbone, classes),
        "VPT-deep": lambda: PointVPT(backbone, classes, num_tokens=10),
        "IDPT": lambda: IDPT(backbone, classes, prompt_layer=depth - 1),
    }


@torch.no_grad()
def accuracy(method, corruption: str, severity: float, per_class: int) -> float:
    method.eval()
    test = ProceduralShapes(per_class, POINTS_PER_CLOUD, seed=7, corruption=corruption, severity=severity)
    correct = 0
    for start in range(0, len(test), 50):
        items = [test[i] for i in range(start, min(start + 50, len(test)))]
        points = sample_points(torch.stack([item[POINTS] for item in items]), POINTS_PER_CLOUD, None)
        labels = torch.tensor([item[LABEL] for item in items])
        correct += int((method.forward_batch({POINTS: points}).logits.argmax(-1) == labels).sum())
    return correct / len(test)


def run(name: str, build, seed: int, epochs: int, shots: int) -> dict[str, Any]:
    seed_everything(seed, verbose=False)
    data = PointCloudDataModule(
        "shapes", num_points=POINTS_PER_CLOUD, shapes_per_class=max(shots, 20), shapes_test_per_class=10,
        shots=shots, batch_size=10, seed=1000 + seed,
    )  # fmt: skip
    method = build()
    start = time.perf_counter()
    trainer(epochs, limit_val_batches=0).fit(method, data)
    seconds = time.perf_counter() - start
    row = {"method": name, "seed": seed, "shots": shots, "epochs": epochs, "train_seconds": seconds,
           "trainable": sum(p.numel() for p in method.parameters() if p.requires_grad)}  # fmt: skip
    for label, (corruption, severity) in CORRUPTIONS.items():
        row[label] = accuracy(method, corruption, severity, per_class=40)
    return row


def report(rows: list[dict[str, Any]], pretraining: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(row["method"] for row in rows))
    header = "| method | trainable | " + " | ".join(CORRUPTIONS) + " |"
    lines = [header, "|---|---|" + "---|" * len(CORRUPTIONS)]
    figure, (curve, bars) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 2.2]})
    curve.plot(range(1, len(pretraining["loss"]) + 1), pretraining["loss"], color="#4c72b0")
    curve.set_title("Point-MAE pre-training (procedural shapes)")
    curve.set_xlabel("epoch")
    curve.set_ylabel("Chamfer-L2 (last batch of the epoch)")
    width = 0.8 / len(names)
    for index, name in enumerate(names):
        runs = [r for r in rows if r["method"] == name]
        cells, means, sds = [], [], []
        for label in CORRUPTIONS:
            values = [r[label] for r in runs]
            mean, sd = statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{100 * mean:.1f} ± {100 * sd:.1f}")
            means.append(100 * mean), sds.append(100 * sd)
        lines.append(f"| {name} | {runs[0]['trainable']:,} | " + " | ".join(cells) + " |")
        positions = [i + (index - (len(names) - 1) / 2) * width for i in range(len(CORRUPTIONS))]
        bars.bar(positions, means, width, yerr=sds, capsize=3, label=name)
    bars.set_xticks(range(len(CORRUPTIONS)), list(CORRUPTIONS), rotation=15)
    bars.set_ylabel("test accuracy (%), mean ± sd over seeds")
    bars.set_ylim(0, 100)
    bars.axhline(100 / len(SHAPES), color="grey", linestyle=":", linewidth=1)
    bars.legend(loc="lower left", fontsize=8)
    bars.set_title(f"{rows[0]['shots']}-shot, frozen encoder, test clouds clean and corrupted")
    figure.tight_layout()
    figure.savefig(out / "accuracy.png", dpi=110)
    (out / "results.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/testbed/points"))
    parser.add_argument("--work", type=Path, default=Path("outputs/points_testbed"), help="the pre-trained encoder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=60, help="few-shot training epochs")
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--pretrain-per-class", type=int, default=100)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # tiny models: one thread is faster, and spares a shared machine
    checkpoint, pretraining = pretrain(
        args.out, args.work, args.width, args.depth, args.pretrain_epochs, args.pretrain_per_class
    )
    print(json.dumps({k: v for k, v in pretraining.items() if k != "loss"}), flush=True)
    backbone = PointMAE(str(checkpoint), **backbone_config(args.width, args.depth))
    results = args.out / "results.json"
    rows: list[dict[str, Any]] = json.loads(results.read_text()) if results.exists() else []
    for name, build in methods(backbone, args.depth).items():
        for seed in args.seeds:
            if any(r["method"] == name and r["seed"] == seed for r in rows):
                continue  # resumable: finished runs are kept
            row = run(name, build, seed, args.epochs, args.shots)
            rows.append(row)
            results.write_text(json.dumps(rows, indent=1))
            print(json.dumps(row), flush=True)
    report(rows, pretraining, args.out)
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
