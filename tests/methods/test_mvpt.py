"""MVPT (sIncerass/MVLPT, VPT.N_CTX 16 with COOP.N_CTX 0): the image feature equals a block-by-block
re-computation of the official ``ImageEncoder.forward`` (prompts after ln_pre, right after the class token,
replaced before every later block), the text side is CLIP's frozen template."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from helpers import official_mvlpt_image_features

from lightning_prompts.methods.mvpt import MVPT


def test_image_features_equal_the_official_encoder(tiny_clip):
    torch.manual_seed(0)
    method = MVPT(tiny_clip, ["cat", "dog", "fox"], num_tokens=3).eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = method.image_features(images)
        expected = official_mvlpt_image_features(
            tiny_clip.model.visual, images, method.prompt.tokens, method.prompt.deep_tokens
        )
    torch.testing.assert_close(ours, F.normalize(expected, dim=-1), rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # logits: CLIP's scaled cosine to the frozen template's text features
        text = tiny_clip.encode_text([f"a photo of a {name}." for name in ["cat", "dog", "fox"]], normalize=True)
        expected_logits = tiny_clip.model.logit_scale.exp() * F.normalize(expected, dim=-1) @ text.t()
        torch.testing.assert_close(method(images).logits, expected_logits, rtol=1e-5, atol=1e-4)
    assert expected_logits.std(dim=1).min() > 1e-2  # the classes score apart
    # the prompts matter: without them the feature differs
    assert not torch.allclose(ours, F.normalize(tiny_clip.encode_image(images).features, dim=-1), atol=1e-3)
    assert method.prompt.deep_tokens.shape == (11, 3, 48)  # layers 1..11 of the tiny 12-layer tower
    bound = math.sqrt(6.0 / (3 * 8 * 8 + 48))  # VPT's uniform initialisation, patch 8, width 48
    assert float(method.prompt.tokens.detach().abs().max()) <= bound


def test_text_side_is_clip_on_the_frozen_template_and_only_prompts_train(tiny_clip):
    method = MVPT(tiny_clip, ["cat", "dog"], num_tokens=2)
    expected = tiny_clip.encode_text(["a photo of a cat.", "a photo of a dog."], normalize=True)
    torch.testing.assert_close(method.class_text_features(), expected)
    trainable = {name for name, p in method.named_parameters() if p.requires_grad}
    assert trainable == {"prompt.tokens", "prompt.deep_tokens"}
    images = torch.randn(2, 3, 32, 32)
    method.train()
    loss = F.cross_entropy(method(images).logits, torch.tensor([0, 1]))
    loss.backward()
    assert method.prompt.deep_tokens.grad is not None and method.prompt.deep_tokens.grad.abs().sum() > 0


def official_grip_visual_features(visual, images, prefix):
    """GRIP's CustomVisionTransformer.forward (BatsResearch/menghini-enhanceCLIPwithCLIP-code) re-computed: the
    prefix after the class token *before* ln_pre, no deep prompts."""
    x = visual.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    x = torch.cat([x[:, :1], prefix.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
    x = visual.ln_pre(x)
    for block in visual.transformer.resblocks:
        x = block(x) if visual.transformer.batch_first else block(x.permute(1, 0, 2)).permute(1, 0, 2)
    return visual.ln_post(x[:, 0, :]) @ visual.proj


def test_grip_visual_prompts_enter_before_ln_pre_and_start_from_a_scaled_normal(tiny_clip):
    torch.manual_seed(0)
    method = MVPT(tiny_clip, ["cat", "dog"], num_tokens=4, deep=False, after_ln_pre=False, init="normal").eval()
    assert method.prompt.deep_tokens is None
    std = float(method.prompt.tokens.detach().std())
    assert 0.5 * 48**-0.5 < std < 1.6 * 48**-0.5  # W^-1/2 · N(0, 1)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = method.image_features(images)
        expected = official_grip_visual_features(tiny_clip.model.visual, images, method.prompt.tokens)
        after = MVPT(tiny_clip, ["cat", "dog"], num_tokens=4, deep=False, init="normal")
        after.prompt.load_state_dict(method.prompt.state_dict())
        moved = after.image_features(images)
    torch.testing.assert_close(ours, F.normalize(expected, dim=-1), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, moved, atol=1e-4)  # before or after ln_pre is not the same model
