"""Warm-up + cosine schedules reproduce Dassl's (CoOp) and VPT's learning rates epoch by epoch."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_prompts.optim import WarmupCosineLR


def lrs(scheduler, epochs):
    values = []
    for _ in range(epochs):
        values.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return values


def optimizer(lr):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_dassl_constant_warmup_then_cosine_over_max_epochs():
    # Dassl's ConstantWarmupScheduler(CosineAnnealingLR(T_max=10), warmup 1 epoch at 1e-5),
    # values obtained by running Dassl's scheduler code:
    expected = [
        1e-05,
        0.002,
        0.00195106,
        0.00180902,
        0.00158779,
        0.00130902,
        0.001,
        0.000690983,
        0.000412215,
        0.000190983,
    ]
    scheduler = WarmupCosineLR(
        optimizer(0.002), max_epochs=10, warmup_epochs=1, warmup="constant", warmup_lr=1e-5, cosine_span="total"
    )
    assert lrs(scheduler, 10) == pytest.approx(expected, rel=1e-5)


def test_vpt_linear_warmup_from_zero_then_cosine_over_the_rest():
    scheduler = WarmupCosineLR(optimizer(0.1), max_epochs=100, warmup_epochs=10)
    values = lrs(scheduler, 100)
    assert values[0] == 0.0 and values[5] == pytest.approx(0.05)
    assert values[10] == pytest.approx(0.1)
    assert values[55] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))


def test_max_epochs_can_come_from_the_trainer():
    scheduler = WarmupCosineLR(optimizer(1.0), warmup_epochs=0)
    scheduler.set_max_epochs(4)
    assert lrs(scheduler, 4) == pytest.approx(
        [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))]
    )


def test_each_group_keeps_its_own_base_lr():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD([{"params": [params[0]], "lr": 1.0}, {"params": [params[1]], "lr": 0.1}])
    scheduler = WarmupCosineLR(opt, max_epochs=4, warmup_epochs=0)
    opt.step()
    scheduler.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx(
        [0.5 * (1 + math.cos(math.pi / 4)), 0.05 * (1 + math.cos(math.pi / 4))]
    )


def test_linear_decay_is_transformers_linear_schedule_with_warmup():
    from transformers import get_linear_schedule_with_warmup

    ours = WarmupCosineLR(optimizer(0.3), max_epochs=40, warmup_epochs=5, decay="linear")
    theirs = get_linear_schedule_with_warmup(optimizer(0.3), num_warmup_steps=5, num_training_steps=40)
    assert lrs(ours, 40) == pytest.approx(lrs(theirs, 40), abs=1e-12)
    with pytest.raises(ValueError, match="decay"):
        WarmupCosineLR(optimizer(0.1), decay="step")


def test_from_start_cosine_is_timms_cosine_scheduler_as_point_mae_configures_it():
    from timm.scheduler import CosineLRScheduler

    reference_optimizer = optimizer(5e-4)
    reference = CosineLRScheduler(
        reference_optimizer, t_initial=30, lr_min=1e-6, warmup_lr_init=1e-6, warmup_t=10, cycle_limit=1
    )
    expected = []
    for epoch in range(30):
        reference.step(epoch)
        expected.append(reference_optimizer.param_groups[0]["lr"])
    scheduler = WarmupCosineLR(
        optimizer(5e-4), max_epochs=30, warmup_epochs=10, warmup_lr=1e-6, cosine_span="from_start", min_lr=1e-6
    )
    assert lrs(scheduler, 30) == pytest.approx(expected, rel=1e-9)


def test_a_warm_up_as_long_as_the_run_is_warned_about(tmp_path):
    # 5 warm-up epochs in a 2-epoch run: the whole run stayed at warmup_lr, silently, before
    from pathlib import Path

    from lightning_prompts.cli import run_cli

    recipes = Path(__file__).resolve().parents[2] / "recipes"
    command = ["fit", "--config", str(recipes / "coop" / "dtd.yaml"), "--config", str(recipes / "_tiny" / "clip.yaml"),
               "--trainer.fast_dev_run", "false", "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "1",
               "--trainer.limit_val_batches", "1", "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    with pytest.warns(UserWarning, match=r"warmup_epochs \(5\) is not shorter than the schedule \(2 epochs\)"):
        run_cli([*command, "--model.init_args.lr_scheduler.init_args.warmup_epochs", "5"])
    assert not WarmupCosineLR(optimizer(1.0), warmup_epochs=1, max_epochs=2).never_leaves_warmup
    assert WarmupCosineLR(optimizer(1.0), warmup_epochs=2, max_epochs=2).never_leaves_warmup
