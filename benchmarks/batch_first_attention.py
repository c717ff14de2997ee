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
import statistics

import torch
from coop_step import class_names, step, timed  # benchmarks/coop_step.py (the script's folder is on the path)

from lightning_prompts.backbones import OpenCLIP
from lightning_prompts.backbones import open_clip as open_clip_module
from lightning_prompts.methods import CoOp, MaPLe


@contextlib.contextmanager
def transposed_projection():
    """``OpenCLIP``'s blocks as ``nn.MultiheadAttention`` runs them: the transposed view projected."""
    original = open_clip_module.projected_batch_first
    open_clip_module.projected_batch_first = lambda attention: contextlib.nullcontext()
    try:
        yield
    finally:
        open_clip_module.projected_batch_first = original


def compare(label: str, method: torch.nn.Module, batch: int, args: argparse.Namespace) -> None:
    method.train()
    images = torch.randn(batch, 3, 224, 224)
    labels = torch.randint(0, args.classes, (batch,))
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.0)  # the prompt stays

    def logits() -> torch.Tensor:
        return method.compute_output({"image": images}).logits

    def one_step() -> float:
        return timed(lambda: step(logits, labels, optimizer), "cpu")

    ours = logits().detach()  # with gradients recorded, as in training (the projection is theirs only)
    with transposed_projection():
        transposed = logits().detach()
    difference = ((ours - transposed).abs().max() / ours.abs().max()).item()
    times: dict[str, list[float]] = {"transposed": [], "batch-first": []}
    for round_index in range(args.rounds + 1):  # round 0 warms up
        with transposed_projection():
            seconds = {"transposed": one_step()}
        seconds["batch-first"] = one_step()
        for name, value in seconds.items():
            if round_index:
                times[name].append(value)
            warm_up = " (warm-up)" * (not round_index)
            print(f"  {label} round {round_index}{warm_up}: {name} {value:.2f} s", flush=True)
    ratio = statistics.median(times["transposed"]) / statistics.median(times["batch-first"])
    print(f"speedup_{label}: {ratio:.2f} (batch {batch})", flush=True)
    print(f"logits_difference_{label}: {difference:.1e} (relative)", flush=True)


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
    setups = {
        "maple": (MaPLe(clip, names, n_ctx=2, depth=9), 4),
        "coop_class_specific": (CoOp(clip, names, n_ctx=16, class_specific=True), 8),
    }
    for label, (method, batch) in setups.items():
        compare(label, method, batch, args)
    print(f"load average after: {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
