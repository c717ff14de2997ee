"""One CoOp (and MaPLe) training step against the way the CoOp paper's code takes it.

The reference is written here, as CoOp's ``TextEncoder`` does it (KaiyangZhou/CoOp, trainers/coop.py):
every class's full 77-token prompt ``[SOS] ctx_1 … ctx_n <class> . [EOT] pad…`` plus positional
embeddings through the whole text transformer, every step, the feature read at the end-of-text token;
the frozen image encoder on the batch; ``CE(s · <f, w_c>)``; backward into the context; an SGD step.
Ours is :class:`~lightning_prompts.methods.CoOp`'s step on the same backbone: the text pass stops at the
last end-of-text token and runs the context prefix shared by all classes once.

Both run in one process, alternating (one warm-up, then ``--rounds`` rounds), on CLIP ViT-B/16's architecture
with random weights (the cost does not depend on the values), batch 8, 16 context vectors, fp32. MaPLe runs with
its own configuration (``vit_b16_c2_ep5_batch4_2ctx``: 2 context vectors, prompt depth 9, batch 4;
``--maple-batch 8`` for CoOp's batch): both sides run the image tower forward and backward into the visual prompts
(the reference every token through its last block, as the papers' code; ours the class token only,
``lightning_prompts/backbones/class_token_block.py``), so the batch sets how much of the step no text pass can
save. Printed: each round, ``ratio_<C>`` (reference time
/ ours), the largest relative logits difference, and ``mem_ratio_<C>``: the bytes of activations saved for
backward in one step, counted with ``torch.autograd.graph.saved_tensors_hooks`` (every distinct storage the
step's graph keeps, counted while the graph is alive, the model's own weights left out; deterministic on any
machine).

    python benchmarks/coop_step.py                      # 100 and 1000 classes, CoOp; MaPLe at 100
    python benchmarks/coop_step.py --classes 100 --methods coop --rounds 2
    python benchmarks/coop_step.py --device cuda --batch 32 --classes 1000 --peak-memory   # GPU check
    python benchmarks/coop_step.py --classes 100 --methods coop --rounds 1 --count-ops      # kernel launches
    python benchmarks/coop_step.py --device cuda --batch 32 --classes 1000 --methods coop --skip-reference \
        --peak-memory --gradient-checkpointing                                              # ours, checkpointed

``--count-ops`` also prints ``dispatched_ops_<C>``: the operations one step dispatches (forward and backward,
views left out; ``benchmarks/dispatched_ops.py``) for the reference, ours, ours in one padded group and ours
without the shared prefix, the count a GPU pays per launch when its kernels are too small to keep it busy.
On CUDA the last two variants are timed too (``grouped_over_padded_<C>``, ``shared_over_plain_<C>``).
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from dispatched_ops import dispatched_ops  # benchmarks/dispatched_ops.py (the script's folder is on the path)
from saved_memory import saved_bytes  # benchmarks/saved_memory.py

from lightning_prompts.backbones import OpenCLIP
from lightning_prompts.backbones import open_clip as open_clip_module
from lightning_prompts.backbones.batch_first_attention import projected_batch_first
from lightning_prompts.methods import CoOp, MaPLe


def class_names(count: int) -> list[str]:
    """``count`` distinct class names of one to three words (ImageNet-like lengths)."""
    words = ("red", "small", "north", "sea", "tabby", "golden", "wild", "paper", "stone", "night", "river")
    nouns = ("cat", "eagle", "turtle", "lamp", "boat", "tower", "ferret", "orchid", "drum", "kettle", "maple")
    names = []
    for index in range(count):
        a, b, c = index % len(words), (index // len(words)) % len(nouns), index // (len(words) * len(nouns))
        names.append(" ".join([words[a], nouns[b]] + [f"type {c}"] * (c > 0)))
    return names


# -- the reference: CoOp's text encoder and training step -------------------------------------------------
def sequence_first_block(block: torch.nn.Module, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
    """open_clip's block at the cost of OpenAI CLIP's sequence-first one, which the papers' code runs: batch-first,
    ``nn.MultiheadAttention`` would project a transposed view, one matrix product per position when the tokens
    need gradients (``lightning_prompts/backbones/batch_first_attention.py``); the same arithmetic otherwise."""
    with projected_batch_first(block.attn):
        return block(x, attn_mask=attn_mask)


# -- the reference: CoOp's text encoder and training step
def reference_text_features(clip: OpenCLIP, prompts: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """CoOp's TextEncoder.forward on open_clip's modules: all 77 positions, then the EOT row."""
    model = clip.model
    x = prompts + model.positional_embedding
    for block in model.transformer.resblocks:
        x = sequence_first_block(block, x, model.attn_mask)
    x = model.ln_final(x)
    return x[torch.arange(x.shape[0]), eot] @ model.text_projection


def reference_coop_logits(method: CoOp, images: torch.Tensor) -> torch.Tensor:
    clip = method.backbone
    with torch.no_grad():
        image = F.normalize(clip.encode_image(images).features, dim=-1)
    prompts, eot = method.prompt()
    text = F.normalize(reference_text_features(clip, prompts, eot), dim=-1)
    return clip.logit_scale * image @ text.t()


def reference_maple_logits(method: MaPLe, images: torch.Tensor) -> torch.Tensor:
    """MaPLe's official forward: the deep-prompted text encoder over all 77 positions, and the whole prompted image
    tower (every token through the last block, as the official code runs it)."""
    clip = method.backbone
    prompts, eot, deep = method.prompt.text_prompts()
    model = clip.model
    x = prompts + model.positional_embedding
    for index, block in enumerate(model.transformer.resblocks):
        if 1 <= index <= len(deep):
            x = torch.cat([x[:, :1], deep[index - 1].expand(x.shape[0], -1, -1), x[:, 1 + deep[0].shape[0] :]], 1)
        x = sequence_first_block(block, x, model.attn_mask)
    x = model.ln_final(x)
    text = F.normalize(x[torch.arange(x.shape[0]), eot] @ model.text_projection, dim=-1)
    image = F.normalize(clip.encode_image(images, hooks=method.prompt.vision_hooks()).features, dim=-1)
    return clip.logit_scale * image @ text.t()


# -- measuring -----------------------------------------------------------------------------------------
def step(logits_fn: Callable[[], torch.Tensor], labels: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(logits_fn(), labels).backward()
    optimizer.step()


def timed(function: Callable[[], None], device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    function()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def padded(logits_fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """``logits_fn`` with the shared-prefix pass running every class in one group padded to the longest,
    instead of one group per token length (open_clip.py; exact both ways)."""

    def one_group() -> torch.Tensor:
        original = open_clip_module._run_with_shared_prefix
        open_clip_module._run_with_shared_prefix = functools.partial(original, group_by_length=False)
        try:
            return logits_fn()
        finally:
            open_clip_module._run_with_shared_prefix = original

    return one_group


def without_shared_prefix(logits_fn: Callable[[], torch.Tensor], clip: OpenCLIP) -> Callable[[], torch.Tensor]:
    """``logits_fn`` with the text pass cut at the last end-of-text token but the shared prefix not run apart
    (``OpenCLIP(shared_prefix=False)``): every class's positions up to it through the plain blocks."""

    def plain() -> torch.Tensor:
        clip.shared_prefix = False
        try:
            return logits_fn()
        finally:
            clip.shared_prefix = True

    return plain


def peak_cuda_memory(label: str, train_step: Callable[[], None], batch: int, args: argparse.Namespace) -> None:
    """Our step's peak of allocated CUDA memory (weights and batch included), and whether the step runs with
    PyTorch's allocator held to ``--memory-cap-gib`` (cuDNN and cuBLAS pick smaller workspaces there). The
    CUDA context (about half a GiB) is outside the allocator, and a "16 GB" card offers a little less."""
    gc.collect()
    torch.cuda.synchronize()
    resident = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    train_step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    print(
        f"peak_cuda_memory_{label}: {peak / 2**30:.2f} GiB (ours, batch {batch}; "
        f"{resident / 2**30:.2f} GiB allocated before the step)",
        flush=True,
    )
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_cap_gib * 2**30 / total))
    try:
        train_step()
        torch.cuda.synchronize()
        fits = "yes"
    except torch.cuda.OutOfMemoryError:
        fits = "no (out of memory)"
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    print(f"fits_{args.memory_cap_gib:g}_gib_{label}: {fits}", flush=True)


def compare(method_name: str, classes: int, args: argparse.Namespace, clip: OpenCLIP) -> None:
    names = class_names(classes)
    batch = args.batch if method_name == "coop" else args.maple_batch
    torch.manual_seed(0)
    if method_name == "coop":
        method = CoOp(clip, names, n_ctx=16).to(args.device)
        reference = lambda: reference_coop_logits(method, images)  # noqa: E731
    else:
        method = MaPLe(clip, names, n_ctx=2, depth=9).to(args.device)
        reference = lambda: reference_maple_logits(method, images)  # noqa: E731
    method.train()
    images = torch.randn(batch, 3, 224, 224, device=args.device)
    labels = torch.randint(0, classes, (batch,), device=args.device)
    ours = lambda: method.compute_output({"image": images}).logits  # noqa: E731
    params = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.0)  # lr 0: both sides keep evaluating the same prompt
    suffix = "" if method_name == "coop" else f"_{method_name}" + ("" if batch == 4 else f"_batch{batch}")
    difference = float("nan")
    if not args.skip_reference:
        with torch.no_grad():
            difference = ((reference() - ours()).abs().max() / ours().abs().max()).item()
    if not args.skip_memory:
        memory = {
            name: saved_bytes(lambda fn=fn: F.cross_entropy(fn(), labels), method)
            for name, fn in (("reference", reference), ("ours", ours))
        }
        print(
            f"{method_name} {classes} classes: saved for backward: reference {memory['reference'] / 2**30:.2f} "
            f"GiB, ours {memory['ours'] / 2**30:.2f} GiB",
            flush=True,
        )
        print(f"mem_ratio_{classes}{suffix}: {memory['reference'] / memory['ours']:.1f}", flush=True)
    variants = [("reference", reference), ("ours", ours)]
    # fewer kernel launches, more activations and arithmetic: which wins on a GPU is not known yet
    others = [
        ("ours, one padded group", padded(ours)),
        ("ours without the shared prefix", without_shared_prefix(ours, clip)),
    ]
    if args.count_ops:
        counts = {}
        for name, fn in variants + others:
            if not (args.skip_reference and name == "reference"):
                method.zero_grad(set_to_none=True)  # a gradient left by the last count adds an accumulation per tensor
                counts[name] = sum(dispatched_ops(lambda fn=fn: F.cross_entropy(fn(), labels)).values())
        method.zero_grad(set_to_none=True)
        print(f"dispatched_ops_{classes}{suffix}: " + ", ".join(f"{name} {count}" for name, count in counts.items())
              + " (per train step without the optimizer's, views left out)", flush=True)  # fmt: skip
    if args.device != "cpu":
        variants += others
    times: dict[str, list[float]] = {name: [] for name, _ in variants}
    for round_index in range(args.rounds + 1):  # round 0 warms up
        for name, fn in variants:
            if args.skip_reference and name == "reference":
                continue
            seconds = timed(lambda fn=fn: step(fn, labels, optimizer), args.device)
            if round_index:
                times[name].append(seconds)
            print(f"  round {round_index}{' (warm-up)' if not round_index else ''}: {name} {seconds:.2f} s", flush=True)
        gc.collect()
    if args.peak_memory and args.device == "cuda":
        peak_cuda_memory(f"{classes}{suffix}", lambda: step(ours, labels, optimizer), batch, args)
    if times["reference"]:
        ratio = statistics.median(times["reference"]) / statistics.median(times["ours"])
        print(f"ratio_{classes}{suffix}: {ratio:.1f}", flush=True)
    compared = [("grouped_over_padded", "ours, one padded group", "grouped / padded"),
                ("shared_over_plain", "ours without the shared prefix", "shared prefix / without")]  # fmt: skip
    for key, name, meaning in compared:
        if times.get(name):  # timed on CUDA only
            ratio = statistics.median(times["ours"]) / statistics.median(times[name])
            print(f"{key}_{classes}{suffix}: {ratio:.2f} (our step's time, {meaning})", flush=True)
    print(f"logits_difference_{classes}{suffix}: {difference:.1e} (relative)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--methods", nargs="+", default=["coop", "maple"], choices=["coop", "maple"])
    parser.add_argument("--maple-classes", type=int, nargs="+", default=[100])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="CoOp's batch")
    parser.add_argument("--maple-batch", type=int, default=4, help="MaPLe's batch (its configuration's: 4)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--peak-memory", action="store_true", help="CUDA: also print our step's peak memory")
    parser.add_argument("--memory-cap-gib", type=float, default=16.0, help="CUDA: the GPU size to check ours fits")
    parser.add_argument("--skip-reference", action="store_true", help="time ours only (memory is still counted)")
    parser.add_argument("--skip-memory", action="store_true", help="do not count the saved activations")
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="OpenCLIP(gradient_checkpointing=True): our text pass and both sides' image tower recompute their blocks",
    )
    parser.add_argument(
        "--count-ops", action="store_true", help="print each variant's dispatched operations per step (views left out)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"device {args.device}, threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}, "
        f"batch {args.batch} (MaPLe {args.maple_batch})",
        flush=True,
    )
    clip = OpenCLIP("ViT-B-16", pretrained=None).to(args.device)  # ViT-B/16's architecture, random weights
    clip.gradient_checkpointing = args.gradient_checkpointing
    for method_name in args.methods:
        for classes in args.classes if method_name == "coop" else args.maple_classes:
            compare(method_name, classes, args, clip)
    print(f"load average after: {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
