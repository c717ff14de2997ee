"""VPT: prompt tokens land right after [CLS] (shallow) and replace the slot before each block (deep)."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_prompts.backbones import TimmViT
from lightning_prompts.methods import VPT


def reference_vpt_features(vit: TimmViT, images, first, deep):
    """VPT's PromptedTransformer, re-written on top of timm's pieces."""
    model = vit.model
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))  # [CLS, patches] + pos
    b, n = x.shape[0], first.shape[0]
    x = torch.cat([x[:, :1], first.expand(b, -1, -1), x[:, 1:]], dim=1)  # [CLS, P, patches]
    for index, block in enumerate(model.blocks):
        if deep is not None and index > 0:
            x = torch.cat([x[:, :1], deep[index - 1].expand(b, -1, -1), x[:, 1 + n :]], dim=1)
        x = block(x)
    x = model.norm(x)
    return x[:, 0], x


@pytest.mark.parametrize("deep", [False, True])
def test_prompt_placement_matches_reference(tiny_vit, deep):
    torch.manual_seed(0)
    method = VPT(tiny_vit, ["a", "b", "c"], num_tokens=4, deep=deep)
    images = torch.randn(2, 3, 32, 32)
    first = method.prompt.tokens.detach()
    deep_tokens = method.prompt.deep_tokens.detach() if deep else None
    cls, _ = reference_vpt_features(tiny_vit, images, first, deep_tokens)
    output = method(images)
    assert torch.allclose(output.pooled_features, cls, atol=1e-5)
    assert torch.allclose(output.logits, method.head(cls), atol=1e-5)
    assert output.patch_tokens.shape == (2, 16, 32)


def test_deep_prompts_replace_rather_than_accumulate(tiny_vit):
    method = VPT(tiny_vit, ["a", "b"], num_tokens=2, deep=True)
    encoding = tiny_vit.forward_features(torch.randn(1, 3, 32, 32), *method.prompt())
    assert encoding.prompt_tokens.shape[1] == 2  # the sequence never grows
    assert method.prompt.deep_tokens.shape == (tiny_vit.depth - 1, 2, 32)


def test_initialisation_and_head_follow_the_official_code(tiny_vit):
    torch.manual_seed(0)
    method = VPT(tiny_vit, [str(i) for i in range(10)], num_tokens=50)
    bound = math.sqrt(6.0 / (3 * 8 * 8 + 32))  # patch 8, width 32
    tokens = method.prompt.tokens.detach()
    assert tokens.abs().max() <= bound and tokens.abs().max() > 0.9 * bound
    assert torch.allclose(method.head.bias, torch.full((10,), -math.log(99)))
    groups = {g["name"]: g for g in method.param_groups()}
    assert set(groups) == {"prompt", "head", "head_bias"} and groups["head_bias"]["weight_decay"] == 0.0
    optimizer = method.configure_optimizers()
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-4, 1e-4, 0.0]
    trainable = {n for n, p in method.named_parameters() if p.requires_grad}
    assert trainable == {"prompt.tokens", "head.weight", "head.bias"}


def test_no_prompts_reproduces_timm(tiny_vit):
    images = torch.randn(2, 3, 32, 32)
    encoding = tiny_vit.forward_features(images)
    model = tiny_vit.model
    assert torch.allclose(
        encoding.pooled, model.forward_head(model.forward_features(images), pre_logits=True), atol=1e-6
    )
