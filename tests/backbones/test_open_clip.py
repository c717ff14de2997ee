"""The OpenCLIP backbone's seams: truncated text encoding is exact, prompts land where they should."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_prompts.backbones import OpenCLIP, build_backbone
from lightning_prompts.errors import ContextLengthError

PROMPTS = [
    "a photo of a cat.",
    "X X X X X X X X X X X X X X X X golden retriever.",
    "a.",
    "a photo of a " + "very " * 20 + "big dog.",
]


def full_77_token_pass(clip: OpenCLIP, embeddings: torch.Tensor, eot: torch.Tensor, deep=None) -> torch.Tensor:
    """What the official CoOp/MaPLe text encoder computes: every one of the 77 positions."""
    model = clip.model
    x = embeddings + model.positional_embedding
    for index, block in enumerate(model.transformer.resblocks):
        if deep and 1 <= index <= len(deep):
            x = torch.cat(
                [x[:, :1], deep[index - 1].expand(x.shape[0], -1, -1), x[:, 1 + deep[index - 1].shape[0] :]], 1
            )
        x = block(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    return x[torch.arange(x.shape[0]), eot] @ model.text_projection


def test_truncated_text_encoder_equals_full_pass(tiny_clip):
    ids = tiny_clip.tokenize(PROMPTS)
    embeddings, eot = tiny_clip.embed_tokens(ids), tiny_clip.eot_positions(ids)
    assert int(eot.max()) + 1 < 77  # the truncation really drops positions
    truncated = tiny_clip.encode_text_embeddings(embeddings, eot)
    reference = full_77_token_pass(tiny_clip, embeddings, eot)
    assert torch.allclose(truncated, reference, atol=1e-5)
    assert torch.allclose(truncated, tiny_clip.model.encode_text(ids), atol=1e-5)  # and open_clip's own pass


def test_truncation_is_exact_with_deep_prompts(tiny_clip):
    ids = tiny_clip.tokenize(PROMPTS[:2])
    embeddings, eot = tiny_clip.embed_tokens(ids), tiny_clip.eot_positions(ids)
    deep = [torch.randn(3, tiny_clip.text_width)]
    truncated = tiny_clip.encode_text_embeddings(embeddings, eot, deep_prompts=deep)
    assert torch.allclose(truncated, full_77_token_pass(tiny_clip, embeddings, eot, deep), atol=1e-5)
    plain = tiny_clip.encode_text_embeddings(embeddings, eot)
    assert not torch.allclose(truncated, plain, atol=1e-3)  # the deep prompts do something


@pytest.mark.parametrize("change", ["no causal mask", "last position", "first position"])
def test_text_towers_where_truncation_is_not_exact_run_every_position(tiny_clip, change):
    """The architecture page's exception: without a causal mask every output reads the padding after the text, and
    a feature read at the first or last position is not the end-of-text token's; such towers run all 77 positions
    (and never the shared prefix), equal to open_clip's own ``encode_text``."""
    import copy

    clip = copy.deepcopy(tiny_clip)
    with torch.no_grad():  # weights wide enough that the padding positions change what the feature reads
        for parameter in clip.model.transformer.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    if change == "no causal mask":
        clip.model.attn_mask = None
    else:
        clip.model.text_pool_type = change.split()[0]
    assert not clip.truncates_text
    ids = clip.tokenize(PROMPTS)
    embeddings, eot = clip.embed_tokens(ids), clip.eot_positions(ids)
    with torch.no_grad():
        ours = clip.encode_text_embeddings(embeddings, eot)
        torch.testing.assert_close(ours, clip.model.encode_text(ids), atol=1e-5, rtol=1e-5)
        if change == "no causal mask":  # what a truncated pass would have given differs
            cut = int(eot.max()) + 1
            x = clip.model.transformer(embeddings[:, :cut] + clip.model.positional_embedding[:cut])
            truncated = clip.model.ln_final(x)[torch.arange(len(PROMPTS)), eot] @ clip.model.text_projection
            assert not torch.allclose(truncated, ours, atol=1e-3)


def test_encode_image_matches_open_clip_and_returns_patch_tokens(tiny_clip):
    images = torch.randn(3, 3, 32, 32)
    encoding = tiny_clip.encode_image(images)
    assert torch.allclose(encoding.features, tiny_clip.model.encode_image(images), atol=1e-6)
    assert encoding.patch_tokens.shape == (3, 16, 48)


@pytest.mark.parametrize("location", ["append", "prepend"])
def test_visual_prompts_are_inserted_before_ln_pre_and_removed_before_pooling(tiny_clip, location):
    visual = tiny_clip.model.visual
    images, prompts = torch.randn(2, 3, 32, 32), torch.randn(3, 48)
    deep = [torch.randn(3, 48)]
    got = tiny_clip.encode_image(images, prompts, deep, location=location)
    # independent recomputation
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(2, 1, -1), x], 1) + visual.positional_embedding
    start = x.shape[1] if location == "append" else 1
    x = torch.cat([x[:, :start], prompts.expand(2, -1, -1), x[:, start:]], 1)
    x = visual.ln_pre(x)
    for index, block in enumerate(visual.transformer.resblocks):
        if index == 1:  # the one deep prompt replaces the slot before block 1
            x = torch.cat([x[:, :start], deep[0].expand(2, -1, -1), x[:, start + 3 :]], 1)
        x = block(x)
    x = torch.cat([x[:, :start], x[:, start + 3 :]], 1)
    x = visual.ln_post(x)
    assert torch.allclose(got.features, x[:, 0] @ visual.proj, atol=1e-5)
    assert torch.allclose(got.patch_tokens, x[:, 1:], atol=1e-5)


def test_too_long_prompt_is_an_error_not_a_silent_truncation(tiny_clip):
    with pytest.raises(ContextLengthError, match="context length 77"):
        tiny_clip.tokenize(["word " * 80])


def test_backbone_is_frozen_and_rebuildable_from_its_config(tiny_clip):
    assert not any(p.requires_grad for p in tiny_clip.parameters())
    tiny_clip.train()
    assert not tiny_clip.training and not tiny_clip.model.training
    rebuilt = build_backbone(tiny_clip.config())
    assert rebuilt.identity() == tiny_clip.identity()
    other = OpenCLIP("tiny", pretrained=None, seed=1)
    assert other.identity()["fingerprint"] != tiny_clip.identity()["fingerprint"]


def test_logit_scale_is_exp_of_the_parameter(tiny_clip):
    assert torch.isclose(tiny_clip.logit_scale, tiny_clip.model.logit_scale.exp())
    assert F.normalize(tiny_clip.encode_text(["a cat"]), dim=-1).norm().item() == pytest.approx(1.0)


def test_resnet_towers_encode_images_but_refuse_visual_prompts():
    """CoOp's paper backbone is RN50: the image path must work without the ViT seams."""
    clip = OpenCLIP("RN50", pretrained=None)
    assert not clip.is_vit and clip.context_length == 77
    images = torch.randn(1, 3, 224, 224)
    encoding = clip.encode_image(images)
    assert encoding.patch_tokens is None
    assert torch.allclose(encoding.features, clip.model.encode_image(images), atol=1e-5)
    with pytest.raises(NotImplementedError, match="ViT image tower"):
        clip.encode_image(images, prompts=torch.zeros(2, 64))
