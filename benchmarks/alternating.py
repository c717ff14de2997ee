"""Two variants of one computation timed alternately in one process: what the benchmarks that switch a code path
off share (``batch_first_attention.py``, ``class_token_block.py``): their arguments, the switch, the loop."""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
from collections.abc import Callable, Iterator
from typing import Any

import torch
from coop_step import step, timed  # benchmarks/coop_step.py (the script's folder is on the path)


def clip_arguments(description: str) -> argparse.Namespace:
    """``--classes`` (100), ``--rounds`` (3), ``--threads``; sets the threads and prints them with the load."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}", flush=True)
    return args


@contextlib.contextmanager
def replaced(module: Any, name: str, value: Any) -> Iterator[None]:
    """``module.name`` is ``value`` within the block (the code path a benchmark compares against)."""
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


def compare_alternating(
    label: str,
    run: Callable[[], float],
    logits: Callable[[], object],
    baseline: Callable[[], contextlib.AbstractContextManager],
    names: tuple[str, str],
    rounds: int,
    note: str = "",
) -> None:
    """Time ``run`` (returning its seconds) under ``baseline()`` and as it is, alternating, one warm-up round then
    ``rounds``; print each round, ``speedup_<label>`` (the baseline's median over ours) and the largest difference
    of ``logits()`` between the two, relative to the baseline's largest value. ``names``: the baseline's, ours."""
    ours = logits()
    with baseline():
        theirs = logits()
    difference = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds + 1):  # round 0 warms up
        with baseline():
            seconds = {names[0]: run()}
        seconds[names[1]] = run()
        for name, value in seconds.items():
            if round_index:
                times[name].append(value)
            warm_up = " (warm-up)" * (not round_index)
            print(f"  {label} round {round_index}{warm_up}: {name} {value:.2f} s", flush=True)
    ratio = statistics.median(times[names[0]]) / statistics.median(times[names[1]])
    print(f"speedup_{label}: {ratio:.2f}{note}", flush=True)
    print(f"logits_difference_{label}: {difference:.1e} (relative)", flush=True)


def clip_training_step(
    method: torch.nn.Module, batch: int, classes: int
) -> tuple[Callable[[], float], Callable[[], torch.Tensor]]:
    """A CLIP method's training step on random images (its prompt left where it is, lr 0) as ``run`` (its seconds)
    and its logits with gradients recorded, as in training, for :func:`compare_alternating`."""
    method.train()
    images = torch.randn(batch, 3, 224, 224)
    labels = torch.randint(0, classes, (batch,))
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.0)  # the prompt stays

    def logits() -> torch.Tensor:
        return method.compute_output({"image": images}).logits

    return (lambda: timed(lambda: step(logits, labels, optimizer), "cpu")), (lambda: logits().detach())
