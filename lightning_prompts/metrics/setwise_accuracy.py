"""Top-1 accuracy over several evaluation sets, and the base-to-novel harmonic mean.

In the base-to-novel protocol (CoCoOp) a model trained on the base classes is tested twice:
on the base classes' test images with the base class prompts, and on the novel classes' test
images with the novel class prompts; each set is relabelled from 0 and never sees the other's
classes. The headline number is the harmonic mean ``HM = 2·B·N / (B + N)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric


def harmonic_mean(base: Tensor | float, novel: Tensor | float) -> Tensor:
    """``2·B·N / (B + N)`` (0 when both are 0)."""
    base, novel = torch.as_tensor(base, dtype=torch.float64), torch.as_tensor(novel, dtype=torch.float64)
    total = base + novel
    return torch.where(total > 0, 2 * base * novel / total.clamp_min(1e-12), torch.zeros_like(total))


class SetwiseAccuracy(Metric):
    """Top-1 accuracy of each named evaluation set; ``hm`` too when the sets include base and novel.

    Args:
        set_names: the evaluation sets, in the order of their ``set_index``.

    Example:
        >>> metric = SetwiseAccuracy(["base", "novel"])
        >>> metric.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), set_index=0)
        >>> metric.update(torch.tensor([2, 2]), torch.tensor([2, 2]), set_index=1)
        >>> {k: round(float(v), 4) for k, v in metric.compute().items()}
        {'base': 0.6667, 'novel': 1.0, 'hm': 0.8}
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, set_names: Sequence[str] = ("test",), **kwargs) -> None:
        super().__init__(**kwargs)
        self.set_names = list(set_names)
        if len(set(self.set_names)) != len(self.set_names) or not self.set_names:
            raise ValueError(f"set_names must be distinct and non-empty, got {self.set_names}.")
        count = len(self.set_names)
        self.add_state("correct", default=torch.zeros(count, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(count, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, set_index: int = 0) -> None:
        """Add a batch: ``preds`` are class indices ``(B,)`` or scores ``(B, C)``."""
        if preds.dim() == target.dim() + 1:
            preds = preds.argmax(dim=-1)
        self.correct[set_index] += (preds == target).sum()
        self.total[set_index] += target.numel()

    def compute(self) -> dict[str, Tensor]:
        accuracy = self.correct.double() / self.total.clamp_min(1).double()
        result = {name: accuracy[i] for i, name in enumerate(self.set_names) if self.total[i] > 0}
        if "base" in result and "novel" in result:
            result["hm"] = harmonic_mean(result["base"], result["novel"])
        return result
