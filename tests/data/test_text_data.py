"""Text classification files: formats, label handling, deterministic splits."""

from __future__ import annotations

import bz2
import json

import pytest

from lightning_prompts.data import TextClassificationDataModule
from lightning_prompts.errors import DatasetError


def rows(n=20):
    return [(f"text number {i}", "pos" if i % 2 else "neg") for i in range(n)]


@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl", "csv.bz2"])
def test_formats(tmp_path, kind):
    path = tmp_path / f"train.{kind}"
    if kind.startswith("csv"):
        content = "sentence,label\n" + "".join(f"{t},{label_}\n" for t, label_ in rows())
    elif kind == "tsv":
        content = "sentence\tlabel\n" + "".join(f"{t}\t{label_}\n" for t, label_ in rows())
    else:
        content = "".join(json.dumps({"sentence": t, "label": label_}) + "\n" for t, label_ in rows())
    if kind.endswith("bz2"):
        path.write_bytes(bz2.compress(content.encode()))
    else:
        path.write_text(content)
    data = TextClassificationDataModule(train_file=str(path), text_column="sentence", val_fraction=0.25)
    data.setup("fit")
    assert data.classnames == ["neg", "pos"]
    assert len(data._splits["train"][0]) == 15 and len(data._splits["val"][0]) == 5
    batch = next(iter(data.train_dataloader()))
    assert isinstance(batch["text"][0], str) and batch["label"].dtype.is_floating_point is False


def test_labels_order_classnames_and_filtering(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,label\n" + "".join(f"{t},{label_}\n" for t, label_ in rows()) + "odd one,plot\n")
    with pytest.raises(DatasetError, match="label 'plot'"):
        TextClassificationDataModule(train_file=str(path), labels=["neg", "pos"]).classnames
    data = TextClassificationDataModule(
        train_file=str(path), labels=["pos", "neg"], classnames=["positive", "negative"], drop_other_labels=True
    )
    assert data.classnames == ["positive", "negative"]
    texts, labels = data._load()["train"]
    assert all(label == (0 if int(text.split()[-1]) % 2 else 1) for text, label in zip(texts, labels))


def test_hold_out_and_few_shot_are_deterministic(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,label\n" + "".join(f"{t},{label_}\n" for t, label_ in rows(40)))
    first = TextClassificationDataModule(train_file=str(path), shots=4, seed=3)._load()
    second = TextClassificationDataModule(train_file=str(path), shots=4, seed=3)._load()
    assert first == second and len(first["train"][0]) == 8
    with pytest.raises(DatasetError, match="fewer than the 30 shots"):
        TextClassificationDataModule(train_file=str(path), shots=30)._load()


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        TextClassificationDataModule(train_file=str(tmp_path / "nope.csv")).classnames
