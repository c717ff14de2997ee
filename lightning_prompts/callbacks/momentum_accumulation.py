"""``MomentumAccumulation``: LAE's offline model, an exponential moving average of a method's
trainable prompt/PET parameters, and the online/offline ensemble at evaluation.

Gao et al., "A Unified Continual Learning Framework with General Parameter-Efficient Tuning"
(LAE: Learning, Accumulation, Ensemble; ICCV 2023; official code: github.com/gqk/LAE). The online
parameters learn the current task fast; the offline copy accumulates them slowly,

    offline ← decay · offline + (1 − decay) · online          (every optimizer step; LAE: 0.9999)

and at evaluation each class is scored by the larger of the two models' probabilities
(``max(softmax(online), softmax(offline))``), so the ensemble keeps what either model knows.

Only the tensors of the chosen parameter groups (default ``prompt``: the PET modules or prompts)
are averaged; the frozen backbone is never copied and the heads are shared, as in LAE (Lightning's
``EMAWeightAveraging`` would copy the whole module, backbone included). When the offline copy starts:

* on a class-incremental stream (a data module with a task schedule,
  :class:`~lightning_prompts.data.protocols.TaskStream`), at the start of the first step of task
  ``start_task`` (LAE: 1, i.e. the second task), before that step's update: a copy of the online
  parameters as the first task left them, as LAE copies its online model when task 2 is set up;
* on any other run (one task), at the start of the first training step.

The offline tensors are part of the callback's state, so they are saved in Lightning checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn

from lightning_prompts.callbacks.parameter_groups import group_parameters
from lightning_prompts.data.protocols import TaskStream, provided
from lightning_prompts.registry import register_callback


@register_callback(
    paper="Gao, Cen, Xiao, Wang, Chen, Cao, Zhou, ICCV 2023 — A Unified Continual Learning Framework with "
    "General Parameter-Efficient Tuning",
    code="gqk/LAE",
    docs="callbacks/momentum_accumulation.md",
)
class MomentumAccumulation(Callback):
    """EMA of a method's prompt parameters into an offline copy, and the online/offline ensemble.

    Args:
        decay: EMA decay per optimizer step (LAE: 0.9999); a batch that only accumulates gradients
            (``accumulate_grad_batches``) does not move the copy.
        groups: the method's parameter groups (``param_groups()`` names) to accumulate.
        start_task: first task (0-based) with an offline copy, on methods that have tasks.
        ensemble: score evaluation batches with the per-class max of both models' probabilities.
    """

    def __init__(
        self, decay: float = 0.9999, groups: Sequence[str] = ("prompt",), start_task: int = 1, ensemble: bool = True
    ) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}.")
        if not groups:
            raise ValueError("groups must name at least one parameter group.")
        self.decay, self.groups, self.start_task, self.ensemble = decay, list(groups), start_task, ensemble
        self.offline: list[Tensor] | None = None
        self._params: list[nn.Parameter] = []
        self._optimizer_steps = 0  # the trainer's global step at the last batch end (set again when training starts)

    # -- which parameters ---------------------------------------------------------------------------
    def check_ready(self, module: Any, datamodule: Any | None, callbacks: Sequence[Any] = ()) -> None:
        self._params = group_parameters(module, self.groups, "MomentumAccumulation")

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.check_ready(pl_module, trainer.datamodule)

    def should_start(self, trainer: Trainer) -> bool:
        """Whether the offline copy starts now: on a task stream from task ``start_task``, else at once."""
        stream = provided(trainer.datamodule, TaskStream)
        return stream is None or int(stream.task_of_epoch(trainer.current_epoch)) >= self.start_task

    # -- accumulation -------------------------------------------------------------------------------
    @torch.no_grad()
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if self.offline is None and self.should_start(trainer):
            # before this step's optimizer update: the online state as the previous task left it
            self.offline = [param.detach().clone() for param in self._params]

    def follow_parameters(self) -> None:
        """Keep the offline copy on its parameters' devices: a checkpoint restores it on the CPU (for ``test``
        and ``validate`` too, where no fit starts: every swap checks), and some strategies (DeepSpeed, FSDP)
        restore checkpoints after ``on_fit_start``; ``on_train_start`` comes after every restore."""
        if self.offline is not None and any(o.device != p.device for o, p in zip(self.offline, self._params)):
            # outside inference mode: tensors made under `validate`/`test` could not take the EMA's in-place updates
            with torch.inference_mode(False):
                pairs = zip(self.offline, self._params, strict=True)
                self.offline = [offline.to(param.device) for offline, param in pairs]

    @torch.no_grad()
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        stepped, self._optimizer_steps = trainer.global_step != self._optimizer_steps, trainer.global_step
        if self.offline is None or not stepped:  # a batch that only accumulated gradients left the online unmoved
            return
        for offline, online in zip(self.offline, self._params):
            offline.mul_(self.decay).add_(online.detach().to(offline.dtype), alpha=1.0 - self.decay)

    def swap(self) -> None:
        """Exchange the online and offline values in place (twice restores them)."""
        assert self.offline is not None
        self.follow_parameters()
        with torch.no_grad():  # in-place on the parameters bumps their versions, so feature caches see it
            for offline, online in zip(self.offline, self._params):
                saved = online.detach().clone()
                online.copy_(offline)
                offline.copy_(saved)

    # -- ensemble -----------------------------------------------------------------------------------
    @torch.no_grad()
    def ensemble_scores(self, module: Any, batch: Any, logits: Tensor) -> Tensor:
        """Per-class max of the online and offline softmax probabilities (online logits if no offline yet)."""
        if not self.ensemble or self.offline is None:
            return logits
        self.swap()
        try:
            offline_logits = module.forward_batch(batch).logits
        finally:
            self.swap()
        return torch.maximum(F.softmax(logits.float(), dim=-1), F.softmax(offline_logits.float(), dim=-1))

    # -- checkpoints --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"offline": None if self.offline is None else [tensor.cpu() for tensor in self.offline]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        offline = state_dict.get("offline")
        self.offline = None if offline is None else [tensor.clone() for tensor in offline]

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.follow_parameters()  # after every restore, whatever the strategy: onto the parameters' devices
        self._optimizer_steps = trainer.global_step
