"""Prefix tuning / P-tuning v2: per-layer keys and values, pinned to a hand-written encoder and to PEFT."""

from __future__ import annotations

import copy
import inspect
import math

import pytest
import torch
from lightning.pytorch import Trainer
from peft import PeftModel
from torch.nn import functional as F

from lightning_prompts.backbones import HFText
from lightning_prompts.data import SyntheticText, TextClassificationDataModule
from lightning_prompts.methods.prefix_tuning import PrefixTuning, peft_runs_prefix_classification

TEXTS = ["the film was great and moving", "dull", "an awful, tedious and clumsy film with a weak plot!"]


def bert_with_prefix(model, input_ids, attention_mask, keys, values):
    """BERT's sequence classification written out by hand, every layer's attention reading ``m`` extra
    keys/values first and the text's positions starting at ``m`` (P-tuning v2's past_key_values)."""
    bert, config = model.bert, model.config
    m = keys[0].shape[0]
    heads = config.num_attention_heads
    width = config.hidden_size // heads
    positions = torch.arange(m, m + input_ids.shape[1])
    emb = bert.embeddings
    h = emb.word_embeddings(input_ids) + emb.position_embeddings(positions) + emb.token_type_embeddings.weight[0]
    h = emb.LayerNorm(h)
    visible = torch.cat([torch.ones(input_ids.shape[0], m), attention_mask.float()], 1)
    bias = (1 - visible)[:, None, None, :] * torch.finfo(h.dtype).min
    for layer, key_p, value_p in zip(bert.encoder.layer, keys, values):
        att = layer.attention.self

        def split(x):
            return x.view(x.shape[0], -1, heads, width).transpose(1, 2)

        q = split(att.query(h))
        k = split(torch.cat([key_p.expand(h.shape[0], -1, -1), att.key(h)], 1))
        v = split(torch.cat([value_p.expand(h.shape[0], -1, -1), att.value(h)], 1))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(width) + bias, dim=-1)
        context = (weights @ v).transpose(1, 2).reshape(h.shape)
        h = layer.attention.output.LayerNorm(layer.attention.output.dense(context) + h)
        h = layer.output.LayerNorm(layer.output.dense(F.gelu(layer.intermediate.dense(h))) + h)
    pooled = torch.tanh(bert.pooler.dense(h[:, 0]))
    return model.classifier(pooled)


def test_encoder_prefixes_match_a_hand_written_bert():
    backbone = HFText("tiny-bert")
    method = PrefixTuning(backbone, ["neg", "pos", "mixed"], num_virtual_tokens=3, seed=1).eval()
    with torch.no_grad():  # a head large enough that classes score differently
        backbone.model.classifier.weight.normal_(0, 1)
    tokens = method.tokenize(TEXTS)
    table = method.prefix().detach()  # (m, L, 2, W)
    with torch.no_grad():
        ours = method(**tokens).logits
        expected = bert_with_prefix(
            backbone.model,
            tokens["input_ids"],
            tokens["attention_mask"],
            table[:, :, 0].unbind(1),
            table[:, :, 1].unbind(1),
        )
        without = backbone.forward_embeddings(None, **tokens).logits
    assert ours.shape == (3, 3)
    assert torch.allclose(ours, expected, atol=1e-5)
    assert not torch.allclose(ours, without, atol=1e-3)  # the prefixes do change the output
    trainable = {n for n, p in method.named_parameters() if p.requires_grad}
    assert trainable == {"prefix.table", "backbone.model.classifier.weight", "backbone.model.classifier.bias"}


def test_the_prefix_starts_as_p_tuning_v2s_from_pretrained_leaves_it_or_as_peft():
    """P-tuning v2 builds its PrefixEncoder inside a model loaded with from_pretrained, which initialises what the
    checkpoint lacks with _init_weights: N(0, initializer_range) weights, zero biases; PEFT keeps N(0, 1)."""
    backbone = HFText("tiny-bert", task="sequence-classification")
    spread = backbone.model.config.initializer_range
    table = PrefixTuning(backbone, ["a", "b"], num_virtual_tokens=64).prefix.table
    assert table.std().item() == pytest.approx(spread, rel=0.1) and abs(table.mean().item()) < spread / 5
    projected = PrefixTuning(backbone, ["a", "b"], num_virtual_tokens=64, projection_hidden=32).prefix
    assert projected.table.std().item() == pytest.approx(spread, rel=0.1)
    for linear in (projected.projection[0], projected.projection[2]):
        assert linear.weight.std().item() == pytest.approx(spread, rel=0.1) and not linear.bias.any()
    peft = PrefixTuning(backbone, ["a", "b"], num_virtual_tokens=64, init="peft").prefix.table
    assert peft.std().item() == pytest.approx(1.0, rel=0.1)
    with pytest.raises(ValueError, match="init must be"):
        PrefixTuning(backbone, ["a", "b"], init="zeros")


def test_reparameterisation_is_p_tuning_v2s_mlp():
    method = PrefixTuning(HFText("tiny-bert"), ["a", "b"], num_virtual_tokens=4, projection_hidden=8)
    mlp = method.prefix.projection
    first, last = mlp[0], mlp[2]
    table = method.prefix.table
    expected = F.linear(torch.tanh(F.linear(table, first.weight, first.bias)), last.weight, last.bias)
    assert torch.allclose(method.prefix.flat(), expected)
    assert method.prefix().shape == (4, 2, 2, 32)  # m, layers, key/value, heads * head_dim
    assert {n for n, p in method.named_parameters() if p.requires_grad and n.startswith("prefix")} == {
        "prefix.table",
        "prefix.projection.0.weight",
        "prefix.projection.0.bias",
        "prefix.projection.2.weight",
        "prefix.projection.2.bias",
    }


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-gemma3"])
@pytest.mark.parametrize("projection_hidden", [None, 16])
def test_causal_lm_matches_peft_after_export(name, projection_hidden, trainer_kwargs, tmp_path):
    backbone = HFText(name, task="causal-lm")
    data = TextClassificationDataModule(synthetic=SyntheticText(examples_per_class=8), batch_size=8)
    method = PrefixTuning(
        backbone,
        data.classnames,
        num_virtual_tokens=5,
        projection_hidden=projection_hidden,
        text_template="{text} it was",
    )
    before = method.prefix.flat().detach().clone()
    Trainer(max_steps=3, **trainer_kwargs).fit(method, data)
    method.eval()
    assert not torch.allclose(method.prefix.flat(), before)  # it trained
    directory = method.export_peft(tmp_path / "adapter")
    peft_model = PeftModel.from_pretrained(copy.deepcopy(backbone.model), str(directory)).eval()
    tokens = method.tokenize(TEXTS)
    with torch.no_grad():
        ours = method(tokens["input_ids"], tokens["attention_mask"]).logits
        full = peft_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).logits
        plain = backbone.forward_embeddings(None, **tokens).logits[:, method.label_word_ids]
    last = tokens["attention_mask"].sum(1) - 1  # the prefix is in the cache, not in the sequence
    theirs = full[torch.arange(len(TEXTS)), last][:, method.label_word_ids]
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.allclose(ours, plain, atol=1e-4)


def peft_prefix_classification_logits(peft_model, input_ids, attention_mask):
    """PEFT's prefix-tuning forward for sequence classification (``PeftModelForSequenceClassification``):
    run by PEFT itself where it can (transformers 4.x); otherwise (transformers 5 renamed ``past_key_values``
    to ``cache`` and PEFT 0.21 refuses) the same steps written out, with PEFT's own prompt and head."""
    base = peft_model.base_model
    if peft_runs_prefix_classification(base):
        return peft_model(input_ids=input_ids, attention_mask=attention_mask).logits
    prefix = peft_model.get_prompt(input_ids.shape[0])  # the adapter's keys and values, as PEFT lays them out
    mask = torch.cat(
        [
            attention_mask.new_ones(input_ids.shape[0], peft_model.peft_config["default"].num_virtual_tokens),
            attention_mask,
        ],
        1,
    )
    if "cache" in inspect.signature(base.forward).parameters:  # decoders: the model with its own head
        return base(input_ids=input_ids, attention_mask=mask, cache=prefix).logits
    backbone = base.get_submodule(peft_model.transformer_backbone_name)  # encoders: backbone, pooler output, head
    pooled = backbone(input_ids=input_ids, attention_mask=mask, cache=prefix)[1]
    return base.get_submodule(peft_model.cls_layer_name)(pooled)


@pytest.mark.parametrize(("name", "pooling"), [("tiny-bert", "model"), ("tiny-gpt2", "last"), ("tiny-gemma3", "last")])
def test_sequence_classification_matches_peft_after_export(name, pooling, trainer_kwargs, tmp_path):
    backbone = HFText(name, task="sequence-classification", pooling=pooling)
    data = TextClassificationDataModule(synthetic=SyntheticText(examples_per_class=8), batch_size=8)
    method = PrefixTuning(backbone, data.classnames, num_virtual_tokens=4)
    head_before = backbone.model.get_submodule(next(iter(backbone.head_modules()))).weight.detach().clone()
    Trainer(max_steps=3, **trainer_kwargs).fit(method, data)
    method.eval()
    (head,) = backbone.head_modules().values()
    assert not torch.allclose(head.weight, head_before)  # the head trained, so the adapter must carry it
    if peft_runs_prefix_classification(backbone.model):
        directory = method.export_peft(tmp_path / "adapter")
    else:
        with pytest.warns(UserWarning, match="transformers 4.57"):
            directory = method.export_peft(tmp_path / "adapter")
    fresh = copy.deepcopy(backbone.model)
    with torch.no_grad():  # PEFT must bring the trained head, not keep the base model's
        fresh.get_submodule(next(iter(backbone.head_modules()))).weight.normal_()
    peft_model = PeftModel.from_pretrained(fresh, str(directory)).eval()
    tokens = method.tokenize(TEXTS)
    with torch.no_grad():
        ours = method(tokens["input_ids"], tokens["attention_mask"]).logits
        theirs = peft_prefix_classification_logits(peft_model, tokens["input_ids"], tokens["attention_mask"])
        plain = backbone.forward_embeddings(None, **tokens).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.allclose(ours, plain, atol=1e-4)


@pytest.mark.parametrize(("name", "pooling"), [("tiny-bert", "mean"), ("tiny-bert", "cls"), ("tiny-gpt2", "model")])
def test_sequence_classification_export_refuses_a_pooling_peft_does_not_compute(name, pooling, tmp_path):
    method = PrefixTuning(HFText(name, pooling=pooling), ["a", "b"], num_virtual_tokens=2)
    with pytest.raises(NotImplementedError, match=f"pooling={pooling!r}"):
        method.export_peft(tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()


def test_the_prefix_takes_positions_from_the_context():
    backbone = HFText("tiny-bert", max_length=16)
    method = PrefixTuning(backbone, ["a", "b"], num_virtual_tokens=6)
    assert method.reserved_tokens == 6
    assert method.tokenize(["abc"])["input_ids"].shape[1] <= 10


GENERATION_TEXTS = [
    "the film was great and moving",
    "dull",
    "an awful, tedious and clumsy film with a weak plot!",
    "dire",
]


@pytest.mark.parametrize(("name", "std"), [("tiny-gpt2", 0.5), ("tiny-gemma3", 0.1)])
def test_generate_after_the_prefixes_is_greedy_decoding_over_our_forward(name, std):
    """Texts of three token lengths (two of one): each continued exactly as a greedy loop over our forward with the
    prefixes continues it alone. Batched with padding between the prefix cache and the text, Gemma-3 (sliding
    window) generated otherwise: texts run in groups of one length."""
    torch.manual_seed(0)
    backbone = HFText(name, task="causal-lm")
    with torch.no_grad():
        for param in backbone.model.parameters():
            param.normal_(std=std)
    method = PrefixTuning(backbone, ["good", "bad"], num_virtual_tokens=3, text_template="{text} so:")
    with torch.no_grad():
        for param in method.prefix.parameters():
            param.normal_(std=1.0)  # prefixes that change what the model says
    references = []
    for text in GENERATION_TEXTS:
        tokens = method.tokenize([text])
        ids, mask = tokens["input_ids"], tokens["attention_mask"]
        generated = []
        with torch.no_grad():
            for _ in range(6):
                token = backbone.forward_embeddings(None, ids, mask, hooks=method.prefix.hooks()).logits.argmax(-1)
                generated.append(int(token))
                ids, mask = torch.cat([ids, token[:, None]], dim=1), torch.cat([mask, mask.new_ones(1, 1)], dim=1)
        references.append(generated)
    assert method.generate(GENERATION_TEXTS, decode=False, max_new_tokens=6).tolist() == references
    assert len({tuple(row) for row in references[:3]}) == 3  # each text is continued differently
    assert method.generate(GENERATION_TEXTS[:1], max_new_tokens=6) == backbone.tokenizer.batch_decode(
        [references[0]], skip_special_tokens=True
    )
