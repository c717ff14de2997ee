"""DDP on CPU (gloo, 2 processes) ends where one process ends; bf16-mixed stays finite."""

from __future__ import annotations

import functools

import pytest
import torch
from helpers import synthetic_fewshot
from lightning.pytorch import Trainer

from lightning_prompts.methods import VPT, CoOp


def train_coop(clip, strategy: str, devices: int, batch_size: int, root) -> torch.Tensor:
    # resize-only preprocessing and no shuffling: both runs see the same 8 images per step
    data = synthetic_fewshot(shots=2, num_classes=4, augmentation="vtab", shuffle=False, batch_size=batch_size)
    torch.manual_seed(0)
    method = CoOp(clip, data.classnames, n_ctx=4, optimizer=functools.partial(torch.optim.SGD, lr=0.5, momentum=0.9))
    trainer = Trainer(
        max_epochs=3,
        strategy=strategy,
        devices=devices,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=str(root),
    )
    trainer.fit(method, data)  # ddp_spawn copies the trained weights back into this process
    return method.prompt.ctx.detach().clone()


def test_ddp_two_processes_match_one_process_on_the_same_global_batch(tiny_clip, tmp_path):
    single = train_coop(tiny_clip, "auto", 1, batch_size=8, root=tmp_path / "single")  # 1 step per epoch
    ddp = train_coop(tiny_clip, "ddp_spawn", 2, batch_size=4, root=tmp_path / "ddp")
    initial = CoOp(tiny_clip, ["a"], n_ctx=4).prompt.ctx  # same seed as above: torch.manual_seed(0) first
    assert not torch.allclose(single, initial)  # training moved the prompt
    assert torch.allclose(single, ddp, atol=1e-5), (single - ddp).abs().max()


@pytest.mark.parametrize("method_name", ["coop", "vpt"])
def test_bf16_mixed_run_stays_finite(method_name, tiny_clip, tiny_vit, trainer_kwargs):
    data = synthetic_fewshot(augmentation="clip" if method_name == "coop" else "vtab")
    if method_name == "coop":
        method = CoOp(tiny_clip, data.classnames, n_ctx=4)
    else:
        method = VPT(tiny_vit, data.classnames, num_tokens=4, deep=True)
    before = [p.detach().clone() for p in method.parameters() if p.requires_grad]
    trainer = Trainer(max_steps=3, precision="bf16-mixed", **trainer_kwargs)
    trainer.fit(method, data)
    loss = trainer.callback_metrics["train/loss"]
    assert torch.isfinite(loss)
    after = [p.detach() for p in method.parameters() if p.requires_grad]
    assert all(torch.isfinite(p).all() for p in after)
    assert all(p.dtype == torch.float32 for p in after)  # fp32 master weights
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
