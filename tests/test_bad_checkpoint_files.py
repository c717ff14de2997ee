"""Damaged or mismatched files a model is loaded from (Lightning checkpoints, prompt files, backbone weights,
description files): each is refused with one project error that names the file and the culprit, never with a
library's raw error, and never with advice to load a file in a way that lets it run code."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import CodeInPickle
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_bad_inputs import TINY, run, saved_checkpoint

from lightning_prompts.backbones import OpenCLIP, TimmViT
from lightning_prompts.backbones.open_clip import is_file_path
from lightning_prompts.callbacks.consistency import read_descriptions
from lightning_prompts.errors import ConfigurationError, DatasetError
from lightning_prompts.methods import VPT, CoOp

UNSAFE_ADVICE = ("weights_only=False", "`weights_only` set to `False`")


def refused(error: type[Exception], call: Callable[[], object], *culprits: str) -> str:
    """The message of the ``error`` that ``call`` raises, checked to name every culprit and give no unsafe advice."""
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for culprit in culprits:
        assert culprit in message, message
    assert not any(advice in message for advice in UNSAFE_ADVICE), message
    return message


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """``last.ckpt`` of a one-step ``lightning-prompts fit`` of the tiny CoOp recipe (prompt.ctx: 16 x 32)."""
    folder = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)  # the recipe writes its synthetic data under the working directory
        return saved_checkpoint(folder)


# -- Lightning checkpoints: each case writes `path` from the trained checkpoint ------------------------------
def with_ctx(change: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Path, Path], None]:
    def write(trained: Path, path: Path) -> None:
        checkpoint = torch.load(trained, weights_only=True)
        checkpoint["state_dict"]["prompt.ctx"] = change(checkpoint["state_dict"]["prompt.ctx"])
        torch.save(checkpoint, path)

    return write


def truncated(trained: Path, path: Path) -> None:
    path.write_bytes(trained.read_bytes()[: trained.stat().st_size // 2])


CHECKPOINT_CASES: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "nan": (with_ctx(lambda ctx: torch.full_like(ctx, float("nan"))), "'prompt.ctx' holds NaN or infinite values"),
    "inf": (with_ctx(lambda ctx: torch.full_like(ctx, float("inf"))), "'prompt.ctx' holds NaN or infinite values"),
    "other_shape": (with_ctx(lambda ctx: ctx[:4]), "'prompt.ctx' has shape (4, 32) but CoOp needs (16, 32)"),
    "integers": (with_ctx(lambda ctx: torch.ones_like(ctx, dtype=torch.int64)), "'prompt.ctx' is a torch.int64"),
    "truncated": (truncated, "could not be read as a weights-only Lightning checkpoint"),
    "random_bytes": (lambda _, path: path.write_bytes(os.urandom(256)), "could not be read as a weights-only"),
    "a_tensor": (lambda _, path: torch.save(torch.zeros(3), path), "holds a Tensor, not a Lightning checkpoint"),
    "missing": (lambda _, path: None, "does not exist"),
}


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_load_from_checkpoint_refuses_a_bad_checkpoint_naming_it(case, trained, tmp_path):
    write, culprit = CHECKPOINT_CASES[case]
    path = tmp_path / f"{case}.ckpt"
    write(trained, path)
    refused(ConfigurationError, lambda: CoOp.load_from_checkpoint(path), f"checkpoint {path}", culprit)


def test_the_untouched_checkpoint_and_a_half_precision_one_load(trained, tmp_path):
    stored = torch.load(trained, weights_only=True)["state_dict"]["prompt.ctx"]
    assert torch.equal(CoOp.load_from_checkpoint(trained).prompt.ctx, stored)
    with_ctx(lambda ctx: ctx.half())(trained, tmp_path / "half.ckpt")  # floating point: loaded (as float32)
    assert torch.allclose(CoOp.load_from_checkpoint(tmp_path / "half.ckpt").prompt.ctx, stored, atol=1e-3)


def test_a_checkpoint_of_another_method_names_both(trained):
    refused(ConfigurationError, lambda: VPT.load_from_checkpoint(trained), str(trained), "written by CoOp, not VPT")


def test_a_subclass_loads_its_parents_checkpoint(trained):
    class CoOpVariant(CoOp):
        pass

    assert isinstance(CoOpVariant.load_from_checkpoint(trained), CoOpVariant)


def test_the_command_refuses_a_checkpoint_holding_nan(trained, tmp_path, capsys, monkeypatch):
    """``lightning-prompts test --ckpt_path`` used to report an accuracy for a prompt of NaNs."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "nan.ckpt"
    CHECKPOINT_CASES["nan"][0](trained, path)
    capsys.readouterr()
    line = run(["test", *TINY, "--ckpt_path", str(path)], tmp_path / "run", capsys)
    assert f"checkpoint {path}" in line and "'prompt.ctx' holds NaN" in line, line


# -- prompt files: each case edits the tensors and metadata export_prompt wrote --------------------------------
PROMPT_CASES: dict[str, tuple[Callable[[dict, dict], tuple[dict, dict]], str]] = {
    "integers": (
        lambda tensors, meta: ({k: torch.ones_like(v, dtype=torch.int64) for k, v in tensors.items()}, meta),
        "'prompt.ctx' is a torch.int64 tensor but CoOp needs floating point",
    ),
    "nan": (
        lambda tensors, meta: ({k: torch.full_like(v, float("nan")) for k, v in tensors.items()}, meta),
        "'prompt.ctx' holds NaN",
    ),
    "backbone_a_list": (
        lambda tensors, meta: (tensors, {**meta, "lightning_prompts.backbone": '["x"]'}),
        "backbone metadata is not a JSON object",
    ),
    "text_state_a_string": (
        lambda tensors, meta: (tensors, {**meta, "lightning_prompts.text_state": '"abc"'}),
        "text_state metadata is not a JSON object",
    ),
}


@pytest.mark.parametrize("load", ["load_prompt", "init_prompt_from"])
@pytest.mark.parametrize("case", list(PROMPT_CASES))
def test_a_bad_prompt_file_is_refused_and_nothing_is_loaded(case, load, tiny_clip, tmp_path):
    model = CoOp(tiny_clip, ["a", "b"], n_ctx=4)
    exported = model.export_prompt(tmp_path / "ok.safetensors")
    with safe_open(str(exported), framework="pt") as handle:
        metadata = handle.metadata()
    edit, culprit = PROMPT_CASES[case]
    tensors, metadata = edit(load_file(exported), metadata)
    path = tmp_path / f"{case}.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    before = model.prompt.ctx.detach().clone()
    refused(ConfigurationError, lambda: getattr(model, load)(path), str(path), culprit)
    assert torch.equal(model.prompt.ctx, before)


# -- backbone weights files: each case writes a file (or none) and returns its path ---------------------------
def missing(folder: Path, clip: OpenCLIP) -> Path:
    return folder / "nope.pt"


def a_folder(folder: Path, clip: OpenCLIP) -> Path:
    (folder / "weights.pt").mkdir()
    return folder / "weights.pt"


def random_bytes(folder: Path, clip: OpenCLIP) -> Path:
    (folder / "junk.pt").write_bytes(bytes(range(7, 107)))  # fixed junk: the loader's complaint depends on the bytes
    return folder / "junk.pt"


def half_a_pt_file(folder: Path, clip: OpenCLIP) -> Path:
    torch.save(clip.model.state_dict(), folder / "clip.pt")
    truncated(folder / "clip.pt", folder / "half.pt")
    return folder / "half.pt"


def half_a_safetensors_file(folder: Path, clip: OpenCLIP) -> Path:
    save_file({k: v.contiguous() for k, v in clip.model.state_dict().items()}, str(folder / "clip.safetensors"))
    truncated(folder / "clip.safetensors", folder / "half.safetensors")
    return folder / "half.safetensors"


def without_a_key(folder: Path, clip: OpenCLIP) -> Path:
    state = dict(clip.model.state_dict())
    state.pop("positional_embedding")
    torch.save(state, folder / "no_key.pt")
    return folder / "no_key.pt"


def clip_weights(folder: Path, clip: OpenCLIP) -> Path:
    torch.save(clip.model.state_dict(), folder / "clip.pt")
    return folder / "clip.pt"


BACKBONES: dict[str, Callable[[Path], object]] = {
    "OpenCLIP tiny": lambda path: OpenCLIP("tiny", pretrained=str(path)),
    "OpenCLIP ViT-B-16": lambda path: OpenCLIP("ViT-B-16", pretrained=str(path)),  # a missing file: nothing built
    "TimmViT tiny": lambda path: TimmViT("tiny", checkpoint_path=str(path)),
}


@pytest.mark.parametrize(
    ("backbone", "write", "culprit"),
    [
        ("OpenCLIP tiny", missing, "does not exist"),
        ("OpenCLIP tiny", a_folder, "does not exist"),
        ("OpenCLIP tiny", random_bytes, "could not be loaded as a weights-only checkpoint"),
        ("OpenCLIP tiny", half_a_pt_file, "PytorchStreamReader failed"),
        ("OpenCLIP tiny", half_a_safetensors_file, "SafetensorError"),
        ("OpenCLIP tiny", without_a_key, '"positional_embedding"'),
        ("OpenCLIP ViT-B-16", missing, "does not exist"),
        ("TimmViT tiny", missing, "does not exist"),
        ("TimmViT tiny", random_bytes, "could not be loaded as a weights-only checkpoint"),
        ("TimmViT tiny", clip_weights, "Missing key(s)"),
    ],
    ids=lambda value: getattr(value, "__name__", None),
)
def test_a_bad_backbone_weights_file_is_one_error_naming_it(backbone, write, culprit, tiny_clip, tmp_path):
    path = write(tmp_path, tiny_clip)
    refused(ConfigurationError, lambda: BACKBONES[backbone](path), str(path), culprit)


@pytest.mark.parametrize(
    ("pretrained", "is_file"),
    [("openai", False), ("laion2b_s34b_b88k", False), ("clip.pt", True), ("weights/clip", True), ("/a/b.bin", True)],
)
def test_open_clip_tags_are_told_from_files(pretrained, is_file):
    assert is_file_path(pretrained) is is_file


# -- CoPrompt description files ---------------------------------------------------------------------------------
DESCRIPTION_CASES: dict[str, tuple[bytes, str]] = {
    "not_json": (b'{"cat": ["x",]}', "is not valid JSON"),
    "a_list": (b'[["cat", "a small furry pet"]]', "must be an object {class name: [description, ...]}"),
    "latin_1": ('{"cat": ["caf\xe9 au lait"]}'.encode("latin-1"), "is not UTF-8"),
    "numbers": (json.dumps({"cat": [1, None]}).encode(), "class 'cat' must list description strings"),
    "an_object": (json.dumps({"cat": {"fur": "soft"}}).encode(), "class 'cat' must list description strings"),
}


@pytest.mark.parametrize("case", list(DESCRIPTION_CASES))
def test_a_bad_description_file_is_refused_naming_it(case, tmp_path):
    content, culprit = DESCRIPTION_CASES[case]
    path = tmp_path / f"{case}.json"
    path.write_bytes(content)
    refused(DatasetError, lambda: read_descriptions(path, ["cat"]), str(path), culprit)


def test_a_single_description_string_is_one_description_not_one_per_character(tmp_path):
    path = tmp_path / "descriptions.json"
    path.write_text(json.dumps({"cat": "a small furry pet", "dog": ["a loyal pet", "an animal that barks"]}))
    assert read_descriptions(path, ["cat", "dog"]) == [
        ["a small furry pet", "a small furry pet"],
        ["a loyal pet", "an animal that barks"],
    ]


@pytest.mark.parametrize("backbone", ["OpenCLIP tiny", "TimmViT tiny"])
def test_a_hostile_backbone_weights_file_runs_no_code(backbone, tmp_path):
    # timm 1.0.9 to 1.0.25 read checkpoint_path with weights_only=False unless told otherwise
    marker, path = tmp_path / "pwned", tmp_path / "weights.pt"
    torch.save({"state_dict": {"payload": CodeInPickle(marker)}}, path)
    refused(ConfigurationError, lambda: BACKBONES[backbone](path), str(path), "weights-only")
    assert not marker.exists()
