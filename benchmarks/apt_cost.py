"""APT's cost against deep prompt tuning with as many prompts, on a ViT-B/16-sized model.

For one training step (forward + backward) of a batch of 224-px images on a randomly initialised
``vit_base_patch16_224`` (the architecture of the recipes' backbone; weights do not change the cost):

* FLOPs counted by ``torch.utils.flop_counter`` (exact, not timed) for the head alone (the frozen ViT's
  own cost), VPT-deep with ``--tokens`` prompts per block, and APT with a ``--tokens`` bank per block;
* the *extra* FLOPs each adds over the head alone, and APT's extra as a share of VPT-deep's (the paper
  reports −82.30 % computation overhead against deep prompt tuning on VQA, METER);
* the median step time of each, alternating the three in one process.

    python benchmarks/apt_cost.py [--tokens 200] [--batch 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from lightning_prompts.backbones import TimmViT
from lightning_prompts.methods import APT, VPT


def step_of(method, images, labels):
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=1e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        method.task_loss(method.forward_batch({"image": images}), labels).backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="vit_base_patch16_224")
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = TimmViT(args.model, pretrained=False)
    classes = [f"class {i}" for i in range(10)]
    methods = {
        "head only": VPT(backbone, classes, num_tokens=1, deep=False),
        f"VPT-deep ({args.tokens})": VPT(backbone, classes, num_tokens=args.tokens, deep=True),
        f"APT ({args.tokens})": APT(backbone, classes, num_tokens=args.tokens, rank=4),
    }
    methods["head only"].prompt.requires_grad_(False)
    images, labels = torch.randn(args.batch, 3, 224, 224), torch.randint(0, 10, (args.batch,))
    steps = {name: step_of(method.train(), images, labels) for name, method in methods.items()}
    flops = {}
    for name, step in steps.items():
        with FlopCounterMode(display=False) as counter:
            step()
        flops[name] = counter.get_total_flops()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(args.rounds + 1):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if round_index:
                times[name].append(time.perf_counter() - start)
    base = flops["head only"]
    print(f"{args.model}, batch {args.batch}, one training step (forward + backward)")
    print("| method | GFLOPs | extra GFLOPs over the head alone | step time (s) |")
    print("|---|---|---|---|")
    for name in steps:
        extra = (flops[name] - base) / 1e9
        print(f"| {name} | {flops[name] / 1e9:.1f} | {extra:.1f} | {statistics.median(times[name]):.2f} |")
    vpt, apt = (flops[name] - base for name in list(steps)[1:])
    print(f"APT's extra FLOPs are {100 * apt / vpt:.1f} % of VPT-deep's ({100 * (apt / vpt - 1):+.1f} %).")


if __name__ == "__main__":
    main()
