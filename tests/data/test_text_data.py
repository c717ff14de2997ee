"""Text classification files: formats, label handling, deterministic splits."""

from __future__ import annotations

import bz2
import collections
import json

import pytest
import torch

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
    texts, labels = first["train"]
    assert sorted(labels) == [0, 0, 0, 0, 1, 1, 1, 1]  # 4 shots of each class
    originals = dict(rows(40))
    labels_in_file = TextClassificationDataModule(train_file=str(path)).classnames  # label values in class order
    assert all(originals[text] == labels_in_file[label] for text, label in zip(texts, labels))  # rows kept whole
    other = TextClassificationDataModule(train_file=str(path), shots=4, seed=4)._load()
    assert other["train"][0] != texts  # another seed, another draw
    with pytest.raises(DatasetError, match="fewer than the 30 shots"):
        TextClassificationDataModule(train_file=str(path), shots=30)._load()


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        TextClassificationDataModule(train_file=str(tmp_path / "nope.csv")).classnames


def write_pairs(path, n, start=0):
    """RTE as ``datasets`` writes it to JSON lines (integer labels, an ``idx`` column)."""
    lines = [
        json.dumps({"premise": f"premise {i}", "hypothesis": f"hypothesis {i}", "label": i % 2, "idx": i})
        for i in range(start, start + n)
    ]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_text_format_builds_sentence_pairs(tmp_path):
    data = TextClassificationDataModule(
        train_file=write_pairs(tmp_path / "train.jsonl", 8),
        val_file=write_pairs(tmp_path / "validation.jsonl", 4),
        text_format="premise: {premise} hypothesis: {hypothesis}",
        labels=["0", "1"],
        classnames=["entailment", "not_entailment"],
    )
    data.setup("fit")
    assert data._splits["train"][0][3] == "premise: premise 3 hypothesis: hypothesis 3"
    assert data._splits["train"][1][:4] == [0, 1, 0, 1]
    for bad in ("{premise.__class__}", "{premise!r}", "{0}", "no fields"):
        with pytest.raises(ValueError, match="text_format"):
            TextClassificationDataModule(train_file="unused.jsonl", text_format=bad)
    missing = TextClassificationDataModule(train_file=str(tmp_path / "train.jsonl"), text_format="{question}")
    with pytest.raises(DatasetError, match="lacks column"):
        missing.setup("fit")


def test_split_protocols_of_the_glue_papers(tmp_path):
    train, validation = write_pairs(tmp_path / "train.jsonl", 1200), write_pairs(tmp_path / "val.jsonl", 11, 5000)
    common = {"train_file": train, "val_file": validation, "text_format": "{premise}", "labels": ["0", "1"]}
    large = TextClassificationDataModule(split_protocol="holdout_1k", **common)
    large.setup("fit")
    train_texts, val_texts, test_texts = (large._splits[s][0] for s in ("train", "val", "test"))
    assert (len(train_texts), len(val_texts), len(test_texts)) == (200, 1000, 11)
    assert set(train_texts).isdisjoint(val_texts) and all(int(t.split()[1]) >= 5000 for t in test_texts)
    small = TextClassificationDataModule(split_protocol="halve_validation", **common)
    small.setup("fit")
    val_texts, test_texts = small._splits["val"][0], small._splits["test"][0]
    assert (len(small._splits["train"][0]), len(val_texts), len(test_texts)) == (1200, 5, 6)
    assert sorted(val_texts + test_texts) == sorted(f"premise {i}" for i in range(5000, 5011))
    again = TextClassificationDataModule(split_protocol="halve_validation", **common)
    again.setup("fit")
    assert again._splits["val"][0] == val_texts  # seeded: the same halves every run
    # DePT's code (src/tasks.py get_split_indices): validation = the first n // 2 rows of torch.randperm(n) under a
    # generator seeded 42, test the rest, whatever the run's seed; the 1k hold-out the first 1,000 of the training file
    dept = torch.randperm(11, generator=torch.Generator().manual_seed(42)).tolist()
    assert val_texts == [f"premise {5000 + i}" for i in sorted(dept[:5])]
    assert test_texts == [f"premise {5000 + i}" for i in sorted(dept[5:])]
    other_seed = TextClassificationDataModule(split_protocol="halve_validation", seed=3, **common)
    other_seed.setup("fit")
    assert other_seed._splits["val"][0] == val_texts
    held = torch.randperm(1200, generator=torch.Generator().manual_seed(42)).tolist()[:1000]
    assert large._splits["val"][0] == [f"premise {i}" for i in sorted(held)]
    with pytest.raises(ValueError, match="no test_file"):
        TextClassificationDataModule(split_protocol="halve_validation", test_file=validation, **common)


def test_parquet_as_datasets_writes_it(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "premise": [f"premise {i}" for i in range(10)],
            "hypothesis": [f"hypothesis {i}" for i in range(10)],
            "label": [i % 3 for i in range(10)],
            "tags": [["a", "b"] if i % 2 else ["c"] for i in range(10)],
        }
    )
    pq.write_table(table, tmp_path / "train.parquet")
    data = TextClassificationDataModule(
        train_file=str(tmp_path / "train.parquet"), text_format="{premise} / {hypothesis}", labels=["0", "1", "2"]
    )
    data.setup("fit")
    assert sorted(data._splits["train"][0] + data._splits["val"][0])[0] == "premise 0 / hypothesis 0"
    tags = TextClassificationDataModule(
        train_file=str(tmp_path / "train.parquet"), text_column="premise", label_column="tags", label_separator="|"
    )
    assert tags.classnames == ["a", "b", "c"] and tags.train_label_counts() != [0, 0, 0]
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(DatasetError, match="not a readable Parquet file"):
        TextClassificationDataModule(train_file=str(tmp_path / "broken.parquet")).setup("fit")


def test_one_hot_label_columns_as_ptecs_hate_speech_files(tmp_path):
    """PTEC's released files: JSON lines with a ``prompt`` text and one 0/1 column per class."""
    import json

    classes = ["Towards law enforcement", "Swearing", "Neutral"]
    rows = [
        {"ID": 1, "prompt": "Title: a Message: b", "Towards law enforcement": 1, "Swearing": 1, "Neutral": 0},
        {"ID": 2, "prompt": "Title: c Message: d", "Towards law enforcement": 0, "Swearing": 0, "Neutral": 1},
        {"ID": 3, "prompt": "Title: e Message: f", "Towards law enforcement": 0, "Swearing": 0, "Neutral": 0},
        {"ID": 4, "prompt": "Title: g Message: h", "Towards law enforcement": 1, "Swearing": 0, "Neutral": 0},
    ]
    for split in ("train", "dev"):
        (tmp_path / f"{split}.json").write_text("\n".join(json.dumps(r) for r in rows))
    train, dev = str(tmp_path / "train.json"), str(tmp_path / "dev.json")  # JSON lines named .json, as pandas writes
    data = TextClassificationDataModule(
        train_file=train, val_file=dev, text_column="prompt", label_columns=classes, batch_size=4
    )
    data.setup("fit")
    assert data.classnames == classes and data.multi_label
    batch = next(iter(data.val_dataloader()))
    assert batch["label"].tolist() == [[1, 1, 0], [0, 0, 1], [0, 0, 0], [1, 0, 0]]
    assert data.train_label_counts() == [2, 1, 1]
    rows[0]["prompt"] = "Title: a\u2028b Message: c\x85d"  # separators JSON strings may hold, unescaped
    (tmp_path / "dev.json").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    data = TextClassificationDataModule(train_file=train, val_file=dev, text_column="prompt", label_columns=classes)
    data.setup("fit")
    assert data._splits["val"][0][0] == "Title: a\u2028b Message: c\x85d" and len(data._splits["val"][0]) == 4
    rows[0]["prompt"] = "Title: a Message: b"
    (tmp_path / "array.json").write_text(json.dumps(rows))  # one JSON array of rows reads the same
    array = TextClassificationDataModule(train_file=str(tmp_path / "array.json"), val_file=dev, text_column="prompt",
                                         label_columns=classes)  # fmt: skip
    array.setup("fit")
    assert array._splits["train"] == data._splits["train"]
    rows[1]["Swearing"] = 2
    (tmp_path / "dev.json").write_text("\n".join(json.dumps(r) for r in rows))
    bad = TextClassificationDataModule(train_file=train, val_file=dev, text_column="prompt", label_columns=classes)
    with pytest.raises(DatasetError, match=r"row 2 has \{'Swearing': '2'\} in label column\(s\); each takes 0 or 1"):
        bad.setup("fit")
    with pytest.raises(ValueError, match="label_columns takes"):
        TextClassificationDataModule(train_file=train, label_columns=classes, label_separator="|")


def test_split_columns_read_a_validation_file_laid_out_otherwise(tmp_path):
    """POST's SST-2 transfer: anchors with text/category columns (rotten/fresh), GLUE's dev.tsv with sentence/label
    (0/1) for validation; the validation labels land on the training file's classes."""
    train = tmp_path / "anchors.csv"
    train.write_text("text,category\n" + "".join(f"snippet {i},{'fresh' if i % 2 else 'rotten'}\n" for i in range(8)))
    dev = tmp_path / "dev.tsv"
    dev.write_text("sentence\tlabel\nit 's a charming journey . \t1\nunflinchingly bleak \t0\na gorgeous film \t1\n")
    layout = {"val": {"text_column": "sentence", "label_column": "label", "labels": ["0", "1"]}}
    data = TextClassificationDataModule(
        str(train), str(dev), text_column="text", label_column="category", labels=["rotten", "fresh"],
        classnames=["negative", "positive"], split_columns=layout,
    )  # fmt: skip
    data.setup("fit")
    texts, labels = data._load()["val"]
    assert texts == ["it 's a charming journey . ", "unflinchingly bleak ", "a gorgeous film "]
    assert labels == [1, 0, 1] and data.classnames == ["negative", "positive"]
    with pytest.raises(DatasetError, match="lacks column"):  # the dev file read with the training file's columns
        plain = TextClassificationDataModule(str(train), str(dev), label_column="category", labels=["rotten", "fresh"])
        plain.setup("fit")
    with pytest.raises(ValueError, match="not 'train'"):
        TextClassificationDataModule(str(train), split_columns={"train": {"text_column": "x"}})
    with pytest.raises(ValueError, match=r"not \['label_map'\]"):
        TextClassificationDataModule(str(train), split_columns={"val": {"label_map": {}}})
    with pytest.raises(DatasetError, match="gives 3 labels"):
        TextClassificationDataModule(
            str(train), str(dev), label_column="category", labels=["rotten", "fresh"],
            split_columns={"val": {**layout["val"], "labels": ["0", "1", "2"]}},
        ).setup("fit")  # fmt: skip


def test_posts_recipe_reads_the_rotten_tomatoes_anchors_and_glues_sst2_dev_file(tmp_path):
    """recipes/post/sst2_gpt2_to_gpt2_large.yaml's data block as written, its val_file a GLUE-format dev.tsv."""
    from pathlib import Path

    from lightning_prompts.recipes import merged_section

    recipe = Path(__file__).resolve().parents[2] / "recipes/post/sst2_gpt2_to_gpt2_large.yaml"
    arguments = dict(merged_section(recipe, "data")["init_args"])
    dev = tmp_path / "dev.tsv"
    dev.write_text("sentence\tlabel\nit 's a charming journey . \t1\nunflinchingly bleak \t0\n")
    data = TextClassificationDataModule(**{**arguments, "val_file": str(dev)})
    data.setup("fit")
    anchors, _ = data._load()["train"]
    assert len(anchors) == 1000
    assert data._load()["val"] == (["it 's a charming journey . ", "unflinchingly bleak "], [1, 0])


def test_stratified_hold_out_takes_each_classs_share(tmp_path):
    """40 + 40 + 3 rows, a quarter held out: 10, 10 and 1 (round(0.75)) per class with val_stratified; the random
    share of the file leaves every class's count to chance (for some seeds the rare class has none in validation,
    or none left to train on)."""
    path = tmp_path / "train.csv"
    rows_ = [(f"common a {i}", "a") for i in range(40)] + [(f"common b {i}", "b") for i in range(40)]
    rows_ += [(f"rare {i}", "rare") for i in range(3)]
    path.write_text("text,label\n" + "".join(f"{t},{label_}\n" for t, label_ in rows_))

    def counts(stratified: bool, seed: int) -> tuple[collections.Counter, collections.Counter, set]:
        data = TextClassificationDataModule(
            train_file=str(path), val_fraction=0.25, val_stratified=stratified, seed=seed
        )
        data.setup("fit")
        (train_texts, train_labels), (val_texts, val_labels) = data._splits["train"], data._splits["val"]
        names = data.classnames
        assert set(train_texts) | set(val_texts) == {t for t, _ in rows_} and not set(train_texts) & set(val_texts)
        return (collections.Counter(names[i] for i in train_labels), collections.Counter(names[i] for i in val_labels),
                set(val_texts))  # fmt: skip

    draws = {}
    for seed in range(6):
        train, val, held = counts(True, seed)
        assert val == {"a": 10, "b": 10, "rare": 1} and train == {"a": 30, "b": 30, "rare": 2}
        draws[seed] = held
    assert len({frozenset(held) for held in draws.values()}) > 1  # the seed still draws which rows
    random_rare = set()
    for seed in range(6):  # without it the rare class's share is left to the seed
        try:
            random_rare.add(counts(False, seed)[1]["rare"])
        except DatasetError as error:  # all three drawn into validation: nothing left to train the class
            assert "['rare'] have no training example" in str(error)
            random_rare.add(3)
    assert len(random_rare) > 1


def test_stratified_hold_out_refuses_multi_label_data(tmp_path):
    with pytest.raises(ValueError, match="single-label data only"):
        TextClassificationDataModule(train_file=str(tmp_path / "x.csv"), label_separator="|", val_stratified=True)
