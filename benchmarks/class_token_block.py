"""CLIP's image tower with its last block for the class token alone, against the whole last block.

A ViT tower pooled at its class token reads one row of the last block's output;
``lightning_prompts/backbones/class_token_block.py`` runs that block for the class token only (every token's keys
and values, one query, one row of output projection and MLP, image by image), the same features to float rounding,
while gradients are recorded: a prompted tower in training. This times MaPLe's training step (2 context vectors,
depth 9: the prompted image tower forward and backward) at its batch 4 and at CoOp's 8 both ways, in one process,
alternating (one warm-up, then ``--rounds`` rounds), on CLIP ViT-B/16's architecture with random weights, 100
classes, fp32.

Prints each round, ``speedup_<use>`` (the whole block's time / the class token's) and the largest relative
logits difference.

    python benchmarks/class_token_block.py [--rounds 3] [--classes 100]
"""

from __future__ import annotations

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
from lightning_prompts.methods import MaPLe


def whole_last_block() -> contextlib.AbstractContextManager:
    """``OpenCLIP`` as before the class-token path: every token through the last block."""
    return replaced(open_clip_module, "reads_class_token_only", lambda visual, hook: False)


def main() -> None:
    args = clip_arguments(__doc__.split("\n\n")[0])
    clip = OpenCLIP("ViT-B-16", pretrained=None)  # ViT-B/16's architecture, random weights
    names = class_names(args.classes)
    torch.manual_seed(0)
    maple = MaPLe(clip, names, n_ctx=2, depth=9)
    uses = {f"maple_batch{batch}": clip_training_step(maple, batch, args.classes) for batch in (4, 8)}
    for label, (run, logits) in uses.items():
        compare_alternating(label, run, logits, whole_last_block, ("whole block", "class token"), args.rounds)
    print(f"load average after: {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
