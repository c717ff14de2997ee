"""MomentumAccumulation (LAE's offline EMA model and online/offline ensemble) on any method's prompt."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import synthetic_fewshot
from lightning.pytorch import Callback, Trainer

from lightning_prompts.callbacks import MomentumAccumulation
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods import VPT, CoOp


class OnlineSpy(Callback):
    """Online prompt values at the start of training and after every training step."""

    def __init__(self) -> None:
        self.initial: list[torch.Tensor] = []
        self.values: list[list[torch.Tensor]] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.initial = [p.detach().clone() for p in pl_module.prompt.parameters()]

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.values.append([p.detach().clone() for p in pl_module.prompt.parameters()])


def two_task_stream(**kwargs):
    """Few-shot data with a task schedule (the TaskStream protocol): task 0 in epoch 0, task 1 after."""
    data = synthetic_fewshot(**kwargs)
    data.num_tasks, data.epochs_per_task = 2, 1
    data.task_of_epoch = lambda epoch: min(epoch, 1)
    return data


def test_offline_copy_is_the_ema_of_the_prompt_and_only_of_it(tiny_vit, trainer_kwargs):
    data = synthetic_fewshot(augmentation="vtab", batch_size=2)
    model = VPT(tiny_vit, data.classnames, num_tokens=2)
    accumulation, spy = MomentumAccumulation(decay=0.5), OnlineSpy()
    Trainer(max_steps=4, callbacks=[accumulation, spy], **trainer_kwargs).fit(model, data)
    expected = spy.initial  # one task: the copy is taken at the start of the first step, before its update
    for online in spy.values:
        expected = [0.5 * e + 0.5 * o for e, o in zip(expected, online)]
    assert len(accumulation.offline) == len(list(model.prompt.parameters()))
    for offline, reference, online in zip(accumulation.offline, expected, spy.values[-1]):
        assert torch.allclose(offline, reference, atol=1e-6)
        assert not torch.allclose(offline, online)
    prompt_ids = {id(p) for p in model.prompt.parameters()}
    assert {id(p) for p in accumulation._params} == prompt_ids  # never the backbone, never the head


def test_offline_copy_moves_once_per_optimizer_step_when_gradients_accumulate(tiny_vit, trainer_kwargs):
    """LAE's EMA is per update of the online parameters; under ``accumulate_grad_batches`` a batch without an
    optimizer step left them unchanged, and averaging them in again squared the decay of every step."""
    data = synthetic_fewshot(augmentation="vtab", batch_size=2)
    model = VPT(tiny_vit, data.classnames, num_tokens=2)
    accumulation, spy = MomentumAccumulation(decay=0.5), OnlineSpy()
    Trainer(max_steps=2, accumulate_grad_batches=2, callbacks=[accumulation, spy], **trainer_kwargs).fit(model, data)
    assert len(spy.values) == 4  # four batches, two updates: batches 0 and 2 end with the parameters unchanged
    assert all(torch.equal(a, b) for a, b in zip(spy.initial, spy.values[0]))
    expected = spy.initial
    for online in (spy.values[1], spy.values[3]):
        expected = [0.5 * e + 0.5 * o for e, o in zip(expected, online)]
    for offline, reference in zip(accumulation.offline, expected):
        assert torch.allclose(offline, reference, atol=1e-6)


def test_offline_copy_starts_at_the_second_task(tiny_vit, trainer_kwargs):
    data = two_task_stream(augmentation="vtab", batch_size=2)
    model = VPT(tiny_vit, data.classnames, num_tokens=2)
    accumulation, spy = MomentumAccumulation(decay=0.9), OnlineSpy()

    class Watch(Callback):
        started: list[bool] = []

        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            self.started.append(accumulation.offline is not None)

    watch = Watch()
    trainer = Trainer(max_epochs=2, limit_train_batches=2, callbacks=[accumulation, spy, watch], **trainer_kwargs)
    trainer.fit(model, data)
    assert watch.started == [False, False, True, True]
    # copied at the start of task 2's first step (what task 1 left), as LAE copies at the task switch
    expected = spy.values[1]
    for online in spy.values[2:]:
        expected = [0.9 * e + 0.1 * o for e, o in zip(expected, online)]
    for offline, reference in zip(accumulation.offline, expected):
        assert torch.allclose(offline, reference, atol=1e-6)


def test_ensemble_takes_the_per_class_max_of_both_probabilities(tiny_clip, trainer_kwargs):
    data = synthetic_fewshot(augmentation="vtab")
    model = CoOp(tiny_clip, data.classnames, n_ctx=4)
    accumulation = MomentumAccumulation(decay=0.9)
    trainer = Trainer(max_steps=1, callbacks=[accumulation], **trainer_kwargs)
    trainer.fit(model, data)
    with torch.no_grad():  # make the two models clearly different
        accumulation.offline[0].add_(torch.randn_like(accumulation.offline[0]))
    model.eval()
    images = torch.randn(3, 3, 32, 32)
    online_ctx = model.prompt.ctx.detach().clone()
    online = model(images).logits
    scores = model.evaluation_scores({"image": images}, online)
    with torch.no_grad():
        model.prompt.ctx.copy_(accumulation.offline[0])
    offline = model(images).logits
    with torch.no_grad():
        model.prompt.ctx.copy_(online_ctx)
    assert not torch.allclose(online, offline)
    assert torch.allclose(scores, torch.maximum(F.softmax(online, -1), F.softmax(offline, -1)), atol=1e-6)
    assert torch.equal(model.prompt.ctx, online_ctx)  # restored after the ensemble
    assert torch.allclose(model(images).logits, online)  # and the eval-mode text cache is not stale


def test_offline_state_round_trips_and_unknown_groups_fail(tiny_vit, trainer_kwargs):
    accumulation = MomentumAccumulation()
    accumulation.offline = [torch.ones(2, 3)]
    restored = MomentumAccumulation()
    restored.load_state_dict(accumulation.state_dict())
    assert torch.equal(restored.offline[0], torch.ones(2, 3))
    data = synthetic_fewshot(augmentation="vtab")
    trainer = Trainer(max_steps=1, callbacks=[MomentumAccumulation(groups=["pets"])], **trainer_kwargs)
    with pytest.raises(ConfigurationError, match=r"MomentumAccumulation on VPT: no parameter group \['pets'\]"):
        trainer.fit(VPT(tiny_vit, data.classnames), data)
    assert trainer.global_step == 0


def test_the_offline_copy_follows_its_parameters_onto_their_device():
    """A checkpoint restores the offline copy on the CPU; with the prompt on a GPU (here the meta device stands in)
    it moves at the next swap or step instead of mixing devices (a latent failure under DeepSpeed/FSDP resume)."""
    callback = MomentumAccumulation()
    callback._params = [torch.nn.Parameter(torch.zeros(3, device="meta"))]
    callback.load_state_dict({"offline": [torch.ones(3)]})
    assert callback.offline[0].device.type == "cpu"
    callback.swap()
    assert callback.offline[0].device.type == "meta" and callback.offline[0].shape == (3,)
