"""Every code block of the README runs as written, with offline stand-ins only where a block needs CLIP
weights or a dataset that cannot be downloaded here (a copied README snippet once crashed).

* ``bash`` blocks: each ``lightning-prompts`` command runs in order from a scratch folder that sees the
  repository's ``recipes/``, with the method's tiny overlay added and one batch per epoch (so ``fit``
  leaves ``last.ckpt`` for the ``test --ckpt_path last`` that follows). The install lines are what CI
  itself runs; the quickstart command is run in full by ``tests/test_quickstart.py``.
* ``python`` blocks: executed with ``OpenCLIP`` replaced by the tiny CLIP, the data module given
  generated data in the dataset's own layout, and ``Trainer`` limited to one batch per stage.
"""

from __future__ import annotations

import functools
import re
import shlex
from pathlib import Path

import pytest
import torch
from helpers import run_from_scratch_root

from lightning_prompts import registry
from lightning_prompts.cli import run_cli
from lightning_prompts.recipes import model_class

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, re.S)
ONE_BATCH = [
    "--trainer.fast_dev_run=false",
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=1",
    "--trainer.limit_val_batches=1",
    "--trainer.limit_test_batches=1",
]


def readme_commands() -> list[list[str]]:
    """The ``lightning-prompts`` commands of the README's bash blocks, in order, without comments."""
    commands = []
    for language, body in BLOCKS:
        if language != "bash":
            continue
        for line in body.splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["lightning-prompts"] and "install" not in line:
                commands.append(words[1:])
    return commands


def trainable_state(model) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return {key: state[key].clone() for key in model.trainable_state_keys()}


def test_the_readme_has_the_blocks_this_test_runs():
    assert [language for language, _ in BLOCKS].count("python") >= 1
    assert len(readme_commands()) >= 3


def test_readme_commands_run_in_order(tmp_path, monkeypatch, capsys):
    run_from_scratch_root(tmp_path, monkeypatch)
    for command in readme_commands():
        recipe = command[command.index("--config") + 1]
        overlay = f"recipes/_tiny/{registry.get(model_class(recipe)).overlay}.yaml"
        if "--print_config" in command:
            with pytest.raises(SystemExit) as printed:
                run_cli([*command, "--config", overlay])
            assert printed.value.code in (0, None) and "class_path" in capsys.readouterr().out
            continue
        cli = run_cli([*command, "--config", overlay, *ONE_BATCH])
        assert cli.trainer.state.finished, command
        if command[0] == "fit":
            trained = trainable_state(cli.model)
            assert (
                tmp_path / "outputs" / Path(recipe).relative_to("recipes").with_suffix("") / "checkpoints" / "last.ckpt"
            ).is_file()
        if command[0] == "test":
            assert {"test/acc_base", "test/acc_novel", "test/hm"} <= set(cli.trainer.callback_metrics)
            tested = trainable_state(cli.model)
            assert all(torch.equal(tested[k], trained[k]) for k in trained)  # the trained prompt was tested


def test_readme_python_runs(monkeypatch, tmp_path):
    import lightning.pytorch as pl

    import lightning_prompts
    from lightning_prompts.backbones import OpenCLIP
    from lightning_prompts.data import FewShotImageDataModule, Synthetic

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(lightning_prompts, "OpenCLIP", lambda *args, **kwargs: OpenCLIP("tiny", pretrained=None))
    generated = Synthetic(num_classes=4, images_per_class=4)
    monkeypatch.setattr(
        lightning_prompts,
        "FewShotImageDataModule",
        functools.partial(FewShotImageDataModule, synthetic=generated, image_size=32, batch_size=4, num_workers=0),
    )
    real_trainer = pl.Trainer

    def one_batch_trainer(**kwargs):
        kwargs.update(precision="32-true", accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
        return real_trainer(
            **kwargs, max_steps=1, limit_val_batches=1, limit_test_batches=1, default_root_dir=str(tmp_path)
        )

    monkeypatch.setattr(pl, "Trainer", one_batch_trainer)
    for language, body in BLOCKS:
        if language == "python":
            namespace: dict = {}
            exec(compile(body, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    assert (tmp_path / "coop_eurosat.safetensors").is_file()
    assert {"test/acc_base", "test/acc_novel", "test/hm"} <= set(namespace["trainer"].callback_metrics)
