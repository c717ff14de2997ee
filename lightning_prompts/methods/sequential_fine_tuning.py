"""Sequential fine-tuning: the lower bound of class-incremental learning (the "Seq-FT" rows of L2P, LAE and
MULTI-LANE).

The whole ViT and one linear head over all classes train task after task with nothing against forgetting: the
training loss is cross-entropy over the current task's classes (the other classes' logits at −∞, the masking the
continual papers' baselines use), evaluation scores every seen class, and the optimizer (and its schedule)
starts afresh at each task. The ViT stays in eval mode (no dropout); its weights train.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_prompts.backbones.timm_vit import TimmViT
from lightning_prompts.methods.base import ViTPromptModule
from lightning_prompts.methods.base.continual import ContinualMixin
from lightning_prompts.outputs import PromptOutput
from lightning_prompts.registry import register_method


@register_method(
    family="vit",
    title="Sequential fine-tuning (continual lower bound)",
    overlay="sequential_fine_tuning",
    paper="the fine-tuning baseline of the class-incremental papers (L2P, LAE, MULTI-LANE)",
    docs="methods/multi_lane.md",
    example={"num_tasks": 2},
)
class SequentialFineTuning(ContinualMixin, ViTPromptModule):
    """The ViT and a head over all classes, fine-tuned task after task (see the module docstring).

    Args:
        backbone: the timm ViT (its weights train).
        classnames: every class of the stream, in label order.
        num_tasks: tasks of the stream (equal tasks).
        **kwargs: see :class:`~lightning_prompts.methods.PromptModule`; groups ``"backbone"`` and ``"head"``.
            Default optimizer: Adam, lr 1e-4.
    """

    default_optimizer: ClassVar[dict[str, Any]] = {"class_path": "torch.optim.Adam", "init_args": {"lr": 1e-4}}
    #: the ViT trains here: it has no frozen image features to give (a consistency term on them was always 0)
    _provide_frozen_image = None

    def __init__(
        self, backbone: TimmViT, classnames: Sequence[str] | None = None, num_tasks: int = 10, **kwargs: Any
    ) -> None:
        super().__init__(backbone, classnames, **kwargs)
        if len(self.classnames) % num_tasks:
            raise ValueError(f"{len(self.classnames)} classes cannot be cut into {num_tasks} equal tasks.")
        self.num_tasks, self.classes_per_task = num_tasks, len(self.classnames) // num_tasks
        self.backbone.requires_grad_(True)
        self.head = nn.Linear(self.backbone.width, len(self.classnames))
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def check_ready(self, stage: str, callbacks: Any, datamodule: Any | None) -> None:
        super().check_ready(stage, callbacks, datamodule)
        self.check_stream(datamodule)

    def param_groups(self) -> list[dict[str, Any]]:
        return [
            {"name": "backbone", "params": list(self.backbone.parameters())},
            {"name": "head", "params": list(self.head.parameters())},
        ]

    def classify(self, pooled: Tensor) -> Tensor:
        """Every class when training (the loss masks), the seen classes otherwise."""
        logits = self.head(pooled)
        return logits if self.training else logits[:, : self.seen_tasks() * self.classes_per_task]

    def task_loss(self, output: PromptOutput, targets: Tensor) -> Tensor:
        logits = output.logits.float()
        if self.training:
            start = self.current_task * self.classes_per_task
            keep = slice(start, start + self.classes_per_task)
            masked = logits.new_full(logits.shape, float("-inf"))
            masked[:, keep] = logits[:, keep]
            logits = masked
        return F.cross_entropy(logits, targets)

    def on_train_epoch_start(self) -> None:
        if self.current_task > 0 and self.epoch_in_task() == 0:
            self.restart_optimisation()
