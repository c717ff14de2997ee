"""Zero-shot CLIP (methods/zero_shot_clip.py): class weights are the normalised template ensemble."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_prompts.methods import ZeroShotCLIP

TEMPLATES = ["a photo of a {}.", "a drawing of a {}."]


def test_logits_are_the_scaled_cosine_to_the_template_ensemble(tiny_clip):
    model = ZeroShotCLIP(tiny_clip, ["golden_retriever", "cat"], templates=TEMPLATES)
    images = torch.randn(3, 3, 32, 32)
    per_template = [
        F.normalize(
            tiny_clip.model.encode_text(tiny_clip.tokenize([t.format(n) for n in ["golden retriever", "cat"]])), dim=-1
        )
        for t in TEMPLATES
    ]
    weights = F.normalize(torch.stack(per_template).mean(0), dim=-1)
    image = F.normalize(tiny_clip.model.encode_image(images), dim=-1)
    expected = tiny_clip.model.logit_scale.exp() * image @ weights.t()
    assert torch.allclose(model(images).logits, expected, atol=1e-4)


def test_nothing_trains_and_classes_can_change(tiny_clip):
    model = ZeroShotCLIP(tiny_clip, ["cat", "dog"])
    assert not any(p.requires_grad for p in model.parameters())
    assert model.configure_optimizers() is None
    model.set_classnames(["apple", "banana", "cherry"])
    assert model(torch.randn(1, 3, 32, 32)).logits.shape == (1, 3)


def test_templates_need_a_slot_for_the_class_name(tiny_clip):
    with pytest.raises(ValueError, match="needs a"):
        ZeroShotCLIP(tiny_clip, ["cat"], templates=["a photo"])
