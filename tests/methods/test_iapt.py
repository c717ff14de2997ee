"""IAPT: per-input, per-layer generated soft tokens, pinned to a hand-written BERT and the generator equations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_prompts.backbones import HFText
from lightning_prompts.methods import IAPT
from lightning_prompts.prompts.instance_prompts import AttentionPooling, RationalActivation

TEXTS = ["the film was great and moving", "dull", "an awful, tedious and clumsy film"]


def test_rational_activation_and_attention_pooling_by_hand():
    x = torch.linspace(-3, 3, 13)
    rational = RationalActivation()
    assert torch.allclose(rational(x), x)  # the identity at initialisation
    with torch.no_grad():
        rational.numerator.copy_(torch.tensor([0.1, 1.0, 0.5, -0.2, 0.05, 0.01]))
        rational.denominator.copy_(torch.tensor([0.3, -0.1, 0.2, 0.05]))
    p = sum(c * x**k for k, c in enumerate([0.1, 1.0, 0.5, -0.2, 0.05, 0.01]))
    q = 1 + (0.3 * x - 0.1 * x**2 + 0.2 * x**3 + 0.05 * x**4).abs()
    assert torch.allclose(rational(x), p / q, atol=1e-5)
    pool = AttentionPooling(4)
    with torch.no_grad():
        pool.query.copy_(torch.tensor([1.0, -1.0, 0.5, 2.0]))
    hidden, mask = (
        torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0)),
        torch.tensor([[1, 1, 0], [1, 1, 1]]),
    )
    weights = torch.softmax((hidden @ pool.query / 2).masked_fill(mask == 0, -1e9), -1)
    assert torch.allclose(pool(hidden, mask), (weights.unsqueeze(-1) * hidden).sum(1), atol=1e-6)


def generated(gen, layer, hidden, mask):
    """Layer ``layer``'s tokens written out: each state divided by its RMS, attention-pooled, down, rational, up."""
    normed = hidden / hidden.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
    generator = gen.layers[layer]
    scores = (normed @ generator.pool.query / math.sqrt(hidden.shape[-1])).masked_fill(mask == 0, -1e9)
    pooled = (torch.softmax(scores, -1).unsqueeze(-1) * normed).sum(1)
    return gen.up(generator.activation(generator.down(pooled))).view(hidden.shape[0], gen.num_tokens, -1)


def bert_with_generated_prompts(method, input_ids, mask, add=False):
    """BERT's classification written out, the n slot positions at the front replaced before every layer
    l >= 1 by the generator of layer l fed with that layer's text states (``add``: S + rms(S) · T_l)."""
    model, gen = method.backbone.model, method.generators
    bert, n = model.bert, gen.num_tokens
    heads = model.config.num_attention_heads
    width = model.config.hidden_size // heads
    words = bert.embeddings.word_embeddings(input_ids)
    first = generated(gen, 0, words, mask)
    embeds = torch.cat([first, words], 1)
    positions = torch.arange(embeds.shape[1])
    h = bert.embeddings.LayerNorm(
        embeds + bert.embeddings.position_embeddings(positions) + bert.embeddings.token_type_embeddings.weight[0]
    )
    full = torch.cat([torch.ones(mask.shape[0], n), mask.float()], 1)
    bias = (1 - full)[:, None, None, :] * torch.finfo(h.dtype).min
    for index, layer in enumerate(bert.encoder.layer):
        if index >= 1:
            fresh = generated(gen, index, h[:, n:], mask)
            if add:
                fresh = h[:, :n] + h[:, :n].pow(2).mean(-1, keepdim=True).sqrt() * fresh
            h = torch.cat([fresh, h[:, n:]], 1)
        att = layer.attention.self

        def split(x):
            return x.view(x.shape[0], -1, heads, width).transpose(1, 2)

        q, k, v = split(att.query(h)), split(att.key(h)), split(att.value(h))
        context = (torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(width) + bias, -1) @ v).transpose(1, 2)
        h = layer.attention.output.LayerNorm(layer.attention.output.dense(context.reshape(h.shape)) + h)
        h = layer.output.LayerNorm(layer.output.dense(F.gelu(layer.intermediate.dense(h))) + h)
    return model.classifier(torch.tanh(bert.pooler.dense(h[:, 0])))


@pytest.mark.parametrize("slot_update", ["replace", "add"])
def test_forward_matches_a_hand_written_bert_with_per_layer_generated_tokens(slot_update):
    backbone = HFText("tiny-bert")
    method = IAPT(backbone, ["neg", "pos", "mixed"], num_virtual_tokens=2, bottleneck=4, slot_update=slot_update)
    method.eval()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # trained-looking generators: input-dependent tokens, layers that differ
        for parameter in method.generators.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)
        backbone.model.classifier.weight.normal_(0, 1)
    tokens = method.tokenize(TEXTS)
    with torch.no_grad():
        ours = method(**tokens).logits
        expected = bert_with_generated_prompts(
            method, tokens["input_ids"], tokens["attention_mask"], slot_update == "add"
        )
    assert torch.allclose(ours, expected, atol=1e-5)
    gen = method.generators
    words = backbone.word_embeddings(tokens["input_ids"])
    per_input = gen(0, words, tokens["attention_mask"])
    assert not torch.allclose(per_input[0], per_input[1], atol=1e-4)  # tokens depend on the input


def test_at_initialisation_every_input_gets_the_same_base_prompt_and_only_generators_train():
    method = IAPT(HFText("tiny-bert"), ["neg", "pos"], num_virtual_tokens=4, bottleneck=8)
    words = method.backbone.word_embeddings(method.tokenize(TEXTS)["input_ids"])
    tokens = method.generators(0, words, torch.ones(words.shape[:2]))
    assert torch.equal(tokens[0], tokens[2]) and tokens.shape == (3, 4, 32)
    F.cross_entropy(method(**method.tokenize(TEXTS)).logits, torch.tensor([1, 0, 0])).backward()
    trainable = {n for n, p in method.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in method.generators.named_parameters(prefix="generators")} | {
        "backbone.model.classifier.weight",
        "backbone.model.classifier.bias",
    }
    assert method.generators.up.weight.grad.abs().sum() > 0
    assert len(method.generators.layers) == method.backbone.num_layers  # its own activation per layer


def test_added_slot_starts_as_the_layer_0_prompt_carried_through_and_the_codes_ignore_the_residual_scale():
    # "add" with a zero base prompt beyond layer 0 is the backbone run on the layer-0 prompt alone: the slot is
    # what the model makes of it, not a vector the layer never saw (why pre-norm decoders need it)
    method = IAPT(HFText("tiny-bert"), ["neg", "pos"], num_virtual_tokens=3, bottleneck=4, slot_update="add").eval()
    tokens = method.tokenize(TEXTS)
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    with torch.no_grad():
        method.generators.up.weight.normal_(0, 1)  # a per-input layer-0 prompt...
        method.generators.up.bias.zero_()
        for layer in method.generators.layers[1:]:
            layer.activation.numerator.zero_()  # ...and a zero code, so no update, at layers >= 1
        first = method.generators(0, method.backbone.word_embeddings(ids), mask)
        ours = method.run_model(ids, mask, False).logits
        plain = method.backbone.forward_embeddings(first, ids, mask).logits
    assert torch.allclose(ours, plain, atol=1e-6)
    layer = method.generators.layers[1]
    hidden = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(layer(hidden * 1000, torch.ones(2, 5)), layer(hidden, torch.ones(2, 5)), atol=1e-5)


def test_an_unknown_slot_update_is_refused():
    with pytest.raises(ValueError, match="slot_update"):
        IAPT(HFText("tiny-bert"), ["neg", "pos"], slot_update="insert")
