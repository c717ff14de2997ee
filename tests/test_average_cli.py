"""``lightning-prompts average``: MVLPT's source prompt is the element-wise mean of several seeds' prompts, and
a new run starts from it (``prompt_init``)."""

from __future__ import annotations

import pytest
import torch
from helpers import synthetic_fewshot
from lightning.pytorch import Callback, Trainer

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
    with pytest.raises(SystemExit) as exit_info:  # one seed twice would weigh double
        main(["average", "--output", str(tmp_path / "o.safetensors"), str(tmp_path / "a.safetensors"),
              str(tmp_path / "." / "a.safetensors")])  # fmt: skip
    assert exit_info.value.code == 2 and "given more than once" in capsys.readouterr().err
    assert not (tmp_path / "o.safetensors").exists()


class ContextAtStart(Callback):
    """The context each stage starts from."""

    def __init__(self) -> None:
        self.seen: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer, module) -> None:
        self.seen["fit"] = module.prompt.ctx.detach().clone()

    def on_test_start(self, trainer, module) -> None:
        self.seen["test"] = module.prompt.ctx.detach().clone()


def test_prompt_init_applies_to_a_test_without_training_and_never_over_a_trained_or_restored_prompt(
    tiny_clip, trainer_kwargs, tmp_path
):
    data = synthetic_fewshot(num_classes=3)
    source = seed_prompt(tiny_clip, tmp_path / "source.safetensors", 7)
    plain = {"n_ctx": 4, "class_token_position": "middle"}

    # `lightning-prompts test` with prompt_init and no checkpoint: the source prompt is what is tested
    untrained = CoOp(tiny_clip, data.classnames, prompt_init=str(tmp_path / "source.safetensors"), **plain)
    assert not torch.equal(untrained.prompt.ctx, source)
    seen = ContextAtStart()
    Trainer(callbacks=[seen], **trainer_kwargs).test(untrained, data, verbose=False)
    torch.testing.assert_close(seen.seen["test"], source, rtol=0, atol=0)

    # fit then test in one process: fit starts from the source prompt, the test sees the trained one
    trained = CoOp(tiny_clip, data.classnames, prompt_init=str(tmp_path / "source.safetensors"), **plain)
    seen = ContextAtStart()
    trainer = Trainer(max_steps=2, callbacks=[seen], **{**trainer_kwargs, "enable_checkpointing": True})
    trainer.fit(trained, data)
    after_fit = trained.prompt.ctx.detach().clone()
    assert torch.equal(seen.seen["fit"], source) and not torch.equal(after_fit, source)
    trainer.test(trained, data, verbose=False)
    assert torch.equal(seen.seen["test"], after_fit)

    # a checkpoint given to test wins over prompt_init
    checkpoint = trainer.checkpoint_callback.last_model_path or trainer.checkpoint_callback.best_model_path
    fresh = CoOp(tiny_clip, data.classnames, prompt_init=str(tmp_path / "source.safetensors"), **plain)
    seen = ContextAtStart()
    Trainer(callbacks=[seen], **trainer_kwargs).test(fresh, data, ckpt_path=checkpoint, verbose=False)
    assert torch.equal(seen.seen["test"], after_fit)
