"""``lightning-prompts average``: MVLPT's source prompt is the element-wise mean of several seeds' prompts, and
a new run starts from it (``prompt_init``)."""

from __future__ import annotations

import pytest
import torch

from lightning_prompts.backbones import OpenCLIP
from lightning_prompts.cli import main
from lightning_prompts.methods import CoOp
from lightning_prompts.methods.base.checkpointing import read_prompt_file

CLASSES = ["cat", "dog", "fox"]


def seed_prompt(clip, path, seed):
    torch.manual_seed(seed)
    method = CoOp(clip, CLASSES, n_ctx=4, class_token_position="middle")
    method.export_prompt(path)
    return method.prompt.ctx.detach().clone()


def test_the_average_is_the_element_wise_mean_and_starts_a_new_run(tmp_path, capsys):
    clip = OpenCLIP("tiny", pretrained=None)
    contexts = [seed_prompt(clip, tmp_path / f"seed{seed}.safetensors", seed) for seed in (1, 2, 3)]
    output = tmp_path / "source.safetensors"
    with pytest.raises(SystemExit) as exit_info:
        main(["average", "--output", str(output), *(str(tmp_path / f"seed{s}.safetensors") for s in (1, 2, 3))])
    assert exit_info.value.code == 0 and str(output) in capsys.readouterr().out
    tensors, metadata = read_prompt_file(output)
    torch.testing.assert_close(tensors["prompt.ctx"], torch.stack(contexts).mean(dim=0))
    assert metadata["backbone"] == clip.identity()
    target = CoOp(clip, ["tree", "car"], n_ctx=4, class_token_position="middle", prompt_init=str(output))
    target.init_prompt_from(output)  # what fit does at setup: another task's classes, the averaged context
    torch.testing.assert_close(target.prompt.ctx, torch.stack(contexts).mean(dim=0))


def test_files_that_do_not_fit_together_are_refused(tmp_path, capsys):
    clip = OpenCLIP("tiny", pretrained=None)
    seed_prompt(clip, tmp_path / "a.safetensors", 0)
    torch.manual_seed(0)
    CoOp(clip, CLASSES, n_ctx=2).export_prompt(tmp_path / "short.safetensors")
    with pytest.raises(SystemExit) as exit_info:
        main(["average", "--output", str(tmp_path / "o.safetensors"), str(tmp_path / "a.safetensors"),
              str(tmp_path / "short.safetensors")])  # fmt: skip
    assert exit_info.value.code == 2 and "shape" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["average", "--output", str(tmp_path / "o.safetensors"), str(tmp_path / "a.safetensors")])
    assert "at least two" in capsys.readouterr().err
