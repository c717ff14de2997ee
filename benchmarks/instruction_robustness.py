"""Instruction robustness on the text testbed: does ``InstructionConsistency`` make a soft prompt answer the
same under phrasings it never saw?

Sun, Shaib and Wallace (ICLR 2024) report that rephrasing an instruction lowers an instruction-tuned model's
accuracy and widens its spread across phrasings, and that soft prompt parameters trained so that equivalent
instructions give the same output recover some of it. Here, on the text testbed's sentiment task (MiniLM-L6,
2,000 Rotten Tomatoes snippets, one epoch, 973 held out), three runs per seed of the recipe
``recipes/text_testbed/minilm/instruction_consistency.yaml``:

* **prompt tuning**: the recipe without its callback — the prompt trains under "Review: {text}" only;
* **+ consistency (KL + CE)**: the recipe as written — each step also runs the batch under one of the five
  "seen" phrasings of ``recipes/text_testbed/sentiment_instructions.json`` (KL to the anchor + CE);
* **+ consistency (KL only)**: the same with ``ce_weight: 0``.

Each trained prompt is then scored on the held-out reviews under the anchor, each seen and each of the four
"unseen" phrasings. Writes ``results.json`` and ``results.md`` to ``--out`` (resumable):

    python benchmarks/instruction_robustness.py --out docs/testbed/instruction_robustness [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer, seed_everything
from text_testbed import RECIPES, load_backbone, recipe_method, release_memory, task_data  # benchmarks/ is on the path

from lightning_prompts import registry
from lightning_prompts.callbacks.instruction_consistency import instruction_template, read_paraphrases
from lightning_prompts.data import TextClassificationDataModule
from lightning_prompts.recipes import merged_section

RECIPE = RECIPES / "minilm" / "instruction_consistency.yaml"
PARAPHRASES = RECIPES / "sentiment_instructions.json"
#: the table's rows: the recipe's callback arguments to change (``None``: no callback)
VARIANTS: dict[str, dict[str, Any] | None] = {
    "prompt tuning": None,
    "+ consistency (KL + CE)": {},
    "+ consistency (KL only)": {"ce_weight": 0.0},
}


def build_callbacks(change: dict[str, Any] | None) -> list[Any]:
    if change is None:
        return []
    callbacks = []
    for spec in merged_section(RECIPE, "trainer")["callbacks"]:
        cls = registry.resolve_class(spec["class_path"], "callback")
        callbacks.append(cls(**{**spec["init_args"], **change}))
    return callbacks


@torch.no_grad()
def accuracy(method, texts: list[str], labels: list[int], template: str, batch_size: int = 64) -> float:
    """Accuracy of the trained method on ``texts`` put into ``template``."""
    method.eval()
    correct = 0
    for start in range(0, len(texts), batch_size):
        logits = method.forward_texts(texts[start : start + batch_size], template).logits
        correct += int((logits.argmax(-1).cpu() == torch.tensor(labels[start : start + batch_size])).sum())
    return correct / len(texts)


def run(variant: str, seed: int, backbone) -> dict[str, Any]:
    seed_everything(seed, verbose=False)
    data = TextClassificationDataModule(**{**task_data()["sentiment"], "seed": seed})
    method = recipe_method(RECIPE, backbone, data.classnames)()
    trainer = Trainer(
        max_epochs=int(merged_section(RECIPE, "trainer")["max_epochs"]), accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0, callbacks=build_callbacks(VARIANTS[variant]),
    )  # fmt: skip
    trainer.fit(method, data)
    texts, labels = data._load()["val"]
    anchor = method.text_template
    scores = {"anchor": accuracy(method, texts, labels, anchor)}
    for split in ("seen", "unseen"):
        for index, instruction in enumerate(read_paraphrases(PARAPHRASES, split)):
            scores[f"{split} {index}"] = accuracy(method, texts, labels, instruction_template(instruction, anchor))
    return {"variant": variant, "seed": seed, "accuracy": scores}


def summary(row: dict[str, Any]) -> dict[str, float]:
    """Per run: anchor, mean over seen, mean and worst over unseen, and the spread over all phrasings."""
    scores = row["accuracy"]
    seen = [value for key, value in scores.items() if key.startswith("seen")]
    unseen = [value for key, value in scores.items() if key.startswith("unseen")]
    return {
        "anchor": scores["anchor"],
        "seen": statistics.mean(seen),
        "unseen": statistics.mean(unseen),
        "unseen_worst": min(unseen),
        "spread": statistics.pstdev(scores.values()),
    }


def report(rows: list[dict[str, Any]], out: Path) -> None:
    columns = {
        "anchor": "anchor instruction",
        "seen": "5 seen phrasings (mean)",
        "unseen": "4 unseen phrasings (mean)",
        "unseen_worst": "worst unseen",
        "spread": "sd over the 10 phrasings",
    }
    lines = ["| run | " + " | ".join(columns.values()) + " |", "|---|" + "---|" * len(columns)]
    for variant in VARIANTS:
        summaries = [summary(row) for row in rows if row["variant"] == variant]
        if not summaries:
            continue
        cells = []
        for key in columns:
            values = [100 * s[key] for s in summaries]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f} ± {sd:.1f}")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/testbed/instruction_robustness"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--model", default="minilm", choices=["minilm", "tiny-bert"], help="tiny-bert: a smoke test")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.json"
    rows: list[dict[str, Any]] = json.loads(results.read_text()) if results.exists() else []
    backbone = load_backbone(args.model)
    for seed in args.seeds:
        for variant in VARIANTS:
            if any(r["variant"] == variant and r["seed"] == seed for r in rows):
                continue  # resumable: finished runs are kept
            row = run(variant, seed, backbone)
            release_memory()
            rows.append(row)
            results.write_text(json.dumps(rows, indent=1))
            print(json.dumps(row), flush=True)
    report(rows, args.out)
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
