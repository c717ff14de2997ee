"""LAE: Learning, Accumulation, Ensemble — continual learning with parameter-efficient tuning (Gao,
Cen, Xiao, Wang, Chen, Cao, Zhou — "A Unified Continual Learning Framework with General
Parameter-Efficient Tuning", ICCV 2023; official code: github.com/gqk/LAE).

A frozen ViT learns a class-incremental stream of tasks through PET modules (adapter, LoRA or
prefix in its first blocks; :mod:`lightning_prompts.prompts.pet`) and a growing classifier:

* **learning**: task ``t`` adds a linear head for its classes (init N(0, 0.001²), zero bias); the loss
  is cross-entropy on the current task's logits only, so old heads get no gradient; from the second
  task on, the PET modules are frozen for the first ``freeze_epochs`` epochs of the task (only the new
  head learns, aligning it with the PET before the PET moves); the optimizer starts afresh each task
  (Adam, constant learning rate);
* **accumulation**: an offline copy of the PET modules follows the online ones by an EMA with decay
  0.9999 per step from the second task on (:class:`~lightning_prompts.callbacks.MomentumAccumulation`,
  which LAE attaches itself; the heads are shared);
* **ensemble**: evaluation scores each seen class by the larger of the online and offline softmax
  probabilities.

The whole stream is one ``fit`` (``max_epochs = num_tasks · epochs_per_task``,
``reload_dataloaders_every_n_epochs: 1``) on a :class:`~lightning_prompts.data.ClassIncrementalDataModule`,
whose task schedule tells the current task; its evaluator
(:class:`~lightning_prompts.evaluation.ContinualEvaluator`) reports at the end of each task the accuracy
on all seen classes (``val/acc``, A_t), the average incremental accuracy and the forgetting.

Faithful to the official code: PET placement, widths and initialisation, the compensatory prefix,
the per-step EMA (also during the freeze epochs), current-task-only loss, head initialisation, the
fresh Adam per task, the per-class-max ensemble. Deviations: timm's ViT instead of LAE's own port of
Google's ``ViT-B_16.npz`` (``vit_base_patch16_224.orig_in21k`` holds the same weights); the offline
model is created at the first step of task 2 from the online one (LAE deep-copies it when task 2 is
set up: the same values).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from torch import Tensor, nn

from lightning_prompts.backbones.timm_vit import TimmViT
from lightning_prompts.callbacks.momentum_accumulation import MomentumAccumulation
from lightning_prompts.methods.base import ViTPromptModule
from lightning_prompts.methods.base.continual import ContinualMixin
from lightning_prompts.outputs import PromptOutput
from lightning_prompts.prompts.pet import BlockPET, PETHooks, PETKind
from lightning_prompts.registry import register_method
from lightning_prompts.utils.distributed import allow_parameters_without_gradient


@register_method(
    family="vit",
    overlay="continual",
    paper="Gao, Cen, Xiao, Wang, Chen, Cao, Zhou, ICCV 2023 — A Unified Continual Learning Framework with "
    "General Parameter-Efficient Tuning",
    code="gqk/LAE",
    example={"num_tasks": 2, "pet": "prefix", "pet_blocks": [0, 1], "prefix_length": 3},
)
class LAE(ContinualMixin, ViTPromptModule):
    """LAE on a frozen timm ViT (see the module docstring).

    Args:
        backbone: the frozen :class:`~lightning_prompts.backbones.TimmViT` (LAE: ViT-B/16 ImageNet-21k).
        classnames: every class of the stream in stream order (linked from the data module).
        num_tasks: tasks of the stream (the classes are cut into equal tasks in order).
        pet: ``"adapter"``, ``"lora"`` or ``"prefix"``.
        pet_blocks: the blocks that get a PET module (LAE: the first five).
        adapter_width, lora_rank, prefix_length, compensatory: the PET modules' sizes (5, 5, 10, true).
        freeze_epochs: epochs at the start of every task but the first with the PET frozen
            (LAE: 3 of 5 on CIFAR-100, 30 of 50 on ImageNet-R).
        ema_decay: decay of the offline PET's EMA per step (0.9999).
        ensemble: evaluate with the online/offline ensemble.
        head_init_std: std of each new head's weights (0.001).
        **kwargs: ``optimizer`` (default Adam, lr 0.0028125 = 0.03·24/256, LAE's CIFAR-100 setting),
            ``param_group_lr`` (groups ``prompt`` — the PET modules — and ``head``); see
            :class:`~lightning_prompts.methods.PromptModule`.
    """

    default_optimizer: ClassVar[dict[str, Any]] = {
        "class_path": "torch.optim.Adam",
        "init_args": {"lr": 0.0028125, "weight_decay": 0.0},
    }

    def __init__(
        self,
        backbone: TimmViT,
        classnames: Sequence[str] | None = None,
        num_tasks: int = 10,
        pet: PETKind = "adapter",
        pet_blocks: Sequence[int] = (0, 1, 2, 3, 4),
        adapter_width: int = 5,
        lora_rank: int = 5,
        prefix_length: int = 10,
        compensatory: bool = True,
        freeze_epochs: int = 3,
        ema_decay: float = 0.9999,
        ensemble: bool = True,
        head_init_std: float = 0.001,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, classnames, **kwargs)
        if len(self.classnames) % num_tasks:
            raise ValueError(f"{len(self.classnames)} classes cannot be cut into {num_tasks} equal tasks.")
        depth = self.backbone.depth
        if any(not 0 <= index < depth for index in pet_blocks):
            raise ValueError(f"pet_blocks {list(pet_blocks)} must be block indices of the {depth}-block ViT.")
        if freeze_epochs < 0:
            raise ValueError(f"freeze_epochs must be >= 0, got {freeze_epochs}.")
        width = self.backbone.width
        self.pets = nn.ModuleDict(
            {
                str(index): BlockPET(pet, width, adapter_width, lora_rank, prefix_length, compensatory)
                for index in pet_blocks
            }
        )
        self.num_tasks, self.classes_per_task = num_tasks, len(self.classnames) // num_tasks
        self.heads = nn.ModuleList(nn.Linear(width, self.classes_per_task) for _ in range(num_tasks))
        for head in self.heads:
            nn.init.normal_(head.weight, std=head_init_std)
            nn.init.zeros_(head.bias)
        self.freeze_epochs, self.ema_decay, self.ensemble = freeze_epochs, ema_decay, ensemble

    def check_ready(self, stage: str, callbacks: Any, datamodule: Any | None) -> None:
        super().check_ready(stage, callbacks, datamodule)
        self.check_stream(datamodule)

    def configure_callbacks(self) -> list[Callback]:
        return [MomentumAccumulation(decay=self.ema_decay, groups=["prompt"], start_task=1, ensemble=self.ensemble)]

    def param_groups(self) -> list[dict[str, Any]]:
        return [
            {"name": "prompt", "params": list(self.pets.parameters())},
            {"name": "head", "params": list(self.heads.parameters())},
        ]

    # -- forward ------------------------------------------------------------------------------------
    def block_hooks(self) -> PETHooks:
        return PETHooks({int(index): module for index, module in self.pets.items()})

    def classify(self, pooled: Tensor) -> Tensor:
        """Logits ``(B, seen tasks · classes per task)`` of the seen tasks' heads."""
        return torch.cat([head(pooled) for head in self.heads[: self.seen_tasks()]], dim=-1)

    def task_loss(self, output: PromptOutput, targets: Tensor) -> Tensor:
        if not self.training:
            return F.cross_entropy(output.logits.float(), targets)
        start = self.current_task * self.classes_per_task  # current task's columns only
        return F.cross_entropy(output.logits[:, start:].float(), targets - start)

    # -- task schedule ------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit":  # the heads of later tasks, and the PET modules in each task's first epochs
            allow_parameters_without_gradient(self.trainer, type(self).__name__)

    def on_train_epoch_start(self) -> None:
        task, epoch = self.current_task, self.epoch_in_task()
        if task > 0 and epoch == 0:  # LAE builds a new optimizer per task
            self.restart_optimisation()
        frozen = task > 0 and epoch < self.freeze_epochs
        for param in self.pets.parameters():
            param.requires_grad_(not frozen)
            if frozen:
                param.grad = None

    def on_train_end(self) -> None:
        for param in self.pets.parameters():  # leave the module as built
            param.requires_grad_(True)
