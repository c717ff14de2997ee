"""Truncated vs full (77-token) CLIP text encoding of CoOp class prompts.

Builds the ViT-B/16 text tower (random weights: the cost does not depend on the values), makes the
100 class prompts of CoOp's Caltech101 as the ViT-B/16 recipe does (context initialised from
"a photo of a", 4 vectors; ``--n-ctx 16`` gives the paper's RN50 setting ``"X X … X <class>."``),
and times, in one run, the text
encoder over all 77 positions (what the official CoOp/MaPLe code runs) against
``OpenCLIP.encode_text_embeddings``, which stops at the last end-of-text token. Prints the max
absolute difference of the features and the speed-up of the forward pass and of a training step
(forward + backward into the context vectors).

    python benchmarks/clip_text_encoder.py [--n-ctx 16] [--repeats 5] [--model ViT-B-16]

The line ``speedup: X`` is the forward-pass ratio (what evaluation and every training step's
forward pay); ``training-step speedup`` adds the backward pass into the context vectors.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lightning_prompts.backbones import OpenCLIP
from lightning_prompts.prompts import ClassContextPrompt

CALTECH101 = (
    "face leopard motorbike accordion airplane anchor ant barrel bass beaver binocular bonsai brain brontosaurus "
    "buddha butterfly camera cannon car_side ceiling_fan cellphone chair chandelier cougar_body cougar_face crab "
    "crayfish crocodile crocodile_head cup dalmatian dollar_bill dolphin dragonfly electric_guitar elephant emu "
    "euphonium ewer ferry flamingo flamingo_head garfield gerenuk gramophone grand_piano hawksbill headphone "
    "hedgehog helicopter ibis inline_skate joshua_tree kangaroo ketch lamp laptop llama lobster lotus mandolin "
    "mayfly menorah metronome minaret nautilus octopus okapi pagoda panda pigeon pizza platypus pyramid revolver "
    "rhino rooster saxophone schooner scissors scorpion sea_horse snoopy soccer_ball stapler starfish stegosaurus "
    "stop_sign strawberry sunflower tick trilobite umbrella watch water_lilly wheelchair wild_cat windsor_chair "
    "wrench yin_yang"
).split()


def full_pass(clip: OpenCLIP, embeddings: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """The official text encoder: all 77 positions, then the EOT row."""
    return clip.encode_text_embeddings(embeddings, eot, truncate=False)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--n-ctx", type=int, default=None, help="random context of this size instead of the phrase")
    parser.add_argument("--ctx-init", default="a photo of a")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    assert len(CALTECH101) == 100
    torch.manual_seed(0)
    clip = OpenCLIP(args.model, pretrained=None)
    if args.n_ctx:
        prompt = ClassContextPrompt(clip, CALTECH101, n_ctx=args.n_ctx)
    else:
        prompt = ClassContextPrompt(clip, CALTECH101, n_ctx=None, ctx_init=args.ctx_init)
    embeddings, eot = prompt()
    length = int(eot.max()) + 1
    print(
        f"model: {args.model} text tower (random weights), {len(CALTECH101)} class prompts, n_ctx={prompt.n_ctx}, "
        f"longest prompt {length} of {clip.context_length} tokens, threads={torch.get_num_threads()}"
    )

    with torch.no_grad():
        full = full_pass(clip, embeddings, eot)
        short = clip.encode_text_embeddings(embeddings, eot)
    print(f"max |difference| of text features: {(full - short).abs().max().item():.3e}")

    with torch.no_grad():
        t_full = timed(lambda: full_pass(clip, embeddings, eot), args.repeats)
        t_short = timed(lambda: clip.encode_text_embeddings(embeddings, eot), args.repeats)

    def step(truncate: bool) -> None:
        prompt.ctx.grad = None
        embeds, positions = prompt()
        clip.encode_text_embeddings(embeds, positions, truncate=truncate).square().mean().backward()

    s_full = timed(lambda: step(False), args.repeats)
    s_short = timed(lambda: step(True), args.repeats)
    print(f"forward: 77 tokens {t_full * 1e3:.1f} ms, truncated {t_short * 1e3:.1f} ms")
    print(f"training step (forward + backward): 77 tokens {s_full * 1e3:.1f} ms, truncated {s_short * 1e3:.1f} ms")
    print(f"training-step speedup: {s_full / s_short:.2f}")
    print(f"speedup: {t_full / t_short:.2f}")


if __name__ == "__main__":
    main()
