"""DePT: the position-wise low-rank offset at every input position (padding included), zero at init."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Trainer

from lightning_prompts.backbones import HFText
from lightning_prompts.data import SyntheticText, TextClassificationDataModule
from lightning_prompts.errors import ConfigurationError, ContextLengthError
from lightning_prompts.methods import DePT, PromptTuning
from lightning_prompts.methods.dept import matched_prompt_length

TEXTS = ["the film was great and moving", "dull", "an awful, tedious and clumsy film with a weak plot!"]


def official_dept_logits(method: DePT, input_ids, attention_mask):
    """DePT's forward as its code writes it: word embeddings of the padded input plus
    (lora_alpha / sqrt(r)) * A @ B repeated over the batch, then the prompt prepended, mask ones in front."""
    model = method.backbone.model
    rank = method.offset.A.shape[1]
    embeds = model.get_input_embeddings()(input_ids)
    embeds = embeds + (8.0 / math.sqrt(rank)) * (method.offset.A @ method.offset.B).repeat(input_ids.shape[0], 1, 1)
    prompt = method.prompt.embedding.repeat(input_ids.shape[0], 1, 1)
    mask = torch.cat([torch.ones(input_ids.shape[0], prompt.shape[1], dtype=attention_mask.dtype), attention_mask], 1)
    if model.config.is_encoder_decoder:  # T5, DePT's own backbone: the decoder's first step from its start token
        start = torch.full((input_ids.shape[0], 1), model.config.decoder_start_token_id)
        return model(inputs_embeds=torch.cat([prompt, embeds], 1), attention_mask=mask, decoder_input_ids=start)
    return model(inputs_embeds=torch.cat([prompt, embeds], 1), attention_mask=mask)


def test_offset_starts_at_zero_and_dept_then_equals_prompt_tuning():
    backbone = HFText("tiny-bert")
    dept = DePT(backbone, ["neg", "pos", "mixed"], num_virtual_tokens=5, rank=4, max_length=48, init="vocab").eval()
    assert torch.count_nonzero(dept.offset()) == 0
    bound = 1 / math.sqrt(4)  # kaiming_uniform_(a=sqrt(5)) on (s, r)
    assert dept.offset.A.abs().max() <= bound and dept.offset.A.abs().max() > 0.8 * bound
    tuning = PromptTuning(backbone, ["neg", "pos", "mixed"], num_virtual_tokens=5).eval()
    with torch.no_grad():
        tuning.prompt.embedding.copy_(dept.prompt.embedding)
        backbone.model.classifier.weight.normal_(0, 1)
        padded = dept.tokenize(TEXTS)
        assert padded["input_ids"].shape == (3, 48)  # padded to s, as the official code requires
        assert torch.allclose(dept(**padded).logits, tuning(**tuning.tokenize(TEXTS)).logits, atol=1e-5)


@pytest.mark.parametrize(
    "name,task", [("tiny-bert", "sequence-classification"), ("tiny-gemma3", "causal-lm"), ("tiny-t5", "seq2seq-lm")]
)
def test_forward_is_the_official_formula_with_the_offset_on_every_position(name, task):
    backbone = HFText(name, task=task)
    method = DePT(backbone, ["neg", "pos"], num_virtual_tokens=3, rank=4, max_length=48).eval()
    with torch.no_grad():
        method.offset.B.normal_(0, 1)  # a trained, non-zero offset
        for head in backbone.head_modules().values():
            head.weight.normal_(0, 1)
    tokens = method.tokenize(TEXTS)
    with torch.no_grad():
        ours = method(**tokens).logits
        full = official_dept_logits(method, tokens["input_ids"], tokens["attention_mask"]).logits
        if task == "causal-lm":
            last = tokens["attention_mask"].sum(1) - 1 + 3
            full = full[torch.arange(3), last][:, method.label_word_ids]
        if task == "seq2seq-lm":  # the label words as the decoder's first token
            full = full[:, 0][:, method.label_word_ids]
        without = backbone.forward_embeddings(method.prompt(), **tokens).logits
        if task != "sequence-classification":
            without = without[:, method.label_word_ids]
    assert torch.allclose(ours, full, atol=1e-5)
    assert not torch.allclose(ours, without, atol=1e-3)


def test_the_padding_positions_get_their_offset_rows(monkeypatch):
    backbone = HFText("tiny-bert")
    method = DePT(backbone, ["neg", "pos"], num_virtual_tokens=3, rank=4, max_length=32)
    with torch.no_grad():
        method.offset.B.normal_(0, 1)
    seen = {}

    def capture(prompt, input_ids, attention_mask, output_hidden_states=False, hooks=None, input_offset=None):
        seen["offset"], seen["ids"] = input_offset, input_ids
        return original(prompt, input_ids, attention_mask, output_hidden_states, hooks, input_offset)

    original = backbone.forward_embeddings
    monkeypatch.setattr(backbone, "forward_embeddings", capture)
    method(**method.tokenize(["dull"]))
    assert seen["ids"].shape == (1, 32) and seen["offset"].shape == (32, 32)
    assert torch.allclose(seen["offset"], method.offset.scale * method.offset.A @ method.offset.B)
    assert seen["offset"][10:].abs().sum() > 0  # rows of pad positions are added too


@pytest.mark.parametrize("name,task", [("tiny-bert", "sequence-classification"), ("tiny-gpt2", "causal-lm")])
def test_padding_to_the_longest_text_gives_the_same_logits(name, task):
    padded = DePT(HFText(name, task=task), ["neg", "pos"], num_virtual_tokens=3, rank=4, max_length=64).eval()
    short = DePT(
        HFText(name, task=task), ["neg", "pos"], num_virtual_tokens=3, rank=4, max_length=64, pad_to_max_length=False
    ).eval()
    with torch.no_grad():
        padded.offset.B.normal_(0, 1)
    short.load_state_dict(padded.state_dict())
    long_tokens, short_tokens = padded.tokenize(TEXTS), short.tokenize(TEXTS)
    assert long_tokens["input_ids"].shape[1] == 64 > short_tokens["input_ids"].shape[1]
    with torch.no_grad():
        assert torch.allclose(padded(**long_tokens).logits, short(**short_tokens).logits, atol=1e-5)


def test_budget_matches_a_vanilla_prompt():
    assert matched_prompt_length(100, 256, 30, 768) == 60  # DePT's GLUE setting on T5-base
    assert matched_prompt_length(100, 256, 45, 768) == 40  # and its BoolQ setting
    assert DePT.trainable_parameter_count(60, 256, 30, 768) == 100 * 768
    with pytest.raises(ConfigurationError, match="no prompt tokens"):
        matched_prompt_length(10, 256, 30, 768)
    method = DePT(HFText("tiny-bert"), ["neg", "pos"], budget_tokens=20, rank=2, max_length=64)
    # 20 tokens of d = 32 are 640 parameters: m = (640 - 64*2 - 2*32) // 32 = 14
    assert method.prompt.num_tokens == 14
    counted = sum(p.numel() for p in [*method.prompt.parameters(), *method.offset.parameters()])
    assert counted == 14 * 32 + 64 * 2 + 2 * 32 <= 20 * 32


def test_two_learning_rates_and_the_trained_parameters(trainer_kwargs):
    data = TextClassificationDataModule(synthetic=SyntheticText(examples_per_class=8), batch_size=8)
    method = DePT(HFText("tiny-bert"), data.classnames, num_virtual_tokens=3, rank=4, max_length=48, offset_lr=0.01)
    optimizer = method.configure_optimizers()
    lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert lrs == {"prompt": 0.3, "offset": 0.01, "head": 0.3}
    assert optimizer.defaults["eps"] == 1e-6 and optimizer.defaults["weight_decay"] == 0.0
    B = method.offset.B.detach().clone()
    Trainer(max_steps=2, **trainer_kwargs).fit(method, data)
    assert not torch.equal(method.offset.B, B)  # B leaves zero after the first step
    trainable = {n for n, p in method.named_parameters() if p.requires_grad}
    assert trainable == {
        "prompt.embedding",
        "offset.A",
        "offset.B",
        "backbone.model.classifier.weight",
        "backbone.model.classifier.bias",
    }


def test_text_init_is_the_official_instruction_repeated():
    backbone = HFText("tiny-bert")
    method = DePT(backbone, ["neg", "pos"], num_virtual_tokens=50, rank=2, max_length=32)
    ids = backbone.tokenizer("Classify this text is positive or not:")["input_ids"]
    expected = backbone.word_embeddings.weight[torch.tensor((ids * 2)[:50])]
    assert torch.equal(method.prompt.embedding.detach(), expected)


def test_bad_lengths_fail_before_training():
    with pytest.raises(ContextLengthError, match="context of 128"):
        DePT(HFText("tiny-bert"), ["neg", "pos"], num_virtual_tokens=10, max_length=256)
    method = DePT(HFText("tiny-bert"), ["neg", "pos"], num_virtual_tokens=3, rank=2, max_length=8)
    with pytest.raises(ContextLengthError):
        method.tokenize(["a text far longer than eight character tokens"])
    with pytest.raises(NotImplementedError, match="no PEFT adapter type"):
        method.export_peft("unused")
