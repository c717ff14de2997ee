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
