"""CLIP's image tower with its last block for the class token alone, against the whole last block.

A ViT tower pooled at its class token reads one row of the last block's output;
``lightning_prompts/backbones/class_token_block.py`` runs that block for the class token only (every token's keys
and values, one query, one row of output projection and MLP), the same features to float rounding. This times
three uses both ways, in one process, alternating (one warm-up, then ``--rounds`` rounds), on CLIP ViT-B/16's
architecture with random weights, 100 classes, fp32:

* MaPLe at batch 8 (2 context vectors, depth 9): a training step, the prompted image tower forward and backward;
* CoOp at batch 8 (16 context vectors): a training step, the frozen image tower forward only;
* zero-shot CLIP evaluation: the frozen image tower on a batch of 32 under ``torch.no_grad``.

Prints each round, ``speedup_<use>`` (the whole block's time / the class token's) and the largest relative
logits difference.

    python benchmarks/class_token_block.py [--rounds 3] [--classes 100]
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import torch
from alternating import (  # benchmarks/alternating.py (the script's folder is on the path)
    clip_arguments,
    clip_training_step,
    compare_alternating,
    replaced,
)
from coop_step import class_names, timed  # benchmarks/coop_step.py

from lightning_prompts.backbones import OpenCLIP
from lightning_prompts.backbones import open_clip as open_clip_module
from lightning_prompts.methods import CoOp, MaPLe, ZeroShotCLIP


def whole_last_block() -> contextlib.AbstractContextManager:
    """``OpenCLIP`` as before the class-token path: every token through the last block."""
    return replaced(open_clip_module, "reads_class_token_only", lambda visual, hook: False)


def evaluation(method: torch.nn.Module, batch: int) -> tuple[Callable[[], float], Callable]:
    method.eval()
    images = torch.randn(batch, 3, 224, 224)

    @torch.no_grad()
    def logits() -> torch.Tensor:
        return method.compute_output({"image": images}).logits

    return (lambda: timed(logits, "cpu")), logits


def main() -> None:
    args = clip_arguments(__doc__.split("\n\n")[0])
    clip = OpenCLIP("ViT-B-16", pretrained=None)  # ViT-B/16's architecture, random weights
    names = class_names(args.classes)
    torch.manual_seed(0)
    uses = {
        "maple_batch8": clip_training_step(MaPLe(clip, names, n_ctx=2, depth=9), 8, args.classes),
        "coop_batch8": clip_training_step(CoOp(clip, names, n_ctx=16), 8, args.classes),
        "zero_shot_eval_batch32": evaluation(ZeroShotCLIP(clip, names), 32),
    }
    for label, (run, logits) in uses.items():
        compare_alternating(label, run, logits, whole_last_block, ("whole block", "class token"), args.rounds)
    print(f"load average after: {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
