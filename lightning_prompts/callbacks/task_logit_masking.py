"""``TaskLogitMasking``: train a merged label space with each sample's logits restricted to its own task.

MVLPT's option ``MULTITASK_LABEL_PERTASK`` (off in its released scripts, where the cross-entropy runs over
the whole merged label space): the logits of classes outside the sample's task are *multiplied by 0*, so
they stay in the softmax with logit 0 (``fill="zero"``, the official behaviour); ``fill="-inf"`` removes
them instead, which is what "masking" usually means. The task of a sample is the task whose label range
holds its label (:class:`~lightning_prompts.data.MultiTaskImageDataModule`'s ``task_class_ranges``).
Evaluation is unaffected: :class:`~lightning_prompts.evaluation.MultiTaskAccuracyEvaluator` slices every
sample's logits to its task anyway.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from lightning_prompts.errors import ConfigurationError
from lightning_prompts.outputs import PromptOutput
from lightning_prompts.registry import register_callback


def task_masked_logits(logits: Tensor, targets: Tensor, starts: Tensor, ends: Tensor, fill: str = "zero") -> Tensor:
    """``logits`` ``(B, C)`` with the classes outside each sample's task zeroed (``"zero"``) or set to −inf.
    ``starts``/``ends`` ``(T,)`` are the tasks' label ranges; a sample's task is the one holding its target."""
    task = ((targets[:, None] >= starts[None]) & (targets[:, None] < ends[None])).float().argmax(dim=1)
    classes = torch.arange(logits.shape[1], device=logits.device)
    inside = (classes[None] >= starts[task][:, None]) & (classes[None] < ends[task][:, None])
    if fill == "zero":
        return logits * inside.to(logits.dtype)
    return logits.masked_fill(~inside, float("-inf"))


@register_callback()
class TaskLogitMasking(Callback):
    """Cross-entropy over each sample's own task's classes in a merged label space (see the module docstring).

    Args:
        fill: ``"zero"`` (the official MVLPT masking: other tasks' logits multiplied by 0) or ``"-inf"``.
    """

    def __init__(self, fill: Literal["zero", "-inf"] = "zero") -> None:
        super().__init__()
        if fill not in ("zero", "-inf"):
            raise ValueError(f"fill must be 'zero' or '-inf', got {fill!r}.")
        self.fill = fill
        self._bounds: tuple[Tensor, Tensor] | None = None

    def check_ready(self, module: Any, datamodule: Any | None, callbacks: Any = ()) -> None:
        if datamodule is not None and not isinstance(getattr(datamodule, "task_class_ranges", None), dict):
            raise ConfigurationError(
                "TaskLogitMasking needs a data module with task_class_ranges (MultiTaskImageDataModule)."
            )
        if getattr(module, "has_own_objective", False):
            raise ConfigurationError(
                f"TaskLogitMasking masks the cross-entropy; {type(module).__name__} has an objective of its own."
            )

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        ranges = list(trainer.datamodule.task_class_ranges.values())
        self._bounds = (torch.tensor([r[0] for r in ranges]), torch.tensor([r[1] for r in ranges]))

    def weighted_task_loss(self, module: Any, batch: Any, output: PromptOutput, targets: Tensor) -> Tensor:
        assert self._bounds is not None
        starts, ends = (bound.to(targets.device) for bound in self._bounds)
        return F.cross_entropy(task_masked_logits(output.logits.float(), targets, starts, ends, self.fill), targets)
