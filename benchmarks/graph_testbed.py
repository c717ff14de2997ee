"""The offline graph testbed: GPF, GPF-plus, RELIEF, a linear probe and full fine-tuning on GNNs pre-trained
in-repo.

No graph checkpoints or datasets download here, so the graphs are generated, from three families that
differ in structure, each with node features that carry a weak class signal:

* ``ER``: Erdős–Rényi graphs (edge probability 0.15);
* ``BA``: Barabási–Albert graphs (2 edges per new node);
* ``SBM``: two-block stochastic block models (0.45 within, 0.03 across blocks);

16–32 nodes each; node features are 8-dimensional Gaussian noise whose mean is shifted by
``--feature-shift`` (0.3) along a class-specific axis, so structure carries most of the signal.

1. **Pre-training** (labels unused): a GIN (3 layers, 32 wide, BatchNorm) on 600 graphs, once with
   GraphCL (node dropping + feature masking, NT-Xent) and once with edge prediction, 20 epochs each.
2. **Few-shot** (``--shots`` 10 graphs per class, 20 for validation, fresh graphs): with the GIN frozen,
   the linear probe, GPF and GPF-plus (10 bases) train a linear head on mean-pooled embeddings (full
   fine-tuning: the GIN too) for ``--epochs`` (60), Adam lr 1e-3 (GPF's), seeds 0, 1, 2; test on 300
   held-out graphs. RELIEF trains the same head, alternating with its policy (3 members, ``max_z`` 0.5,
   discrete penalty 1, PPO minibatch 64, two head passes per epoch, all 30 training graphs in one batch:
   one official epoch per epoch), and its wall time per epoch is split into rollouts, PPO updates and head
   updates.

Writes ``results.json``, ``results.md``, ``relief_time.md`` and ``accuracy.png`` to ``--out``:

    python benchmarks/graph_testbed.py --out docs/testbed/graph
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
from torch_geometric.data import Data
from torch_geometric.utils import barabasi_albert_graph, erdos_renyi_graph, stochastic_blockmodel_graph

from lightning_prompts.backbones.gnn import GNN
from lightning_prompts.data import GraphDataModule
from lightning_prompts.methods import GPF
from lightning_prompts.methods.graph_fine_tuning import GraphFineTuning
from lightning_prompts.methods.graph_linear_probe import GraphLinearProbe
from lightning_prompts.methods.relief import RELIEF
from lightning_prompts.pretraining.edge_prediction import EdgePrediction
from lightning_prompts.pretraining.graphcl import GraphCL

FAMILIES = ("ER", "BA", "SBM")
FEATURES = 8
GNN_CONFIG = {"arch": "gin", "in_channels": FEATURES, "hidden_channels": 32, "num_layers": 3, "norm": "batch_norm"}


def make_graph(label: int, generator: torch.Generator, shift: float) -> Data:
    nodes = int(torch.randint(16, 33, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        if label == 0:
            edges = erdos_renyi_graph(nodes, 0.15)
        elif label == 1:
            edges = barabasi_albert_graph(nodes, 2)
        else:
            half = nodes // 2
            edges = stochastic_blockmodel_graph([half, nodes - half], [[0.45, 0.03], [0.03, 0.45]])
    x = torch.randn(nodes, FEATURES, generator=generator)
    x[:, label] += shift
    return Data(x=x, edge_index=edges, y=torch.tensor([label]))


class GraphFamilies(torch.utils.data.Dataset):
    """``per_class`` graphs of each family, deterministic in ``seed``."""

    def __init__(self, per_class: int, seed: int, shift: float) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.graphs = [make_graph(i % 3, generator, shift) for i in range(per_class * len(FAMILIES))]

    def __len__(self) -> int:
        return len(self.graphs)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, torch.Tensor):
            return [self.graphs[int(i)] for i in index]
        return self.graphs[index]


METHODS = ("linear probe", "full fine-tuning", "GPF", "GPF-plus", "RELIEF")


class PhaseTimes(Callback):
    """Sums RELIEF's per-epoch phase times (rollouts, PPO updates, head updates) over the fit."""

    def __init__(self) -> None:
        self.seconds = {"rollout": 0.0, "ppo": 0.0, "head": 0.0}

    def on_train_epoch_end(self, trainer: Trainer, module: Any) -> None:
        for phase, value in getattr(module, "phase_seconds", {}).items():
            self.seconds[phase] += value


def quiet_trainer(epochs: int, callbacks: list[Callback] | None = None) -> Trainer:
    return Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        callbacks=callbacks,
    )  # fmt: skip


def pretrain(strategy: str, work: Path, epochs: int, shift: float) -> Path:
    path = work / f"gin_{strategy}.pt"
    if path.exists():
        return path
    seed_everything(0, verbose=False)
    backbone = GNN(**GNN_CONFIG)
    if strategy == "GraphCL":
        module = GraphCL(backbone, augmentations=("drop_nodes", "mask_nodes"), encoder_path=str(path))
    else:
        module = EdgePrediction(backbone, encoder_path=str(path))
    data = GraphDataModule(GraphFamilies(200, seed=100, shift=shift), task="graph", shots=-1, batch_size=32)
    start = time.perf_counter()
    quiet_trainer(epochs).fit(module, data)
    print(json.dumps({"pretraining": strategy, "seconds": time.perf_counter() - start}), flush=True)
    return path


def run(strategy: str, checkpoint: Path, name: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    seed_everything(seed, verbose=False)
    families = GraphFamilies(args.shots + 20 + 100, seed=1000 + seed, shift=args.feature_shift)
    pool = args.shots * len(FAMILIES)  # RELIEF: one batch holds every training graph (one official epoch)
    data = GraphDataModule(
        families, task="graph", shots=args.shots, val_shots=20, seed=seed, classnames=list(FAMILIES),
        batch_size=pool if name == "RELIEF" else 16,
    )  # fmt: skip
    backbone = GNN(**GNN_CONFIG, checkpoint_path=str(checkpoint))
    times = PhaseTimes()
    if name == "linear probe":
        method = GraphLinearProbe(backbone, list(FAMILIES), task="graph")
    elif name == "full fine-tuning":
        method = GraphFineTuning(backbone, list(FAMILIES), task="graph")
    elif name == "RELIEF":
        method = RELIEF(
            backbone, list(FAMILIES), task="graph", max_nodes=32, max_increment=0.5, penalty_discrete=1.0,
            ppo_minibatch_size=64, head_epochs=2,
        )  # fmt: skip
    else:
        variant = "gpf" if name == "GPF" else "gpf-plus"
        method = GPF(backbone, list(FAMILIES), variant=variant, num_bases=10, task="graph")
    trainer = quiet_trainer(args.epochs, [times])
    start = time.perf_counter()
    trainer.fit(method, data)
    seconds = time.perf_counter() - start
    accuracy = float(trainer.test(method, data, verbose=False)[0]["test/acc"])
    trainable = sum(p.numel() for p in method.parameters() if p.requires_grad)
    row = {"pretraining": strategy, "method": name, "seed": seed, "accuracy": accuracy, "trainable": trainable}
    row["seconds_per_epoch"] = seconds / args.epochs
    if name == "RELIEF":
        row["phase_seconds_per_epoch"] = {k: v / args.epochs for k, v in times.seconds.items()}
    return row


def report(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strategies = list(dict.fromkeys(r["pretraining"] for r in rows))
    names = [name for name in METHODS if any(r["method"] == name for r in rows)]
    lines = ["| pre-training | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    figure, axis = plt.subplots(figsize=(6.5, 3.6))
    width = 0.8 / len(names)
    for index, name in enumerate(names):
        means, sds = [], []
        for strategy in strategies:
            values = [r["accuracy"] for r in rows if r["pretraining"] == strategy and r["method"] == name]
            means.append(100 * statistics.mean(values))
            sds.append(100 * statistics.stdev(values) if len(values) > 1 else 0.0)
        positions = [i + (index - (len(names) - 1) / 2) * width for i in range(len(strategies))]
        axis.bar(positions, means, width, yerr=sds, capsize=3, label=name)
    for strategy in strategies:
        cells = []
        for name in names:
            values = [r["accuracy"] for r in rows if r["pretraining"] == strategy and r["method"] == name]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{100 * statistics.mean(values):.1f} ± {100 * sd:.1f}")
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    axis.set_xticks(range(len(strategies)), strategies)
    axis.set_ylabel("test accuracy (%), mean ± sd over seeds")
    axis.set_ylim(0, 100)
    axis.axhline(100 / len(FAMILIES), color="grey", linestyle=":", linewidth=1)
    axis.legend(fontsize=8, loc="lower right")
    axis.set_title(f"{rows[0].get('shots', '')}-shot graph classification, frozen GIN")
    figure.tight_layout()
    figure.savefig(out / "accuracy.png", dpi=110)
    (out / "results.md").write_text("\n".join(lines) + "\n")
    relief = [r for r in rows if r["method"] == "RELIEF"]
    if relief:
        table = ["| pre-training | s / epoch | rollouts | PPO updates | head updates | GPF s / epoch |",
                 "|---|---|---|---|---|---|"]  # fmt: skip
        for strategy in strategies:
            mine = [r for r in relief if r["pretraining"] == strategy]
            gpf = [
                r["seconds_per_epoch"]
                for r in rows
                if r["pretraining"] == strategy and r["method"] == "GPF" and "seconds_per_epoch" in r
            ]
            total = statistics.mean(r["seconds_per_epoch"] for r in mine)
            phases = [
                statistics.mean(r["phase_seconds_per_epoch"][p] for r in mine) for p in ("rollout", "ppo", "head")
            ]
            cells = [f"{value:.2f} s ({100 * value / total:.0f} %)" for value in phases]
            gpf_cell = f"{statistics.mean(gpf):.2f}" if gpf else "–"
            table.append(f"| {strategy} | {total:.2f} | " + " | ".join(cells) + f" | {gpf_cell} |")
        (out / "relief_time.md").write_text("\n".join(table) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/testbed/graph"))
    parser.add_argument("--work", type=Path, default=Path("outputs/graph_testbed"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--feature-shift", type=float, default=0.3)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # tiny models: one thread is faster, and spares a shared machine
    results = args.out / "results.json"
    rows: list[dict[str, Any]] = json.loads(results.read_text()) if results.exists() else []
    for strategy in ("GraphCL", "edge prediction"):
        checkpoint = pretrain(strategy, args.work, args.pretrain_epochs, args.feature_shift)
        for name in args.methods:
            for seed in args.seeds:
                if any(r["pretraining"] == strategy and r["method"] == name and r["seed"] == seed for r in rows):
                    continue  # resumable: finished runs are kept
                row = {**run(strategy, checkpoint, name, seed, args), "shots": args.shots}
                rows.append(row)
                results.write_text(json.dumps(rows, indent=1))
                print(json.dumps(row), flush=True)
    report(rows, args.out)
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
