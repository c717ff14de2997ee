"""Two variants of one computation timed alternately in one process: the measuring loop of the benchmarks that
switch a code path off with a context manager (``batch_first_attention.py``, ``class_token_block.py``)."""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable

import torch
from coop_step import step, timed  # benchmarks/coop_step.py (the script's folder is on the path)


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
