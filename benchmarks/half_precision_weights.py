"""Vision backbones with 16-bit frozen weights (``OpenCLIP``/``TimmViT`` ``dtype="bfloat16"``) against float32 ones,
both under bf16 autocast (``precision: bf16-mixed``): weight memory and what a train step keeps for backward.

Autocast caches its casts only of weights that take gradients, so a frozen float32 weight is cast anew in every
forward pass, and where the prompt's gradient flows back through the product, the bfloat16 copy is kept for the
backward pass: a second, half-size copy of the tower's weights among the activations. Weights kept in bfloat16
are used as they are. MaPLe (100 classes, 2 context vectors, depth 9, batch 4), VPT-deep (50 tokens) and CoOp at
1,000 classes (16 context vectors), on ViT-B/16 architectures with random weights (``--model tiny``: the tiny
towers, a smoke test). One process, the two settings alternating (one warm-up, then ``--rounds`` rounds).

Prints, per method: the backbone's weight bytes and ``weights_ratio_<method>`` (float32 / bfloat16), the bytes
saved for backward (``saved_memory.py``: deterministic on any machine) and ``mem_ratio_<method>`` (float32 /
bfloat16 weights; >1 means 16-bit weights keep less), the median step times and ``time_ratio_<method>`` (bfloat16
/ float32 weights; on CPUs without bfloat16 units autocast is slow either way), and the largest logit difference
beside the logits' spread over the classes.

    python benchmarks/half_precision_weights.py [--model vit_b16|tiny] [--batch 4] [--rounds 2] [--device cuda]

On ``--device cuda`` the same runs on the GPU, and each setting's step also prints its peak of allocated CUDA memory
above what was resident before it (activations, autocast's casts and the gradients).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics

import torch
import torch.nn.functional as F
from coop_step import timed  # benchmarks/coop_step.py (the script's folder is on the path)
from saved_memory import saved_bytes

from lightning_prompts.backbones import OpenCLIP, TimmViT
from lightning_prompts.methods import VPT, CoOp, MaPLe


def methods(model: str, dtype: str) -> dict[str, torch.nn.Module]:
    """The three methods on backbones with ``dtype`` weights (seeded: the same weights before the cast)."""
    tiny = model == "tiny"

    def clip() -> OpenCLIP:
        return OpenCLIP("tiny" if tiny else "ViT-B-16", pretrained=None, dtype=dtype)

    vit = TimmViT("tiny" if tiny else "vit_base_patch16_224", pretrained=False, dtype=dtype)
    names = [f"class {i}" for i in range(100)]
    torch.manual_seed(0)
    built = {
        "maple": MaPLe(clip(), names, n_ctx=2, depth=1 if tiny else 9),
        "vpt_deep": VPT(vit, names, num_tokens=50, deep=True),
        "coop_1000": CoOp(clip(), [f"class {i}" for i in range(1000)], n_ctx=16),
    }
    for method in built.values():
        method.train()
    return built


def logits_of(method: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.autocast(images.device.type, dtype=torch.bfloat16):
        return method.compute_output({"image": images}).logits.float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["vit_b16", "tiny"], default="vit_b16")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cuda: also the step's peak of CUDA memory above the weights")
    args = parser.parse_args()
    size = 32 if args.model == "tiny" else 224
    print(f"{args.model} towers, random weights, batch {args.batch}, threads {torch.get_num_threads()}, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    images = torch.randn(args.batch, 3, size, size).to(args.device)
    labels = (torch.arange(args.batch) % 2).to(args.device)
    full, half = methods(args.model, "float32"), methods(args.model, "bfloat16")
    for label in full:
        compare(label, full[label].to(args.device), half[label].to(args.device), images, labels, args.rounds)


def compare(
    label: str, full: torch.nn.Module, half: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, rounds: int
) -> None:
    def loss_of(method: torch.nn.Module) -> torch.Tensor:
        return F.cross_entropy(logits_of(method, images), labels)

    times: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    for round_index in range(rounds + 1):  # the first round warms up
        for setting, method in (("float32", full), ("bfloat16", half)):
            params = [p for p in method.parameters() if p.requires_grad]
            seconds = timed(lambda: torch.autograd.grad(loss_of(method), params), images.device.type)  # noqa: B023
            times[setting].extend([seconds] if round_index else [])
    if images.device.type == "cuda":
        for setting, method in (("float32", full), ("bfloat16", half)):
            params = [p for p in method.parameters() if p.requires_grad]
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            torch.autograd.grad(loss_of(method), params)
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - before) / 2**20
            print(f"{label}: step's CUDA peak above the resident tensors {peak:.1f} MiB with {setting} weights")
    weights = {
        setting: sum(p.numel() * p.element_size() for p in method.backbone.parameters())
        for setting, method in (("float32", full), ("bfloat16", half))
    }
    kept_full = saved_bytes(functools.partial(loss_of, full), full)
    kept_half = saved_bytes(functools.partial(loss_of, half), half)
    with torch.no_grad():
        reference, logits = logits_of(full, images), logits_of(half, images)
    full_s, half_s = statistics.median(times["float32"]), statistics.median(times["bfloat16"])
    mib = 2**20
    print(f"{label}: weights {weights['float32'] / mib:.1f} MiB float32, {weights['bfloat16'] / mib:.1f} bfloat16")
    print(f"{label}: saved for backward {kept_full / mib:.1f} MiB float32 weights, {kept_half / mib:.1f} bfloat16")
    print(f"{label}: step {full_s:.2f} s float32 weights, {half_s:.2f} s bfloat16 (rounds: {times})")
    spread = float(reference.max() - reference.min())
    print(f"{label}: logit difference {float((logits - reference).abs().max()):.3f} (spread {spread:.3f})")
    print(f"weights_ratio_{label}: {weights['float32'] / weights['bfloat16']:.2f}")
    print(f"mem_ratio_{label}: {kept_full / kept_half:.2f}")
    print(f"time_ratio_{label}: {half_s / full_s:.2f}", flush=True)


if __name__ == "__main__":
    main()
