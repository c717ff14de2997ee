"""The offline heterogeneous testbed: HetGPT on a generated heterogeneous SBM.

No heterogeneous benchmark downloads here, so the graph is generated (:class:`HeteroSBM`: 600 papers in 3
communities, 200 authors and 30 subjects linked to papers of their community with probability 0.9, 16-dim
features shifted by ``--feature-shift`` (0.3) along a class axis) and the encoder is pre-trained in-repo:

1. **Pre-training** (labels unused): a ``HeteroGNN`` (2 layers, 32 wide) with ``HeteroContrastive`` (two views,
   feature noise and edge dropping at 0.2, NT-Xent on papers), 200 steps; a random encoder of the same shape is the
   other row.
2. **Few-shot** (``--shots`` 5 papers per class, 5 for validation, seeds 0, 1, 2 draw shots and initialisation):
   HetGPT with both views (metapaths paper–author–paper and paper–subject–paper) and with the type view only,
   100 steps, Adam 5e-3; the baselines on the same encoder and shots: a linear probe (Adam 5e-3) and full
   fine-tuning of encoder and head (Adam 1e-3), 100 steps each; test accuracy on the other papers.

Writes ``results.json``, ``results.md`` and ``accuracy.png`` to ``--out``:

    python benchmarks/hetero_testbed.py --out docs/testbed/hetero
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_prompts.backbones.hetero_gnn import HeteroGNN
from lightning_prompts.data.hetero_graph import HeteroGraphDataModule
from lightning_prompts.methods.hetero_fine_tuning import HeteroFineTuning
from lightning_prompts.methods.hetero_linear_probe import HeteroLinearProbe
from lightning_prompts.methods.hetgpt import HetGPT
from lightning_prompts.pretraining.hetero_contrastive import HeteroContrastive

SCHEMA = {
    "in_channels": {"paper": 16, "author": 16, "subject": 16},
    "edge_types": [["paper", "to", "author"], ["author", "to", "paper"], ["paper", "to", "subject"],
                   ["subject", "to", "paper"]],
    "hidden_channels": 32,
    "num_layers": 2,
}  # fmt: skip
METAPATHS = [
    [["paper", "to", "author"], ["author", "to", "paper"]],
    [["paper", "to", "subject"], ["subject", "to", "paper"]],
]
VARIANTS = ("HetGPT (type + metapath views)", "HetGPT (type view only)", "linear probe", "full fine-tuning")


def quiet_trainer(steps: int) -> Trainer:
    return Trainer(
        max_epochs=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip


def graph(args: argparse.Namespace, seed: int, shots: int) -> HeteroGraphDataModule:
    spec = {"papers": 600, "authors": 200, "subjects": 30, "shift": args.feature_shift, "seed": 7}
    return HeteroGraphDataModule(synthetic=spec, target="paper", shots=shots, val_shots=5, seed=seed,
                                 classnames=["class 0", "class 1", "class 2"])  # fmt: skip


def pretrain(work: Path, args: argparse.Namespace) -> Path:
    path = work / "hgnn_contrastive.pt"
    if not path.exists():
        seed_everything(0, verbose=False)
        module = HeteroContrastive(HeteroGNN(**SCHEMA), target="paper", sample_nodes=600, encoder_path=str(path))
        quiet_trainer(200).fit(module, graph(args, 0, 5))
    return path


def run(encoder: str, checkpoint: Path | None, variant: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    seed_everything(seed, verbose=False)
    data = graph(args, seed, args.shots)
    backbone = HeteroGNN(**SCHEMA, checkpoint_path=str(checkpoint) if checkpoint else None)
    if variant == "linear probe":
        method = HeteroLinearProbe(backbone, data.classnames, target="paper")
    elif variant == "full fine-tuning":
        method = HeteroFineTuning(backbone, data.classnames, target="paper")
    else:
        metapaths = METAPATHS if variant == VARIANTS[0] else None
        method = HetGPT(backbone, data.classnames, target="paper", metapaths=metapaths)
    trainer = quiet_trainer(100)
    trainer.fit(method, data)
    accuracy = float(trainer.test(method, data, verbose=False)[0]["test/acc"])
    return {"encoder": encoder, "method": variant, "seed": seed, "accuracy": accuracy}


def report(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    encoders = list(dict.fromkeys(r["encoder"] for r in rows))
    lines = ["| encoder | " + " | ".join(VARIANTS) + " |", "|---|" + "---|" * len(VARIANTS)]
    figure, axis = plt.subplots(figsize=(7.5, 3.6))
    width = 0.8 / len(VARIANTS)
    for index, variant in enumerate(VARIANTS):
        means, sds = [], []
        for encoder in encoders:
            values = [100 * r["accuracy"] for r in rows if r["encoder"] == encoder and r["method"] == variant]
            means.append(statistics.mean(values))
            sds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
        positions = [i + (index - (len(VARIANTS) - 1) / 2) * width for i in range(len(encoders))]
        axis.bar(positions, means, width, yerr=sds, capsize=3, label=variant)
    for encoder in encoders:
        cells = []
        for variant in VARIANTS:
            values = [100 * r["accuracy"] for r in rows if r["encoder"] == encoder and r["method"] == variant]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f} ± {sd:.1f}")
        lines.append(f"| {encoder} | " + " | ".join(cells) + " |")
    axis.set_xticks(range(len(encoders)), encoders)
    axis.set_ylabel("test accuracy (%), mean ± sd over seeds")
    axis.set_ylim(0, 100)
    axis.axhline(100 / 3, color="grey", linestyle=":", linewidth=1)
    axis.legend(fontsize=8, loc="lower right")
    axis.set_title("5-shot paper classification, heterogeneous SBM")
    figure.tight_layout()
    figure.savefig(out / "accuracy.png", dpi=110)
    (out / "results.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/testbed/hetero"))
    parser.add_argument("--work", type=Path, default=Path("outputs/hetero_testbed"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--feature-shift", type=float, default=0.3)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # a small graph: one thread is enough, and spares a shared machine
    checkpoint = pretrain(args.work, args)
    results = args.out / "results.json"
    rows: list[dict[str, Any]] = json.loads(results.read_text()) if results.exists() else []
    for encoder, path in (("contrastive pre-training", checkpoint), ("random encoder", None)):
        for variant in VARIANTS:
            for seed in args.seeds:
                if any(r["encoder"] == encoder and r["method"] == variant and r["seed"] == seed for r in rows):
                    continue  # resumable: finished runs are kept
                rows.append(run(encoder, path, variant, seed, args))
                results.write_text(json.dumps(rows, indent=1))
                print(json.dumps(rows[-1]), flush=True)
    report(rows, args.out)
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
