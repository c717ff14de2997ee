"""Bytes of activations a training step keeps for backward (shared by the benchmarks).

Counted with ``torch.autograd.graph.saved_tensors_hooks`` while the step's graph is alive, so no
address is reused: every distinct storage once (views of one storage count once), without the
module's own weights and buffers (resident anyway). Deterministic on any machine, and what runs out
first on a GPU when a step holds too many activations.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

import torch


def saved_bytes(loss_fn: Callable[[], torch.Tensor], module: torch.nn.Module) -> int:
    """Bytes the autograd graph of ``loss_fn()`` keeps for backward; the graph is released unused."""
    resident = {t.untyped_storage().data_ptr() for t in [*module.parameters(), *module.buffers()]}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in resident:
            saved[storage.data_ptr()] = storage.nbytes()
        # a detached alias keeps the storage alive while the graph is (no address reused) without the cycle
        # "saved output -> its grad_fn -> the graph -> the saved output", which the garbage collector cannot
        # see: returning ``tensor`` itself kept every counted graph, e.g. the reference's 17.8 GiB at 1,000
        # classes, alive for the rest of the run (found on the first GPU run, 2026-12-04)
        return tensor.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = loss_fn()
    total = sum(saved.values())
    del loss
    gc.collect()
    return total
