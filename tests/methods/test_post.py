"""POST: the mixed transfer loss (shift KL weighted by alpha, prompted-output KL, T²), source frozen."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer

from lightning_prompts.backbones import HFText
from lightning_prompts.data import SyntheticText, TextClassificationDataModule
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods import POST, PromptTuning
from lightning_prompts.methods.post import post_transfer_loss

TEXTS = ["the film was great and moving", "dull", "an awful, tedious and clumsy film"]


def kl_by_hand(teacher, student, temperature):
    p = torch.softmax(teacher / temperature, -1)
    return (p * (torch.log(p) - torch.log_softmax(student / temperature, -1))).sum(-1).mean() * temperature**2


def test_loss_is_the_official_mix():
    generator = torch.Generator().manual_seed(0)
    sp, s0, tp, t0 = (torch.randn(3, 11, generator=generator) * 3 for _ in range(4))
    expected = 0.3 * kl_by_hand(sp - s0, tp - t0, 2.0) + 0.7 * kl_by_hand(sp, tp, 2.0)
    assert torch.allclose(post_transfer_loss(sp, s0, tp, t0, alpha=0.3, temperature=2.0), expected, atol=1e-6)
    assert torch.allclose(post_transfer_loss(sp, s0, sp, s0), torch.zeros(()), atol=1e-6)  # same outputs: 0


def source_prompt(tmp_path):
    source = PromptTuning(HFText("tiny-gpt2", task="causal-lm", seed=1), ["neg", "pos"], num_virtual_tokens=3, seed=5)
    return source, source.export_prompt(tmp_path / "source.safetensors")


def test_transfer_loss_reads_both_models_at_the_last_token_and_trains_only_the_target_prompt(tmp_path):
    source, path = source_prompt(tmp_path)
    small = HFText("tiny-gpt2", "causal-lm", seed=1)
    target = POST(
        HFText("tiny-gpt2", task="causal-lm", seed=2), ["neg", "pos"], source_backbone=small,
        source_prompt=str(path), num_virtual_tokens=4, text_template="{text} it was",
    )  # fmt: skip
    target.check_ready("fit", [], None)
    tokens = target.tokenize(TEXTS)
    loss = target.transfer_loss(TEXTS, tokens["input_ids"], tokens["attention_mask"])
    source_tokens = source.backbone.tokenize(target.format_texts(TEXTS), reserve=3)
    with torch.no_grad():
        sp = source.backbone.forward_embeddings(source.prompt.embedding, **source_tokens).logits
        s0 = source.backbone.forward_embeddings(None, **source_tokens).logits
        t0 = target.backbone.forward_embeddings(None, **tokens).logits
    tp = target.backbone.forward_embeddings(target.prompt.embedding, **tokens).logits
    assert sp.shape == (3, target.backbone.word_embeddings.num_embeddings)  # the whole vocabulary
    assert torch.allclose(loss, post_transfer_loss(sp, s0, tp, t0), atol=1e-6)
    loss.backward()
    assert target.prompt.embedding.grad.abs().sum() > 0
    assert all(p.grad is None for p in target.source.parameters())


def test_fit_on_anchor_texts_and_validation_on_the_task(tmp_path, trainer_kwargs):
    _, path = source_prompt(tmp_path)
    data = TextClassificationDataModule(synthetic=SyntheticText(examples_per_class=8), batch_size=8)
    small = HFText("tiny-gpt2", "causal-lm", seed=1)
    target = POST(
        HFText("tiny-gpt2", task="causal-lm"), data.classnames, source_backbone=small, source_prompt=str(path),
        num_virtual_tokens=4,
    )  # fmt: skip
    before = target.prompt.embedding.detach().clone()
    trainer = Trainer(max_steps=2, **trainer_kwargs)
    trainer.fit(target, data)
    assert not torch.equal(target.prompt.embedding, before)
    assert {"train/transfer_loss", "val/acc"} <= set(trainer.logged_metrics)
    assert target.hparams["source_backbone"]["init_args"]["model_name_or_path"] == "tiny-gpt2"


def test_bad_sources_fail_before_training(tmp_path):
    other_vocabulary = HFText("tiny-gpt2", "causal-lm")
    other_vocabulary.model.resize_token_embeddings(500)
    with pytest.raises(ConfigurationError, match="one vocabulary"):
        POST(HFText("tiny-gpt2", "causal-lm"), ["a", "b"], source_backbone=other_vocabulary)
    with pytest.raises(ConfigurationError, match="source must be a causal LM"):
        POST(HFText("tiny-gpt2", "causal-lm"), ["a", "b"], source_backbone=HFText("tiny-bert"))
    with pytest.raises(ConfigurationError, match="causal-lm"):
        POST(HFText("tiny-bert"), ["a", "b"])
    target = POST(
        HFText("tiny-gpt2", "causal-lm"), ["a", "b"], source_backbone=HFText("tiny-gpt2", "causal-lm"),
        source_prompt=str(tmp_path / "missing.safetensors"), num_virtual_tokens=2,
    )  # fmt: skip
    with pytest.raises(ConfigurationError, match="not a safetensors file|does not exist"):
        target.check_ready("fit", [], None)
