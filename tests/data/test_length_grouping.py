"""Length-grouped text batches: every example once per epoch, far less padding, reproducible from the
global seed, and evaluation results equal to the ungrouped loader's."""

from __future__ import annotations

import random

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_prompts.backbones import HFText
from lightning_prompts.data import TextClassificationDataModule
from lightning_prompts.data.length_grouping import LengthGroupedBatchSampler
from lightning_prompts.methods import PromptTuning


def skewed_lengths(n: int = 1000) -> list[int]:
    rng = random.Random(0)  # mostly short, a few very long: like review snippets
    return [rng.randint(5, 40) if rng.random() > 0.05 else rng.randint(100, 400) for _ in range(n)]


def padded_tokens(batches, lengths) -> int:
    return sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)


def test_every_index_once_and_far_less_padding():
    lengths = skewed_lengths()
    sampler = LengthGroupedBatchSampler(lengths, batch_size=32, group=10)
    torch.manual_seed(0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 32  # ceil(1000 / 32)
    assert sorted(i for batch in batches for i in batch) == list(range(1000))
    assert sorted(len(batch) for batch in batches)[1:] == [32] * 31  # one short batch: 1000 = 31 * 32 + 8
    torch.manual_seed(0)
    shuffled = torch.randperm(1000).tolist()
    plain = [shuffled[k : k + 32] for k in range(0, 1000, 32)]
    real = sum(lengths)
    grouped_ratio, plain_ratio = padded_tokens(batches, lengths) / real, padded_tokens(plain, lengths) / real
    assert plain_ratio > 3.0 and grouped_ratio < plain_ratio / 3, (plain_ratio, grouped_ratio)


def test_batches_follow_the_global_seed():
    sampler = LengthGroupedBatchSampler(skewed_lengths(200), batch_size=8)
    torch.manual_seed(3)
    first, second = list(sampler), list(sampler)  # two epochs differ
    torch.manual_seed(3)
    assert list(sampler) == first and first != second


def test_evaluation_results_equal_the_ungrouped_loader_and_predict_keeps_order():
    rows = {}
    results = {}
    for grouped in (False, True):
        seed_everything(0)
        data = TextClassificationDataModule(
            synthetic={"examples_per_class": 12}, eval_batch_size=5, group_by_length=grouped
        )
        data.setup("fit")
        backbone = HFText("tiny-bert")
        torch.nn.init.normal_(backbone.model.get_input_embeddings().weight, std=0.5)  # classes score differently
        model = PromptTuning(backbone, data.classnames, num_virtual_tokens=3)
        trainer = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
        trainer.validate(model, data, verbose=False)
        results[grouped] = {k: float(v) for k, v in trainer.callback_metrics.items()}
        predicted = [text for batch in data.predict_dataloader() for text in batch["text"]]
        assert predicted == data._load()["test"][0]  # the file's order
        rows[grouped] = [text for batch in data.val_dataloader() for text in batch["text"]]
    assert sorted(rows[True]) == sorted(rows[False]) and rows[True] != rows[False]
    lengths = model.text_lengths(rows[True])  # evaluation: the model's token counts
    assert lengths == sorted(lengths, reverse=True)
    assert results[True].keys() == results[False].keys()
    for key in results[False]:
        assert abs(results[True][key] - results[False][key]) < 1e-5, key


def test_length_unit_tokens_groups_by_the_models_own_token_counts(tmp_path):
    # characters order these texts the wrong way round: runs of spaces are long and no token at all
    rng = random.Random(0)
    texts = [("a" + " " * rng.randint(40, 80) + "b") if k % 2 else "".join(rng.choices("xyz", k=20)) for k in range(40)]
    rows = "\n".join(f"{text},{k % 2}" for k, text in enumerate(texts))
    (tmp_path / "train.csv").write_text("text,label\n" + rows + "\n")
    data = TextClassificationDataModule(train_file=str(tmp_path / "train.csv"), val_fraction=0.5, batch_size=4)
    data.setup("fit")
    train_texts, val_texts = data._load()["train"][0], data._load()["val"][0]
    assert data.text_lengths(val_texts) == [len(text) for text in val_texts]  # no model: characters
    model = PromptTuning(HFText("tiny-bert"), data.classnames, num_virtual_tokens=3)
    trainer = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    data.group_by_length, data.length_unit = True, "tokens"
    trainer.validate(model, data, verbose=False)
    tokens = model.text_lengths(val_texts)
    assert tokens == [len(model.tokenize([text])["input_ids"][0]) for text in val_texts]
    assert data.text_lengths(val_texts) == tokens and tokens != [len(text) for text in val_texts]
    ordered = [text for batch in data.val_dataloader() for text in batch["text"]]
    assert ordered[0].startswith(("x", "y", "z")) and ordered[-1].startswith("a")  # 22 tokens before 4
    assert data.train_dataloader().batch_sampler.lengths == model.text_lengths(train_texts)
    data.length_unit = "characters"
    assert data.text_lengths(val_texts) == [len(text) for text in val_texts]
    # evaluation orders by tokens whatever the training unit (its results do not depend on the batches)
    assert [text for batch in data.val_dataloader() for text in batch["text"]] == ordered
    assert data.train_dataloader().batch_sampler.lengths == [len(text) for text in train_texts]
    with pytest.raises(ValueError, match="length_unit"):
        TextClassificationDataModule(synthetic={"examples_per_class": 4}, length_unit="words")
