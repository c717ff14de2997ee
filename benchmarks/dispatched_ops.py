"""Operations a training step dispatches to PyTorch's kernels (shared by the benchmarks).

Counted with a ``TorchDispatchMode`` over the forward and the backward (not the optimizer's step), views and
other metadata-only operations (``view``, ``transpose``, ``expand``, …: no kernel runs) left out. The same for a
given PyTorch version and device type on any machine; a GPU may take other paths (attention) than the CPU. The
count approximates the kernel launches: a few counted operations launch none (``empty_like``) and some backward
ones several. On a GPU whose kernels are too small to keep it busy, a step costs about its launches times the
per-operation overhead of PyTorch (tens of microseconds from Python), whatever the arithmetic: a cost a CPU
timing cannot show.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# aten operations that only make a new view or read metadata: no kernel is launched for them
METADATA_ONLY = frozenset(
    {
        "_reshape_alias", "_unsafe_view", "alias", "as_strided", "chunk", "detach", "expand", "narrow", "permute",
        "reshape", "select", "slice", "split", "split_with_sizes", "squeeze", "t", "transpose", "unbind",
        "unsqueeze", "view",
    }
)  # fmt: skip


class _Counting(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def dispatched_ops(loss_fn: Callable[[], torch.Tensor]) -> Counter[str]:
    """Per aten operation (``"mm"``, ``"add"``…), how often ``loss_fn()`` and its backward ran it, views left
    out; ``sum(...values())`` approximates the step's kernel launches. Clear the gradients first: one left from an
    earlier backward adds an accumulation per tensor."""
    counting = _Counting()
    with counting:
        loss_fn().backward()
    return Counter({name: count for name, count in counting.counts.items() if name not in METADATA_ONLY})
