"""The PromptModule base: frozen backbone, loss terms, parameter groups, checkpoints, export."""

from __future__ import annotations

import functools
import os

import pytest
import torch
from helpers import synthetic_fewshot
from lightning.pytorch import Callback, Trainer
from safetensors.torch import load_file

from lightning_prompts.backbones import OpenCLIP, TimmViT
from lightning_prompts.callbacks import LossTerm
from lightning_prompts.errors import BackboneMismatchError, MissingOutputFieldError, MissingTrainableStateError
from lightning_prompts.methods import VPT, CoOp
from lightning_prompts.optim import WarmupCosineLR


class SquaredImageFeatures(LossTerm):
    required_fields = ("image_features", "text_features")

    def compute(self, module, batch, output):
        return output.text_features.pow(2).mean() + output.image_features.detach().sum() * 0


class NeedsNodes(LossTerm):
    required_fields = ("node_embeddings",)

    def compute(self, module, batch, output):  # pragma: no cover - never reached
        raise AssertionError


class Recorder(Callback):
    def __init__(self):
        self.backbone_modes, self.losses = [], []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.backbone_modes.append(any(m.training for m in module.backbone.modules()))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append((float(outputs["loss"]), {k: float(v) for k, v in trainer.callback_metrics.items()}))


def test_backbone_stays_in_eval_mode_with_dropout_and_droppath(trainer_kwargs):
    vit = TimmViT("tiny", model_kwargs={"drop_rate": 0.5, "drop_path_rate": 0.5, "attn_drop_rate": 0.5})
    data = synthetic_fewshot(augmentation="vtab")
    method = VPT(vit, data.classnames, num_tokens=2)
    recorder = Recorder()
    Trainer(max_steps=2, callbacks=[recorder], **trainer_kwargs).fit(method, data)
    assert recorder.backbone_modes == [False, False]
    method.train()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # deterministic although the module is "training": dropout is off inside the ViT
        assert torch.equal(method(images).pooled_features, method(images).pooled_features)


def test_loss_terms_are_added_before_the_backward(tiny_clip, trainer_kwargs):
    data = synthetic_fewshot()
    method = CoOp(tiny_clip, data.classnames, n_ctx=4)
    term, recorder = SquaredImageFeatures(weight=3.0, name="sq"), Recorder()
    Trainer(max_steps=1, callbacks=[term, recorder], **trainer_kwargs).fit(method, data)
    loss, metrics = recorder.losses[0]
    assert metrics["train/sq"] == pytest.approx(3.0 * (1 / 32), rel=1e-4)  # normalised features: mean of squares = 1/D
    assert loss == pytest.approx(metrics["train/task_loss"] + metrics["train/sq"], rel=1e-5)


def test_callback_needing_a_missing_field_fails_before_training(tiny_clip, trainer_kwargs):
    data = synthetic_fewshot()
    method = CoOp(tiny_clip, data.classnames, n_ctx=4)
    trainer = Trainer(max_steps=1, callbacks=[NeedsNodes()], **trainer_kwargs)
    with pytest.raises(MissingOutputFieldError, match=r"NeedsNodes needs the output field 'node_embeddings'.*CoOp"):
        trainer.fit(method, data)
    assert trainer.global_step == 0


def test_parameter_groups_get_their_own_learning_rates(tiny_vit):
    method = VPT(
        tiny_vit,
        ["a", "b"],
        optimizer=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9),
        param_group_lr={"head": 0.01},
    )
    optimizer = method.configure_optimizers()
    lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert lrs == {"prompt": 0.1, "head": 0.01, "head_bias": 0.1}
    with pytest.raises(ValueError, match="unknown groups"):
        VPT(tiny_vit, ["a", "b"], param_group_lr={"heads": 0.01}).configure_optimizers()


def test_optimizer_from_yaml_style_mapping_and_scheduler(tiny_vit):
    method = VPT(
        tiny_vit,
        ["a", "b"],
        optimizer={"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.5}},
        lr_scheduler=functools.partial(WarmupCosineLR, max_epochs=10, warmup_epochs=2),
    )
    config = method.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.AdamW)
    assert config["lr_scheduler"]["interval"] == "epoch"
    assert config["optimizer"].param_groups[0]["lr"] == 0.0  # linear warm-up starts at warmup_lr=0
    assert method.hparams["lr_scheduler"]["class_path"].endswith("WarmupCosineLR")


def test_checkpoint_holds_only_trainable_state_and_round_trips(tiny_clip, trainer_kwargs, tmp_path):
    data = synthetic_fewshot()
    method = CoOp(tiny_clip, data.classnames, n_ctx=4)
    trainer = Trainer(max_steps=2, **trainer_kwargs)
    trainer.fit(method, data)
    path = tmp_path / "coop.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    assert set(checkpoint["state_dict"]) == {"prompt.ctx"}
    assert os.path.getsize(path) < 20_000  # kilobytes; the backbone is 6.7 MB
    assert checkpoint["lightning_prompts"]["backbone"] == tiny_clip.identity()
    restored = CoOp.load_from_checkpoint(path)
    assert torch.equal(restored.prompt.ctx, method.prompt.ctx)
    assert restored.backbone.identity() == tiny_clip.identity()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(restored.eval()(images).logits, method.eval()(images).logits, atol=1e-6)


def test_checkpoint_of_another_backbone_is_refused(tiny_clip, trainer_kwargs, tmp_path):
    data = synthetic_fewshot(num_classes=2)
    method = CoOp(tiny_clip, data.classnames, n_ctx=4)
    trainer = Trainer(max_steps=1, **trainer_kwargs)
    trainer.fit(method, data)
    trainer.save_checkpoint(tmp_path / "coop.ckpt")
    other = CoOp(OpenCLIP("tiny", pretrained=None, seed=7), data.classnames, n_ctx=4)
    with pytest.raises(BackboneMismatchError, match="trained on backbone OpenCLIP"):
        other.on_load_checkpoint(torch.load(tmp_path / "coop.ckpt", weights_only=True))
    with pytest.raises(BackboneMismatchError):
        CoOp.load_from_checkpoint(tmp_path / "coop.ckpt", backbone=OpenCLIP("tiny", pretrained=None, seed=7))


def test_model_and_data_classes_must_agree(tiny_clip, trainer_kwargs):
    with pytest.raises(ValueError, match="data module provides"):
        Trainer(max_steps=1, **trainer_kwargs).fit(CoOp(tiny_clip, ["x", "y"], n_ctx=4), synthetic_fewshot())


def test_a_method_with_a_fixed_head_is_not_tested_on_other_classes(tiny_clip):
    """The architecture page: a method whose classes are a trained head's (VPT) refuses another class list and a
    data module whose test sets hold other classes (base-to-novel), before testing starts; CoOp takes both."""
    from lightning_prompts.errors import ConfigurationError
    from lightning_prompts.evaluation import ClassificationEvaluator

    class BaseToNovel:
        test_class_sets = {"base": ["a", "b"], "novel": ["c", "d"]}

    vpt = VPT(TimmViT("tiny"), ["a", "b"], num_tokens=2)
    with pytest.raises(ConfigurationError, match="trained for 2 fixed classes"):
        vpt.set_classnames(["c", "d"])
    vpt.set_classnames(["a", "b"])  # its own classes are fine
    with pytest.raises(ConfigurationError, match=r"fixed set of classes .* \['novel'\]"):
        ClassificationEvaluator().check_ready(vpt, BaseToNovel(), "test")
    coop = CoOp(tiny_clip, ["a", "b"], n_ctx=4)
    ClassificationEvaluator().check_ready(coop, BaseToNovel(), "test")
    coop.set_classnames(["c", "d"])
    assert coop.classnames == ["c", "d"]


def test_missing_trainable_tensor_is_an_error(tiny_clip):
    method = CoOp(tiny_clip, ["a", "b"], n_ctx=4)
    checkpoint = {"state_dict": {}, "lightning_prompts": {"backbone": tiny_clip.identity()}}
    with pytest.raises(MissingTrainableStateError, match=r"prompt\.ctx"):
        method.on_load_checkpoint(checkpoint)


def test_safetensors_export_and_load(tiny_clip, tmp_path):
    method = CoOp(tiny_clip, ["a", "b"], n_ctx=4)
    path = method.export_prompt(tmp_path / "prompt.safetensors")
    assert set(load_file(path)) == {"prompt.ctx"}
    fresh = CoOp(tiny_clip, ["a", "b"], n_ctx=4)
    assert not torch.equal(fresh.prompt.ctx, method.prompt.ctx)
    fresh.load_prompt(path)
    assert torch.equal(fresh.prompt.ctx, method.prompt.ctx)
    with pytest.raises(BackboneMismatchError):
        CoOp(OpenCLIP("tiny", pretrained=None, seed=3), ["a", "b"], n_ctx=4).load_prompt(path)
    assert not list(tmp_path.glob("*.tmp"))
