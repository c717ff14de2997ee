"""open_clip's batch-first attention blocks with and without the input projection on the batch-first tokens.

``nn.MultiheadAttention(batch_first=True)`` projects a transposed view of its tokens; when they need gradients,
``matmul`` runs that as one product per position (``lightning_prompts/backbones/batch_first_attention.py``).
``OpenCLIP`` runs its blocks' self-attention on the batch-first tokens instead, the same arithmetic. This times
one training step both ways, in one process, alternating (one warm-up, then ``--rounds`` rounds), on CLIP
ViT-B/16's architecture with random weights, 100 classes, fp32:

* MaPLe at its configuration (2 context vectors, depth 9, batch 4): the image tower's forward and backward into
  the visual prompts;
* CoOp with class-specific context (16 vectors, batch 8): no prefix is shared, so every class's tokens run the
  text tower's plain blocks with gradients.

Prints each round, ``speedup_<method>`` (the step without / with it) and the largest relative logits difference.

    python benchmarks/batch_first_attention.py [--rounds 3] [--classes 100]
"""

from __future__ import annotations

import argparse
import contextlib
import os

import torch
from alternating import (  # benchmarks/alternating.py (the script's folder is on the path)
    clip_arguments,
    clip_training_step,
    compare_alternating,
    replaced,
)
from coop_step import class_names  # benchmarks/coop_step.py

from lightning_prompts.backbones import OpenCLIP
from lightning_prompts.backbones import open_clip as open_clip_module
from lightning_prompts.methods import CoOp, MaPLe


def transposed_projection() -> contextlib.AbstractContextManager:
    """``OpenCLIP``'s blocks as ``nn.MultiheadAttention`` runs them: the transposed view projected."""
    return replaced(open_clip_module, "projected_batch_first", lambda attention: contextlib.nullcontext())


def compare(label: str, method: torch.nn.Module, batch: int, args: argparse.Namespace) -> None:
    run, logits = clip_training_step(method, batch, args.classes)
    names = ("transposed", "batch-first")
    compare_alternating(label, run, logits, transposed_projection, names, args.rounds, note=f" (batch {batch})")


def main() -> None:
    args = clip_arguments(__doc__.split("\n\n")[0])
    clip = OpenCLIP("ViT-B-16", pretrained=None)  # ViT-B/16's architecture, random weights
    names = class_names(args.classes)
    torch.manual_seed(0)
    setups = {
        "maple": (MaPLe(clip, names, n_ctx=2, depth=9), 4),
        "coop_class_specific": (CoOp(clip, names, n_ctx=16, class_specific=True), 8),
    }
    for label, (method, batch) in setups.items():
        compare(label, method, batch, args)
    print(f"load average after: {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
