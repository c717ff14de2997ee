"""PTEC: class-weighted BCE, the head on the last real token, two decaying learning rates, label-token init;
multi-label data and metrics; the trie-constrained label-generation baseline."""

from __future__ import annotations

import json

import pytest
import torch
from lightning.pytorch import Trainer
from sklearn.metrics import f1_score, jaccard_score

from lightning_prompts.backbones import HFText
from lightning_prompts.data import TextClassificationDataModule
from lightning_prompts.evaluation import MultiLabelEvaluator
from lightning_prompts.evaluation.multilabel import multilabel_metrics
from lightning_prompts.lightning_cli import default_checkpoints
from lightning_prompts.methods import PTEC
from lightning_prompts.methods.ptec import class_weights, label_token_init
from lightning_prompts.prompts.label_trie import (
    LabelTrie,
    TrieConstrainedLogitsProcessor,
    parse_label_sets,
    split_generated,
)

TEXTS = ["the bank raised its rates", "an insurer and a bank merged", "a new phone was released"]
CLASSES = ["finance", "insurance", "tech"]


def multilabel_files(tmp_path, n=24):
    """Sector-like multi-label rows as JSON lines with label lists (some rows without any label)."""
    sets = [["finance"], ["finance", "insurance"], ["tech"], [], ["insurance"], ["finance", "tech"]]
    for split in ("train", "validation"):
        rows = [
            {"text": f"item {i} about {' and '.join(sets[i % 6]) or 'nothing'}", "label": sets[i % 6]} for i in range(n)
        ]
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return TextClassificationDataModule(
        train_file=str(tmp_path / "train.jsonl"),
        val_file=str(tmp_path / "validation.jsonl"),
        labels=CLASSES,
        label_separator="|",
        batch_size=4,
    )


def test_loss_is_class_weighted_bce_over_batch_and_classes():
    assert torch.allclose(class_weights([3, 1, 0]), torch.tensor([1.0, 3.0, 3.0]))
    method = PTEC(HFText("tiny-gpt2", pooling="last"), CLASSES, num_virtual_tokens=4, pos_weight=[1.0, 3.0, 2.0])
    logits = torch.tensor([[2.0, -1.0, 0.5], [-0.3, 0.8, -2.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    weights = torch.tensor([1.0, 3.0, 2.0])
    by_hand = -(
        weights * targets * torch.log(torch.sigmoid(logits)) + (1 - targets) * torch.log(1 - torch.sigmoid(logits))
    )
    loss = method.task_loss(type("Out", (), {"logits": logits})(), targets)
    assert torch.allclose(loss, by_hand.mean(), atol=1e-6)
    one_hot = method.task_loss(type("Out", (), {"logits": logits})(), torch.tensor([0, 1]))  # single-label data
    assert torch.allclose(one_hot, method.task_loss(type("Out", (), {"logits": logits})(), torch.eye(3)[[0, 1]]))


def test_head_reads_the_last_real_token_after_the_prompt():
    backbone = HFText("tiny-gpt2", pooling="last")
    method = PTEC(backbone, CLASSES, num_virtual_tokens=4).eval()
    with torch.no_grad():
        backbone.model.score.weight.normal_(0, 1)
    tokens = method.tokenize(TEXTS)
    with torch.no_grad():
        ours = method(**tokens).logits
        embeds = torch.cat(
            [method.prompt.embedding.expand(3, -1, -1), backbone.word_embeddings(tokens["input_ids"])], 1
        )
        mask = torch.cat([torch.ones(3, 4, dtype=torch.long), tokens["attention_mask"]], 1)
        hidden = backbone.model.transformer(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        last = mask.sum(1) - 1
        expected = backbone.model.score(hidden[torch.arange(3), last])
    assert torch.allclose(ours, expected, atol=1e-5)
    # the model's own head, given embeddings, reads the last position: a pad for the shorter texts
    assert not torch.allclose(backbone.model(inputs_embeds=embeds, attention_mask=mask).logits, expected, atol=1e-3)


def test_prompt_starts_from_the_class_names_tokens():
    assert label_token_init([5, 6, 7], 5, 50_000, 0) == [5, 6, 7, 1000, 1001]
    subset = label_token_init([1, 2, 3, 4, 5, 6], 4, 50_000, 0)
    assert len(subset) == 4 and len(set(subset)) == 4 and set(subset) <= {1, 2, 3, 4, 5, 6}
    for name in ("tiny-gpt2", "tiny-bert"):
        backbone = HFText(name, task="sequence-classification", pooling="last")
        method = PTEC(backbone, ["finance", "real_estate"], num_virtual_tokens=30)
        # as the official tokenizer.encode(" ".join(labels)): one string, special tokens included
        tokenizer = backbone.tokenizer
        labels = tokenizer.encode("finance real estate")
        assert labels[1:-1] == tokenizer.encode("finance real estate", add_special_tokens=False)  # BOS/CLS … EOS/SEP
        expected = labels + [(1000 + i) % backbone.word_embeddings.num_embeddings for i in range(30 - len(labels))]
        weights = backbone.word_embeddings.weight
        assert torch.equal(method.prompt.embedding.detach(), weights[torch.tensor(expected)])


def test_multilabel_fit_decays_both_rates_to_one_percent_and_weights_from_the_data(tmp_path, trainer_kwargs):
    data = multilabel_files(tmp_path)
    method = PTEC(HFText("tiny-gpt2", pooling="last"), CLASSES, num_virtual_tokens=4, head_lr=1e-3)
    trainer = Trainer(max_epochs=2, **trainer_kwargs)
    trainer.fit(method, data)
    # train positives: finance 12, insurance 8, tech 8 of 24 rows
    assert torch.allclose(method.pos_weight, torch.tensor([1.0, 1.5, 1.5]))
    optimizer = trainer.optimizers[0]
    steps = trainer.global_step
    assert steps == 12
    gamma = 0.01 ** (1 / (steps - 1))
    lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert lrs["prompt"] == pytest.approx(3e-3 * gamma ** (steps - 1)) == pytest.approx(3e-5)
    assert lrs["head"] == pytest.approx(1e-5)
    assert {"val/macro_f1", "val/micro_f1", "val/jaccard", "val/map"} <= set(trainer.logged_metrics)
    assert default_checkpoints(method, data)[0].monitor == "val/macro_f1"


def test_multilabel_batches_and_metrics_match_sklearn(tmp_path):
    data = multilabel_files(tmp_path, n=6)
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    assert batch["label"].dtype == torch.float32 and batch["label"].shape == (6, 3)
    assert batch["label"][3].sum() == 0  # a row without labels is a negative for every class
    assert data.train_label_counts() == [3, 2, 2]
    assert isinstance(data.default_evaluator(), MultiLabelEvaluator)
    generator = torch.Generator().manual_seed(0)
    probs = torch.rand(40, 3, generator=generator)
    targets = (torch.rand(40, 3, generator=generator) > 0.5).long()
    metrics = multilabel_metrics(3)
    metrics.update(probs, targets)
    values = metrics.compute()
    predicted = (probs >= 0.5).long().numpy()
    assert values["macro_f1"].item() == pytest.approx(f1_score(targets.numpy(), predicted, average="macro"))
    assert values["micro_f1"].item() == pytest.approx(f1_score(targets.numpy(), predicted, average="micro"))
    assert values["jaccard"].item() == pytest.approx(jaccard_score(targets.numpy(), predicted, average="macro"))
    # through the evaluator, from logits in two batches: its sigmoid, threshold 0.5, and mAP against sklearn too
    from types import SimpleNamespace

    from sklearn.metrics import average_precision_score

    logits = torch.logit(probs)
    evaluator, module = MultiLabelEvaluator(), SimpleNamespace(classnames=["a", "b", "c"], device=torch.device("cpu"))
    evaluator.start(module, "test")
    for rows in (slice(0, 25), slice(25, 40)):
        evaluator.update(module, None, logits[rows], targets[rows], "test", 0)
    logged = evaluator.finish(module, "test")
    truth = targets.numpy()
    assert logged["test/macro_f1"].item() == pytest.approx(f1_score(truth, predicted, average="macro"))
    assert logged["test/micro_f1"].item() == pytest.approx(f1_score(truth, predicted, average="micro"))
    assert logged["test/jaccard"].item() == pytest.approx(jaccard_score(truth, predicted, average="macro"))
    assert logged["test/map"].item() == pytest.approx(average_precision_score(truth, probs.numpy(), average="macro"))


def test_trie_allows_only_unused_class_names_then_separator_or_end():
    labels = [[10, 11], [10, 12, 13], [20]]  # "fin ance", "fin sur ance", "tech"
    processor = TrieConstrainedLogitsProcessor(labels, separator_token_id=3, eos_token_id=2, prompt_length=0)
    assert processor.allowed([]) == {10, 20}
    assert processor.allowed([10]) == {11, 12}
    assert processor.allowed([10, 11]) == {3, 2}  # a whole name: separator or end
    assert processor.allowed([10, 11, 3]) == {10, 20}  # label 0 cannot come again, label 1 still can
    assert processor.allowed([10, 11, 3, 10]) == {12}
    assert processor.allowed([10, 11, 3, 20, 3, 10, 12, 13]) == {2}  # every class used: only the end
    assert processor.allowed([20, 2, 2]) == {2}
    scores = torch.zeros(1, 30)
    processor.prompt_length = 2  # the first two ids are the prompt
    assert processor(torch.tensor([[7, 7, 10]]), scores).isfinite().nonzero()[:, 1].tolist() == [11, 12]
    trie = LabelTrie(labels)
    assert parse_label_sets(torch.tensor([[10, 11, 3, 20, 3, 10, 11, 2, 5]]), trie, 3, 2) == [[0, 2]]
    with pytest.raises(ValueError, match="same tokens"):
        LabelTrie([[1, 2], [1, 2]])


def test_constrained_generation_with_a_real_generate_call():
    backbone = HFText("tiny-gpt2", task="causal-lm")
    model, tokenizer = backbone.model.eval(), backbone.tokenizer
    names = ["finance", "insurance", "tech"]
    label_ids = [tokenizer(" " + name, add_special_tokens=False)["input_ids"] for name in names]
    separator = tokenizer(",", add_special_tokens=False)["input_ids"][0]
    prompt = tokenizer(["sectors of the bank:"], return_tensors="pt")
    processor = TrieConstrainedLogitsProcessor(
        label_ids, separator, tokenizer.sep_token_id, prompt["input_ids"].shape[1]
    )
    out = model.generate(
        **prompt, logits_processor=[processor], max_new_tokens=40, do_sample=False, eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    new = out[:, prompt["input_ids"].shape[1] :]
    (labels,) = parse_label_sets(new, processor.trie, separator, tokenizer.sep_token_id)
    assert labels and len(labels) == len(set(labels))
    segments = split_generated(new[0].tolist(), separator, tokenizer.sep_token_id)
    assert all(segment in label_ids for segment in segments)  # only class names were generated
