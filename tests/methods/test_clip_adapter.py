"""CLIP-Adapter against an independent re-computation of the official forward pass (gaopengcuhk/CLIP-Adapter)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from helpers import synthetic_fewshot
from lightning.pytorch import Trainer

from lightning_prompts.methods import CLIPAdapter


def official_logits(clip, adapter_layers, images, texts, ratio):
    """The official CustomCLIP.forward: the adapter on the image feature, blended, both sides normalised."""
    image = clip.encode_image(images).features
    hidden = F.relu(image @ adapter_layers[0].weight.t())  # Linear(d, d/4, bias=False) + ReLU
    adapted = F.relu(hidden @ adapter_layers[2].weight.t())  # Linear(d/4, d, bias=False) + ReLU
    image = ratio * adapted + (1 - ratio) * image
    text = clip.encode_text(texts)
    image, text = image / image.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)
    return clip.logit_scale * image @ text.t()


def test_forward_is_the_official_formula(tiny_clip):
    torch.manual_seed(0)
    model = CLIPAdapter(tiny_clip, ["tabby cat", "golden_retriever"], template="a photo of a {}, a type of pet.")
    with torch.no_grad():  # weights large enough that the adapter changes which class wins
        for layer in model.adapter.layers:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.normal_(std=0.5)
    images = torch.randn(3, 3, 32, 32)
    texts = ["a photo of a tabby cat, a type of pet.", "a photo of a golden retriever, a type of pet."]
    expected = official_logits(tiny_clip, model.adapter.layers, images, texts, 0.2)
    with torch.no_grad():
        logits = model(images).logits
    assert torch.allclose(logits, expected, atol=1e-5)
    zero_shot = official_logits(tiny_clip, model.adapter.layers, images, texts, 0.0)  # r = 0: CLIP itself
    assert not torch.allclose(logits, zero_shot, atol=1e-3)  # the adapter changes the scores


def test_only_the_adapter_trains_and_text_features_are_computed_once(tiny_clip, trainer_kwargs, monkeypatch):
    data = synthetic_fewshot()
    model = CLIPAdapter(tiny_clip, data.classnames)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "adapter.layers.0.weight",
        "adapter.layers.2.weight",
    }
    calls = []
    encode = type(tiny_clip).encode_text
    monkeypatch.setattr(type(tiny_clip), "encode_text", lambda self, *a, **k: calls.append(1) or encode(self, *a, **k))
    before = model.adapter.layers[0].weight.detach().clone()
    Trainer(max_steps=3, limit_val_batches=0, **trainer_kwargs).fit(model, data)
    assert not torch.equal(model.adapter.layers[0].weight, before)
    assert len(calls) == 1  # one class set, three steps: the frozen text side is encoded once
