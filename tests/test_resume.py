"""A run interrupted mid-epoch and resumed from its last checkpoint ends bitwise equal to the
uninterrupted run: the random generators travel in the checkpoint (shuffle, augmentations, workers)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import run_from_scratch_root, short_pseudolabel_rounds, synthetic_fewshot, without_early_stop
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from test_recipes import one_trained_recipe_per_folder_and_method

from lightning_prompts.backbones import HFText, OpenCLIP, TimmViT
from lightning_prompts.data import ClassIncrementalDataModule, SyntheticText, TextClassificationDataModule
from lightning_prompts.methods import LAE, VPT, CoOp, PromptTuning


class Interrupt(Exception):
    pass


class KillAt(Callback):
    """Raise in the middle of epoch ``epoch`` (after ``batch`` steps of it)."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise Interrupt


def coop(workers: int = 0):
    data = synthetic_fewshot(shots=4, augmentation="clip", num_workers=workers)  # random crops and flips
    return CoOp(OpenCLIP("tiny", pretrained=None), data.classnames, n_ctx=4), data


def vpt():
    data = synthetic_fewshot(shots=4, augmentation="clip")
    return VPT(TimmViT("tiny"), data.classnames, num_tokens=2, dropout=0.1), data


def prompt_tuning(group_by_length: bool = False):
    data = TextClassificationDataModule(
        synthetic=SyntheticText(examples_per_class=12), batch_size=4, group_by_length=group_by_length
    )
    return PromptTuning(HFText("tiny-bert"), data.classnames, num_virtual_tokens=4), data


def lae():
    spec = {"num_classes": 4, "images_per_class": 8, "image_size": 32}
    data = ClassIncrementalDataModule(num_tasks=2, epochs_per_task=2, synthetic=spec, image_size=32, batch_size=4)
    return LAE(TimmViT("tiny"), data.classnames, num_tasks=2, pet="adapter", pet_blocks=[0], freeze_epochs=1), data


def relief():
    from torch_geometric.datasets import FakeDataset

    from lightning_prompts.backbones import GNN
    from lightning_prompts.data import GraphDataModule
    from lightning_prompts.methods.relief import RELIEF

    seed_everything(0, verbose=False)  # FakeDataset draws from the global generators
    graphs = FakeDataset(num_graphs=24, avg_num_nodes=6, num_channels=5, num_classes=2, task="graph")
    data = GraphDataModule(graphs, task="graph", shots=4, val_shots=2, batch_size=4)  # two pools per epoch
    settings = {"ensemble_size": 2, "ppo_minibatch_size": 8, "ppo_epochs": 2}  # the critic sized by the data at fit
    return RELIEF(GNN("gin", in_channels=5, hidden_channels=8, num_layers=2), data.classnames, **settings), data


def train(build, folder, epochs, kill=None, resume=False, **trainer):
    seed_everything(7, workers=True)  # as the command line does at every start
    model, data = build()
    callbacks = [ModelCheckpoint(dirpath=folder, save_last=True)] + ([kill] if kill else [])
    run = Trainer(
        max_epochs=epochs,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=folder,
        accelerator="cpu",
        devices=1,
        **trainer,
    )
    run.fit(model, data, ckpt_path=str(folder / "last.ckpt") if resume else None)
    return {key: value.clone() for key, value in model.state_dict().items() if key in model.trainable_state_keys()}


RECIPES = Path(__file__).resolve().parents[1] / "recipes"

CASES = {
    "coop": (coop, 3, 1, {}),
    "coop-2-workers": (lambda: coop(workers=2), 3, 1, {}),
    "vpt": (vpt, 3, 1, {}),
    "prompt-tuning": (prompt_tuning, 3, 1, {}),
    "prompt-tuning-length-grouped": (lambda: prompt_tuning(group_by_length=True), 3, 1, {}),
    "relief": (relief, 3, 1, {}),
    "lae-mid-task": (lae, 4, 3, {"reload_dataloaders_every_n_epochs": 1, "num_sanity_val_steps": 0}),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_resumed_run_equals_the_uninterrupted_one_bitwise(case, tmp_path):
    build, epochs, kill_epoch, options = CASES[case]
    straight = train(build, tmp_path / "straight", epochs, **options)
    with pytest.raises(Interrupt):
        train(build, tmp_path / "resumed", epochs, kill=KillAt(kill_epoch, 1), **options)
    resumed = train(build, tmp_path / "resumed", epochs, resume=True, **options)
    assert straight.keys() == resumed.keys() and straight
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    # and the generators mattered: a resume that replays the first epochs' randomness ends elsewhere
    assert not torch.equal(next(iter(straight.values())), next(iter(train(build, tmp_path / "x", 1).values())))


COMMAND_CASES = {
    # validation inside epochs (DePT, EPT and POST recipes validate every N steps): last.ckpt was written there,
    # and the resumed run restarted the epoch's loader with a fresh shuffle
    "validation-every-step": (["coop/caltech101.yaml", "_tiny/clip.yaml"],
                              ["--trainer.val_check_interval=1", "--trainer.check_val_every_n_epoch=null"], (1, 2)),
    # the encoder pre-training modules saved no random generators: the resumed run replayed the seed's stream
    "context-prediction-pretraining": (["gpf/pretraining/context_prediction_zinc.yaml",
                                        "_tiny/graph_moleculenet_pretraining.yaml"], [], (1, 0)),
    # GRAM's meta-task sampler never heard the epoch (Lightning tells a loader's sampler, not a batch sampler) and
    # its domain clustering drew from the restored generators: the resumed run drew epoch 0's tasks again
    "gram-meta-training": (["gram/meta_train.yaml", "_tiny/clip.yaml"], ["--data.init_args.tasks_per_epoch=3"], (1, 1)),
    # the frozen-feature cache with pseudolabel rounds (one epoch each) through the command, resumed at a round
    # boundary (tests/callbacks/test_pseudolabel_rounds.py shows, with smaller encoding batches, that equality
    # needs the features the cache writes into the checkpoint)
    "feature-cache-and-pseudolabel-rounds": (["testbed/grip_ssl.yaml", "_tiny/clip.yaml"], [], (1, 0)),
}  # fmt: skip


def command_fits(configs: list[Path], options: list[str], tmp_path: Path, monkeypatch, epochs: int = 3):
    """``fit(folder, kill=None, resume=False)`` through the command line with ``configs`` and ``options``, ``epochs``,
    seed 7, in ``folder``; returns the model's state. Recipes that write files (GRAM's regulator) write them in
    ``tmp_path``."""
    from lightning_prompts.lightning_cli import PromptsCLI, run_cli

    extra: list[Callback] = []
    instantiate = PromptsCLI._instantiate_trainer
    monkeypatch.setattr(
        PromptsCLI, "_instantiate_trainer", lambda self, config, cbs: instantiate(self, config, cbs + extra)
    )
    run_from_scratch_root(tmp_path, monkeypatch)

    def fit(folder, kill=None, resume=False):
        extra[:] = [kill] if kill else []
        args = ["fit", *[arg for config in configs for arg in ("--config", str(config))], *options,
                "--trainer.fast_dev_run=false", "--trainer.max_steps=-1", f"--trainer.max_epochs={epochs}",
                "--trainer.default_root_dir", str(folder), "--seed_everything=7",
                *(["--ckpt_path", "last"] if resume else [])]  # fmt: skip
        model = run_cli(args).model
        return {key: value.clone() for key, value in model.state_dict().items()}, model

    return fit


@pytest.mark.parametrize("case", list(COMMAND_CASES), ids=list(COMMAND_CASES))
def test_a_command_killed_mid_epoch_and_resumed_from_last_ends_bitwise_equal(case, tmp_path, monkeypatch):
    """Through the command line, with its own ``last.ckpt`` (written at the end of each training epoch)."""
    configs, options, (kill_epoch, kill_batch) = COMMAND_CASES[case]
    short_pseudolabel_rounds(monkeypatch)
    fit = command_fits([RECIPES / config for config in configs], options, tmp_path, monkeypatch)
    straight, _ = fit(tmp_path / "straight")
    with pytest.raises(Interrupt):
        fit(tmp_path / "resumed", kill=KillAt(kill_epoch, kill_batch))
    resumed, _ = fit(tmp_path / "resumed", resume=True)
    assert straight.keys() == resumed.keys()
    assert [key for key in straight if not torch.equal(straight[key], resumed[key])] == []


@pytest.mark.parametrize(
    "recipe", one_trained_recipe_per_folder_and_method(), ids=lambda p: str(p.relative_to(RECIPES))
)
def test_every_method_killed_mid_epoch_and_resumed_from_last_ends_bitwise_equal(recipe, tmp_path, monkeypatch):
    """One recipe per method with its tiny overlay, three batches an epoch, killed at the second batch of the second
    epoch (the first of it when an epoch has one batch) and resumed from the command's ``last.ckpt``."""
    from test_recipes import overlay_for

    short_pseudolabel_rounds(monkeypatch, rounds=2)
    options = without_early_stop(recipe)
    options += ["--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2", "--trainer.num_sanity_val_steps=0"]
    fit = command_fits([recipe, overlay_for(recipe)], options, tmp_path, monkeypatch, epochs=2)
    straight, model = fit(tmp_path / "straight")
    assert any(parameter.requires_grad for parameter in model.parameters())
    killed = None
    for batch in (1, 0):
        try:
            fit(tmp_path / f"killed_at_{batch}", kill=KillAt(1, batch))
        except Interrupt:
            killed = tmp_path / f"killed_at_{batch}"
            break
    assert killed is not None, "the run never reached its second epoch"
    resumed, _ = fit(killed, resume=True)
    assert straight.keys() == resumed.keys()
    assert [key for key in straight if not torch.equal(straight[key], resumed[key])] == []


def test_a_run_early_stopping_ended_resumed_from_last_trains_no_more(tmp_path, monkeypatch):
    """Lightning keeps EarlyStopping's counters but not its decision: the run resumed from its last.ckpt trained one
    more epoch (and rewrote last.ckpt). ``lightning-prompts fit`` now stops it before its first step."""
    import hashlib

    from lightning_prompts.lightning_cli import run_cli

    recipes = RECIPES
    run_from_scratch_root(tmp_path, monkeypatch)
    # val/acc never beats its first value by 10: patience 1 stops the run after its second epoch of five
    (tmp_path / "stop.yaml").write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.EarlyStopping\n"
        "      init_args: {monitor: val/acc, mode: max, patience: 1, min_delta: 10.0}\n"
    )
    args = ["fit", "--config", str(recipes / "coop" / "caltech101.yaml"),
            "--config", str(recipes / "_tiny" / "clip.yaml"), "--config", str(tmp_path / "stop.yaml"),
            "--trainer.fast_dev_run=false", "--trainer.max_epochs=5",
            "--trainer.check_val_every_n_epoch=1", "--trainer.default_root_dir", str(tmp_path / "run")]  # fmt: skip
    stopped = run_cli(args)
    assert stopped.trainer.current_epoch == 2 < 5
    last = next((tmp_path / "run").rglob("last.ckpt"))
    digest = hashlib.sha256(last.read_bytes()).hexdigest()
    resumed = run_cli([*args, "--ckpt_path", "last"])
    assert resumed.trainer.global_step == stopped.trainer.global_step
    assert all(
        torch.equal(a, b) for a, b in zip(stopped.model.state_dict().values(), resumed.model.state_dict().values())
    )
    assert hashlib.sha256(last.read_bytes()).hexdigest() == digest  # not rewritten by another epoch


def test_keep_early_stopping_decision_stops_only_a_resumed_run_that_early_stopping_ended(tmp_path, caplog):
    """Resuming a run that EarlyStopping had not stopped (interrupted, or max_epochs raised) trains on; stopping one
    says why and how to train on."""
    import logging

    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import EarlyStopping
    from lightning.pytorch.demos.boring_classes import BoringModel

    from lightning_prompts.resume import KeepEarlyStoppingDecision

    class Rising(BoringModel):  # the monitored value never improves after the first epoch
        def validation_step(self, batch, batch_idx):
            self.log("score", float(self.current_epoch))

    def fit(max_epochs: int, patience: int, ckpt_path=None) -> Trainer:
        trainer = Trainer(max_epochs=max_epochs, limit_train_batches=2, limit_val_batches=1, logger=False,
                          enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                          callbacks=[EarlyStopping("score", mode="min", patience=patience),
                                     KeepEarlyStoppingDecision()])  # fmt: skip
        trainer.fit(Rising(), ckpt_path=ckpt_path)
        trainer.save_checkpoint(tmp_path / f"after_{max_epochs}_{patience}.ckpt")
        return trainer

    assert fit(10, patience=1).current_epoch == 2  # stopped by EarlyStopping after epoch 1
    with caplog.at_level(logging.INFO):
        assert fit(10, patience=1, ckpt_path=tmp_path / "after_10_1.ckpt").global_step == 4  # resumed: no more steps
    assert "nothing more to train" in caplog.text and "leave EarlyStopping out" in caplog.text
    assert fit(2, patience=5).current_epoch == 2  # ended by max_epochs, EarlyStopping not stopped
    assert fit(4, patience=5, ckpt_path=tmp_path / "after_2_5.ckpt").current_epoch == 4  # resumed: trains on
