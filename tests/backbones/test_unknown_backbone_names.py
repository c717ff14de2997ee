"""A mistyped model name, weights tag or hub id, or weights that cannot be downloaded offline, is one
ConfigurationError naming it (and the closest names where the library lists them) before anything is built; these
were library tracebacks on the command line."""

from __future__ import annotations

import pytest

from lightning_prompts import HFText, OpenCLIP, TimmViT
from lightning_prompts.errors import ConfigurationError


@pytest.mark.parametrize(
    ("model_name", "pretrained", "culprit"),
    [
        ("ViT-B-16", "opnai", "pretrained 'opnai' is neither a weights file nor one of its tags"),
        ("ViT-B-16", "opnai", "did you mean 'openai'?"),
        ("ViT-B-61", "openai", "open_clip has no model 'ViT-B-61'; did you mean 'ViT-B-16'"),
    ],
)
def test_an_unknown_open_clip_name_or_tag_is_refused_before_building_with_the_closest(model_name, pretrained, culprit):
    with pytest.raises(ConfigurationError) as error:
        OpenCLIP(model_name, pretrained=pretrained)
    assert culprit in str(error.value)


def test_weights_that_cannot_be_downloaded_say_what_to_give_offline(monkeypatch):
    import open_clip

    def offline(*args, **kwargs):
        raise RuntimeError("Failed to download weights for tag 'openai': no connection")

    monkeypatch.setattr(open_clip, "create_model", offline)
    with pytest.raises(ConfigurationError, match="could not be downloaded .*give pretrained as a local weights file"):
        OpenCLIP("ViT-B-16", pretrained="openai")


@pytest.mark.parametrize(
    ("kwargs", "culprit"),
    [
        ({"model_name": "vit_base_patch61_224"}, "timm has no model 'vit_base_patch61_224'; did you mean"),
        ({"model_name": "vit_base_patch16_224.no_such_tag"}, "Invalid pretrained tag (no_such_tag)"),
    ],
)
def test_an_unknown_timm_name_or_tag_is_one_error(kwargs, culprit):
    with pytest.raises(ConfigurationError) as error:
        TimmViT(**kwargs, pretrained=False)
    assert culprit in str(error.value)


def test_timm_weights_that_cannot_be_downloaded_say_what_to_give_offline(monkeypatch):
    import timm

    def offline(*args, **kwargs):
        raise OSError("cannot find the requested files in the local cache")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(ConfigurationError, match="local cache. Offline, give checkpoint_path"):
        TimmViT("vit_base_patch16_224.augreg2_in21k_ft_in1k", pretrained=True)


@pytest.mark.parametrize("name", ["bert-base-uncasd", "./no/such/folder", "EMPTY"])
def test_an_hf_model_that_cannot_be_found_is_one_error_naming_it(name, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = str(tmp_path) if name == "EMPTY" else name  # a folder holding no model and no tokenizer
    with pytest.raises(ConfigurationError) as error:
        HFText(name)
    assert f"HFText: {name!r} cannot be loaded" in str(error.value)
