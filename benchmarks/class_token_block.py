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

import argparse
import contextlib
import os
import statistics
from collections.abc import Callable

import torch
from coop_step import class_names, step, timed  # benchmarks/coop_step.py (the script's folder is on the path)

from lightning_prompts.backbones import OpenCLIP
from lightning_prompts.backbones import open_clip as open_clip_module
from lightning_prompts.methods import CoOp, MaPLe, ZeroShotCLIP


@contextlib.contextmanager
def whole_last_block():
    """``OpenCLIP`` as before the class-token path: every token through the last block."""
    original = open_clip_module.reads_class_token_only
    open_clip_module.reads_class_token_only = lambda visual, hook: False
    try:
        yield
    finally:
        open_clip_module.reads_class_token_only = original


def compare(label: str, run: Callable[[], float], logits: Callable[[], torch.Tensor], rounds: int) -> None:
    ours = logits()
    with whole_last_block():
        whole = logits()
    difference = ((ours - whole).abs().max() / whole.abs().max()).item()
    times: dict[str, list[float]] = {"whole block": [], "class token": []}
    for round_index in range(rounds + 1):  # round 0 warms up
        with whole_last_block():
            seconds = {"whole block": run()}
        seconds["class token"] = run()
        for name, value in seconds.items():
            if round_index:
                times[name].append(value)
            warm_up = " (warm-up)" * (not round_index)
            print(f"  {label} round {round_index}{warm_up}: {name} {value:.2f} s", flush=True)
    ratio = statistics.median(times["whole block"]) / statistics.median(times["class token"])
    print(f"speedup_{label}: {ratio:.2f}", flush=True)
    print(f"logits_difference_{label}: {difference:.1e} (relative)", flush=True)


def training_step(method: torch.nn.Module, batch: int, classes: int) -> tuple[Callable[[], float], Callable]:
    method.train()
    images = torch.randn(batch, 3, 224, 224)
    labels = torch.randint(0, classes, (batch,))
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.0)  # the prompt stays

    def logits() -> torch.Tensor:
        return method.compute_output({"image": images}).logits

    return (lambda: timed(lambda: step(logits, labels, optimizer), "cpu")), (lambda: logits().detach())


def evaluation(method: torch.nn.Module, batch: int) -> tuple[Callable[[], float], Callable]:
    method.eval()
    images = torch.randn(batch, 3, 224, 224)

    @torch.no_grad()
    def logits() -> torch.Tensor:
        return method.compute_output({"image": images}).logits

    return (lambda: timed(logits, "cpu")), logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}", flush=True)
    clip = OpenCLIP("ViT-B-16", pretrained=None)  # ViT-B/16's architecture, random weights
    names = class_names(args.classes)
    torch.manual_seed(0)
    uses = {
        "maple_batch8": training_step(MaPLe(clip, names, n_ctx=2, depth=9), 8, args.classes),
        "coop_batch8": training_step(CoOp(clip, names, n_ctx=16), 8, args.classes),
        "zero_shot_eval_batch32": evaluation(ZeroShotCLIP(clip, names), 32),
    }
    for label, (run, logits) in uses.items():
        compare(label, run, logits, args.rounds)
    print(f"load average after: {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
