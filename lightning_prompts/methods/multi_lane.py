"""MULTI-LANE: task-specific lanes beside a frozen ViT for (multi-label) class-incremental learning
(De Min et al., CoLLAs 2024, PMLR 274; official code tdemin16/multi-lane).

Each task gets a *lane* (:mod:`lightning_prompts.prompts.lanes`): its own copy of the ViT's class token and
``S`` selectors, which run beside the frozen ViT through every block with the frozen weights — the selectors
summarise the frozen stream's tokens (drop and replace), the lane attends over its class token and summaries
with its own key/value prompts in the first blocks — and never change the frozen stream. The final lane class
token is L2-normalised and read by one shared linear head over all classes.

* **training** runs the current task's lane only; the loss sees the current task's classes only: multi-label
  binary cross-entropy with the other classes' logits *and* targets set to 0 (the mean runs over batch × all
  classes, as the official ``BCEWithLogitsLoss``), or single-label cross-entropy with the other classes at −∞;
* **evaluation** runs every seen task's lane and sums the head's logits of each lane masked to its task's
  classes (``head_mode: concat``): each class is scored by its own task's lane;
* **task boundary**: lane ``t`` starts as a copy of lane ``t − 1`` and the optimizer starts afresh (its
  schedule too), as the official ``next_task`` and per-task optimizer do;
* **single-label accuracy** ``val/acc`` is the mean of the seen tasks' accuracies, the official
  ``evaluate_till_now`` (``ContinualEvaluator(average="tasks")``, the default here; LAE's pooled accuracy over
  every seen image differs from it on ImageNet-R, whose tasks hold different numbers of test images).

Only the selectors, the prompts and the head train (the official ``is_trainable``). Tasks own consecutive
label ranges (the data stream's class order); ``classes_per_task`` gives unequal tasks (VOC B10-C2:
``[10, 2, 2, 2, 2, 2]``), else the classes are cut into ``num_tasks`` equal tasks.

Deviations: the ViT is timm's (the official code carries its own port of timm 0.6's); the lanes' batched
attention is computed as in the official ``PreT_Attention`` (pinned), the frozen stream by timm's own block.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_prompts.backbones.timm_vit import TimmViT
from lightning_prompts.batch import IMAGE, LABEL
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods.base import ViTPromptModule
from lightning_prompts.methods.base.continual import ContinualMixin
from lightning_prompts.outputs import PromptOutput
from lightning_prompts.prompts.lanes import TaskLanes, lane_block_step
from lightning_prompts.registry import register_method


@register_method(
    family="vit",
    title="MULTI-LANE",
    overlay="multi_lane",
    paper="De Min et al., CoLLAs 2024 (PMLR 274) — MULTI-LANE, task lanes for multi-label class-incremental learning",
    code="tdemin16/multi-lane",
    example={"num_tasks": 2, "num_selectors": 2, "num_prompts": 2, "prompt_blocks": 1},
)
class MultiLane(ContinualMixin, ViTPromptModule):
    """Task lanes with selectors, drop and replace and prefix prompts (see the module docstring).

    Args:
        backbone: the frozen timm ViT (``vit_base_patch16_224.augreg_in21k_ft_in1k`` in the paper).
        classnames: every class of the stream, in label order.
        num_tasks: tasks of the stream.
        classes_per_task: classes of each task when they differ (must sum to the number of classes).
        multi_label: binary cross-entropy on multi-hot targets (VOC, COCO) instead of cross-entropy.
        num_selectors: selectors per lane (10 for VOC; 20 for COCO, CIFAR-100, ImageNet-R).
        num_prompts: key and value prompts per head and block (10 for VOC; 20 for COCO).
        prompt_blocks: the first blocks that get prompts (5).
        drop_and_replace: summarise the frozen patches again in every block (``False``: only in block 0, the
            official ``--disable_dandr``).
        init: ``"orthogonal"`` or ``"uniform"`` initialisation of selectors and prompts.
        **kwargs: see :class:`~lightning_prompts.methods.PromptModule`; groups ``"prompt"`` (selectors and
            prompts) and ``"head"``. Default optimizer: Adam, lr 0.05 (the VOC setting), no weight decay.
    """

    default_optimizer: ClassVar[dict[str, Any]] = {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.05}}

    def __init__(
        self,
        backbone: TimmViT,
        classnames: Sequence[str] | None = None,
        num_tasks: int = 5,
        classes_per_task: Sequence[int] | None = None,
        multi_label: bool = False,
        num_selectors: int = 10,
        num_prompts: int = 10,
        prompt_blocks: int = 5,
        drop_and_replace: bool = True,
        init: str = "orthogonal",
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, classnames, **kwargs)
        total = len(self.classnames)
        if classes_per_task is None:
            if total % num_tasks:
                raise ValueError(f"{total} classes cannot be cut into {num_tasks} equal tasks; give classes_per_task.")
            classes_per_task = [total // num_tasks] * num_tasks
        if len(classes_per_task) != num_tasks or sum(classes_per_task) != total or min(classes_per_task) < 1:
            raise ValueError(
                f"classes_per_task {list(classes_per_task)} must be {num_tasks} counts >= 1 summing to {total}."
            )
        self.num_tasks, self.multi_label, self.drop_and_replace = num_tasks, multi_label, drop_and_replace
        self.task_sizes = [int(count) for count in classes_per_task]
        self.class_bounds = torch.cumsum(torch.tensor([0, *classes_per_task]), 0).tolist()
        owners = torch.repeat_interleave(torch.arange(num_tasks), torch.tensor(list(classes_per_task)))
        self.register_buffer("task_of_class", owners, persistent=False)
        model = self.backbone.model
        self.lanes = TaskLanes(
            num_tasks, self.backbone.width, model.blocks[0].attn.num_heads, self.backbone.depth,
            num_selectors, num_prompts, prompt_blocks, init,
        )  # fmt: skip
        self.head = nn.Linear(self.backbone.width, total)
        nn.init.trunc_normal_(self.head.weight, std=0.02)  # timm's head initialisation
        nn.init.zeros_(self.head.bias)

    def check_ready(self, stage: str, callbacks: Any, datamodule: Any | None) -> None:
        super().check_ready(stage, callbacks, datamodule)
        self.check_stream(datamodule)
        if datamodule is None:
            return
        sizes = getattr(datamodule, "classes_per_task", None)
        sizes = [sizes] * self.num_tasks if isinstance(sizes, int) else sizes
        if isinstance(sizes, list) and sizes != self.task_sizes:
            raise ConfigurationError(
                f"MultiLane's tasks have {self.task_sizes} classes but the stream's have {sizes}; "
                f"set model.init_args.classes_per_task: {sizes}."
            )
        labels = bool(getattr(datamodule, "multi_label", False))
        if labels != self.multi_label:
            raise ConfigurationError(
                f"the stream is {'multi' if labels else 'single'}-label; set model.init_args.multi_label: {labels}."
            )

    def resolve_evaluator(self, datamodule: Any | None) -> Any:
        """A single-label stream's default evaluator averages the tasks' accuracies (the official protocol)."""
        from lightning_prompts.evaluation.continual import ContinualEvaluator

        evaluator = super().resolve_evaluator(datamodule)
        if self._evaluator_choice is None and type(evaluator) is ContinualEvaluator:
            evaluator.average = "tasks"
        return evaluator

    def param_groups(self) -> list[dict[str, Any]]:
        return [
            {"name": "prompt", "params": list(self.lanes.parameters())},
            {"name": "head", "params": list(self.head.parameters())},
        ]

    # -- lanes ----------------------------------------------------------------------------------------
    def active_lanes(self) -> slice:
        """The current task's lane when training, every seen task's lane otherwise."""
        task = self.current_task
        return slice(task, task + 1) if self.training else slice(0, self.seen_tasks())

    def lane_features(self, images: Tensor, lanes: slice) -> Tensor:
        """The lanes' final class tokens ``(L, B, W)`` (after the ViT's final norm)."""
        selectors, prompts = self.lanes.lane_slice(lanes)
        count, batch = selectors.shape[0], images.shape[0]
        cls = self.backbone.model.cls_token.expand(count, batch, 1, -1)  # the raw class token, as the official
        tokens = torch.cat([cls, selectors.unsqueeze(1).expand(-1, batch, -1, -1)], dim=2)

        def step(index: int, block: nn.Module, x: Tensor, lane_tokens: Tensor) -> Tensor:
            block_prompts = prompts[index] if index < len(prompts) else None
            summarise = self.drop_and_replace or index == 0
            return lane_block_step(block, x, lane_tokens, block_prompts, summarise, drop=self.drop_and_replace)

        _, tokens = self.backbone.forward_side_stream(images, tokens, step)
        return tokens[:, :, 0]

    def lane_logits(self, features: Tensor, lanes: slice) -> Tensor:
        """``(B, C)``: the head on each normalised lane token; in evaluation each lane scores its task's classes."""
        logits = self.head(F.normalize(features, dim=-1))  # (L, B, C)
        if self.training:
            return logits[0]
        tasks = torch.arange(lanes.start, lanes.stop, device=logits.device)
        owner = self.task_of_class.unsqueeze(0) == tasks[:, None]  # (L, C): the classes each lane scores
        return (logits * owner.unsqueeze(1).to(logits.dtype)).sum(dim=0)

    def forward(self, images: Tensor, fields: frozenset[str] = frozenset()) -> PromptOutput:
        lanes = self.active_lanes()
        features = self.lane_features(images, lanes)
        logits = self.lane_logits(features, lanes)
        if not self.training:  # the seen classes only (the evaluators score those)
            logits = logits[:, : self.class_bounds[lanes.stop]]
        pooled = features[-1]
        return PromptOutput(logits=logits, pooled_features=pooled, image_features=pooled)

    def forward_batch(self, batch: Any, fields: frozenset[str] = frozenset()) -> PromptOutput:
        return self(batch[IMAGE], fields)

    def batch_targets(self, batch: Any) -> Tensor:
        return batch[LABEL]

    def task_loss(self, output: PromptOutput, targets: Tensor) -> Tensor:
        logits = output.logits.float()
        if not self.training:
            if self.multi_label:
                return F.binary_cross_entropy_with_logits(logits, targets[:, : logits.shape[1]].float())
            return F.cross_entropy(logits, targets)
        current = self.task_of_class == self.current_task
        if self.multi_label:  # the official masking: other classes' logits and targets are 0
            masked_logits = logits.masked_fill(~current, 0.0)
            masked_targets = targets.float().masked_fill(~current, 0.0)
            return F.binary_cross_entropy_with_logits(masked_logits, masked_targets)
        return F.cross_entropy(logits.masked_fill(~current, float("-inf")), targets)

    # -- task boundary --------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        task = self.current_task
        if task > 0 and self.epoch_in_task() == 0:
            self.lanes.start_task(task)
            self.restart_optimisation()
