"""Per-training-step overhead of each plug-in callback against the same method without it.

One run: for every (method, callback) pair the method is trained for a few steps without and then
with the callback on the same batches (after one discarded warm-up fit per method), and the median
step time (``on_train_batch_start`` to ``on_train_batch_end``: forward, loss terms, backward,
callback hooks, optimizer step; data loading excluded) is compared. Real model sizes, random or shipped weights:

* CLIP methods on the offline stand-in CLIP (EfficientNet-Lite0 + MiniLM, 224 px; needs the
  ``testbed`` extra), CoOp with 10 classes, batch 8;
* VPT on a ViT-S/16 (random weights, 224 px), batch 8.

It also times ConsistencyRegularization with its teacher text features cached (the default: once per
class set) against recomputing them every step, which is what caching saves.

    python benchmarks/callback_overhead.py [--steps 8] [--warmup 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer

from lightning_prompts.backbones import StandInCLIP, TimmViT
from lightning_prompts.callbacks import (
    ConsistencyRegularization,
    GradCAMMasks,
    GradientRegulation,
    MomentumAccumulation,
    PullPushRegularization,
)
from lightning_prompts.data import FewShotImageDataModule, Synthetic
from lightning_prompts.methods import VPT, CoOp
from lightning_prompts.optim import GradientRegulator

#: Teacher texts per class for the caching comparison (CLIP's hand-written ImageNet templates).
TEMPLATES = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
)


class StepStart(Callback):
    def __init__(self) -> None:
        self.started = 0.0

    def on_train_batch_start(self, *args: Any) -> None:
        self.started = time.perf_counter()


class StepEnd(Callback):
    def __init__(self, start: StepStart) -> None:
        self.start, self.durations = start, []

    def on_train_batch_end(self, *args: Any) -> None:
        self.durations.append(time.perf_counter() - self.start.started)


class RecomputeTeacher(Callback):
    """Drops ConsistencyRegularization's cached teacher text features before every step."""

    def __init__(self, term: ConsistencyRegularization) -> None:
        self.term = term

    def on_train_batch_start(self, *args: Any) -> None:
        self.term._teacher = None


def median_step(make_model: Callable[[], Any], data: Any, callbacks: list[Callback], steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    start = StepStart()
    end = StepEnd(start)
    trainer = Trainer(
        max_steps=warmup + steps,
        callbacks=[start, *callbacks, end],
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(make_model(), data)
    return statistics.median(end.durations[warmup:])


def image_data(image_size: int, **kwargs: Any) -> FewShotImageDataModule:
    return FewShotImageDataModule(
        dataset="caltech101",
        shots=8,
        synthetic=Synthetic(num_classes=10, images_per_class=8, image_size=image_size),
        image_size=image_size,
        augmentation="vtab",
        batch_size=8,
        shuffle=False,
        num_workers=0,  # loader workers would decode the next batches during the timed steps
        **kwargs,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    regulator = GradientRegulator()

    clip = StandInCLIP()
    clip_data = image_data(224, views=2, masks=True, normalization="inception")

    def coop() -> CoOp:
        return CoOp(clip, clip_data.classnames, n_ctx=4, ctx_init="a photo of a")

    vit = TimmViT("vit_small_patch16_224", pretrained=False)
    vit_data = image_data(224, views=2)

    def vpt() -> VPT:
        return VPT(vit, vit_data.classnames, num_tokens=10)

    consistency = ConsistencyRegularization(weight=1.0, templates=TEMPLATES)
    rows = [
        ("CoOp", coop, clip_data, "ConsistencyRegularization", [ConsistencyRegularization(weight=1.0)]),
        ("CoOp", coop, clip_data, "PullPushRegularization (disk masks)", [PullPushRegularization(switch_epoch=100)]),
        (
            "CoOp",
            coop,
            clip_data,
            "GradCAMMasks (per step) + PullPushRegularization",
            [GradCAMMasks(refresh="step"), PullPushRegularization(switch_epoch=100)],
        ),
        ("CoOp", coop, clip_data, "GradientRegulation", [GradientRegulation(regulator)]),
        ("CoOp", coop, clip_data, "MomentumAccumulation", [MomentumAccumulation()]),
        ("VPT", vpt, vit_data, "ConsistencyRegularization (image)", [ConsistencyRegularization(text=False)]),
        ("VPT", vpt, vit_data, "GradientRegulation", [GradientRegulation(regulator)]),
        ("VPT", vpt, vit_data, "MomentumAccumulation", [MomentumAccumulation()]),
    ]
    print(f"median training-step time over {args.steps} steps (after {args.warmup} warm-up), one run:")
    warmed: set[str] = set()
    for method, make, data, name, callbacks in rows:
        if method not in warmed:  # a first fit pays one-time costs (allocator, kernel caches): discard it
            median_step(make, data, [], args.steps, args.warmup)
            warmed.add(method)
        # the baseline is measured right before and right after each callback run (their mean), so
        # both sides see the same machine state on a machine whose speed drifts
        before = median_step(make, data, [], args.steps, args.warmup)
        with_callback = median_step(make, data, callbacks, args.steps, args.warmup)
        baseline = (before + median_step(make, data, [], args.steps, args.warmup)) / 2
        print(
            f"overhead {method} + {name}: {with_callback / baseline:.2f}x "
            f"({baseline * 1000:.0f} ms -> {with_callback * 1000:.0f} ms)"
        )

    # the teacher sees every description of every class; CoPrompt's files hold several per class
    cached = median_step(coop, clip_data, [consistency], args.steps, args.warmup)
    fresh = ConsistencyRegularization(weight=1.0, templates=TEMPLATES)
    recomputed = median_step(coop, clip_data, [RecomputeTeacher(fresh), fresh], args.steps, args.warmup)
    print(
        f"teacher text features ({len(TEMPLATES)} per class) cached: {cached * 1000:.0f} ms/step, "
        f"recomputed every step: {recomputed * 1000:.0f} ms/step "
        f"(caching saves {(recomputed - cached) * 1000:.0f} ms per step, {recomputed / cached:.2f}x)"
    )


if __name__ == "__main__":
    main()
