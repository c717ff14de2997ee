"""MaPLe against an independent re-computation of the official forward pass (muzairkhattak/
multimodal-prompt-learning: MultiModalPromptLearner, TextEncoder, VisionTransformer_MaPLe)."""

from __future__ import annotations

import pytest
import torch

from lightning_prompts.backbones import StandInCLIP
from lightning_prompts.methods import MaPLe

CLASSNAMES = ["cat", "golden retriever", "sports car"]


def official_maple_logits(clip, prompt, images):
    model, visual = clip.model, clip.model.visual
    n = prompt.n_ctx
    ctx = prompt.text.ctx
    # text: [SOS, ctx, "of a <class>.", EOT, pad] + pos; blocks 1..depth-1 overwrite positions 1..n
    prompts = torch.cat([prompt.text.token_prefix, ctx.expand(len(CLASSNAMES), -1, -1), prompt.text.token_suffix], 1)
    x = prompts + model.positional_embedding
    for index, block in enumerate(model.transformer.resblocks):
        if 1 <= index <= len(prompt.deep_text):
            deep = prompt.deep_text[index - 1].expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :1], deep, x[:, 1 + n :]], 1)
        x = block(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    text = x[torch.arange(x.shape[0]), prompt.text.eot_positions] @ model.text_projection
    # vision: [CLS, patches] + pos, then append proj(ctx), ln_pre; blocks drop the last n and append proj_i(deep_i)
    y = visual.conv1(images).flatten(2).transpose(1, 2)
    y = torch.cat([visual.class_embedding.expand(y.shape[0], 1, -1), y], 1) + visual.positional_embedding
    y = visual.ln_pre(torch.cat([y, prompt.projection(ctx).expand(y.shape[0], -1, -1)], 1))
    for index, block in enumerate(visual.transformer.resblocks):
        if 1 <= index <= len(prompt.deep_text):
            deep = prompt.deep_projections[index - 1](prompt.deep_text[index - 1]).expand(y.shape[0], -1, -1)
            y = torch.cat([y[:, : y.shape[1] - n], deep], 1)
        y = block(y)
    image = visual.ln_post(y[:, 0]) @ visual.proj
    image, text = image / image.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)
    return model.logit_scale.exp() * image @ text.t()


def test_logits_match_the_official_forward(tiny_clip):
    torch.manual_seed(0)
    model = MaPLe(tiny_clip, CLASSNAMES, n_ctx=2, ctx_init="a photo of a", depth=2)
    with torch.no_grad():  # make every coupled piece matter
        for projection in model.prompt.deep_projections:
            projection.weight.normal_(std=0.1)
    images = torch.randn(2, 3, 32, 32)
    expected = official_maple_logits(tiny_clip, model.prompt, images)
    assert torch.allclose(model(images).logits, expected, atol=1e-4), (model(images).logits - expected).abs().max()


def test_coupling_and_initialisation_follow_the_official_code(tiny_clip):
    torch.manual_seed(0)
    model = MaPLe(tiny_clip, CLASSNAMES, n_ctx=2, depth=2)
    prompt = model.prompt
    assert prompt.text.prompt_prefix == "a photo of a" and prompt.n_ctx == 2  # "of a" stays fixed
    assert len(prompt.deep_text) == 1 and prompt.deep_text[0].shape == (2, tiny_clip.text_width)
    first, deep = prompt.vision_prompts()
    assert torch.equal(first, prompt.projection(prompt.text.ctx))
    assert torch.equal(deep[0], prompt.deep_projections[0](prompt.deep_text[0]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        "prompt.text.ctx",
        "prompt.deep_text.0",
        "prompt.projection.weight",
        "prompt.projection.bias",
        "prompt.deep_projections.0.weight",
        "prompt.deep_projections.0.bias",
    }


def test_a_cnn_image_tower_needs_text_only_prompting():
    stand_in = StandInCLIP("tiny")
    with pytest.raises(NotImplementedError, match="vision_prompts: false"):
        MaPLe(stand_in, CLASSNAMES, depth=2)
    model = MaPLe(stand_in, CLASSNAMES, depth=2, vision_prompts=False)
    assert model(torch.randn(2, 3, 64, 64)).logits.shape == (2, 3)


def test_depth_is_checked(tiny_clip):
    with pytest.raises(ValueError, match="depth must be in 1..12"):
        MaPLe(tiny_clip, CLASSNAMES, depth=13)
