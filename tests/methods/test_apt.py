"""APT: the approximated prompt against the official ``approximate_prompt`` written out, and the method's
forward against a block-by-block re-computation on timm's own pieces."""

from __future__ import annotations

import copy

import pytest
import torch

from lightning_prompts.methods.apt import APT
from lightning_prompts.prompts.approximated import ApproximatedPrompt


def official(module: ApproximatedPrompt, x: torch.Tensor, res: torch.Tensor) -> torch.Tensor:
    """``approximate_prompt.forward(x, res)`` of the official bert_model_apt.py (x: the attention output
    after its projection, res: the layer input)."""
    mm_tokens = module.tokens
    attn = torch.relu(res @ (mm_tokens + module.update(mm_tokens)).t())
    e = attn @ mm_tokens
    weights = attn.max(dim=-1, keepdim=True)[0].clone().detach()
    return (x + e * weights) * module.scale.exp()


def randomise(module: torch.nn.Module) -> None:
    torch.manual_seed(1)
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0, 0.3)


def test_the_approximated_prompt_is_the_official_module():
    fresh = ApproximatedPrompt(width=64, num_tokens=50, rank=4)
    assert fresh.scale.item() == 0.0 and 0.01 < fresh.tokens.std() < 0.03
    for layer in fresh.update:  # the official ViT re-initialises the module's linear layers: trunc-normal 0.02
        assert 0.01 < layer.weight.std() < 0.03
    randomise(fresh)
    hidden, output = torch.randn(2, 7, 64), torch.randn(2, 7, 64)
    torch.testing.assert_close(fresh(hidden, output), official(fresh, output, hidden))
    # the gate is a stop-gradient: the bank's gradient only flows through e = a P and a
    hidden.requires_grad_(True)
    fresh(hidden, output).sum().backward()
    mine = hidden.grad.clone()
    hidden.grad = None
    official(fresh, output, hidden).sum().backward()
    torch.testing.assert_close(mine, hidden.grad)


def test_apt_forward_adds_the_aggregation_to_every_attention_output(tiny_vit):
    backbone = copy.deepcopy(tiny_vit)  # randomise() rewrites the backbone too: not the session's shared one
    method = APT(backbone, ["a", "b", "c"], num_tokens=6, rank=2)
    randomise(method)
    method.eval()
    images = torch.randn(2, 3, 32, 32)
    model = backbone.model
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
    for block, prompt in zip(model.blocks, method.prompt):
        hidden = block.norm1(x)
        x = x + block.ls1(official(prompt, block.attn(hidden), hidden))
        x = x + block.ls2(block.mlp(block.norm2(x)))
    cls = model.norm(x)[:, 0]
    output = method.forward_batch({"image": images})
    torch.testing.assert_close(output.pooled_features, cls, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(output.logits, method.head(cls), rtol=1e-4, atol=1e-5)
    assert output.patch_tokens.shape == (2, 16, 32)  # no tokens were added


def test_layers_choose_which_blocks_get_a_bank(tiny_vit):
    method = APT(tiny_vit, ["a", "b"], num_tokens=4, rank=2, layers=[2])
    assert len(method.prompt) == 1
    with pytest.raises(ValueError, match="block indices"):
        APT(tiny_vit, ["a", "b"], layers=[3])
