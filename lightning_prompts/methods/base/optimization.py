"""Optimisation of a method's named parameter groups, mixed into :class:`~lightning_prompts.methods.PromptModule`.

``param_groups()`` names groups (``prompt``, ``head``, …); ``param_group_lr`` gives any group its own
learning rate; the optimizer and scheduler come from YAML (``class_path``/``init_args``) or as callables,
and the scheduler steps per epoch (Dassl, VPT) or per step. A method without trainable parameters
(zero-shot CLIP) gets no optimizer, so ``fit`` only validates it.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from lightning_prompts.errors import ConfigurationError

HALF_DTYPES = (torch.float16, torch.bfloat16)


def warn_on_half_precision_parameters(module: torch.nn.Module) -> None:
    """Warn when ``module`` trains tensors in 16 bits: a ``"-true"`` precision (or a module cast to half precision)
    leaves the optimizer no float32 master copy (openai/CLIP issue 40: NaN after one fp16 step with Adam). Called
    by every ``configure_optimizers`` of ours, after Lightning has cast the module."""
    half = {name: p.dtype for name, p in module.named_parameters() if p.requires_grad and p.dtype in HALF_DTYPES}
    if not half:
        return
    dtypes = " and ".join(sorted({str(dtype).removeprefix("torch.") for dtype in half.values()}))
    warnings.warn(
        f"{type(module).__name__} trains {len(half)} tensor(s) in {dtypes} ({next(iter(half))}…): the optimizer "
        f"updates them with no float32 master copy, so steps smaller than their resolution are lost (in float16, "
        f"Adam and AdamW divide by zero where a gradient is small: NaN or inf after one step). A '-true' "
        f"precision casts the whole module; use precision 'bf16-mixed' or '16-mixed', which keep the trained "
        f"tensors in float32 and run the frozen model in half precision (docs/howto/devices.md).",
        UserWarning,
        stacklevel=3,
    )


class OptimizationMixin:
    """``configure_optimizers`` over named parameter groups (see the module docstring)."""

    def param_groups(self) -> list[dict[str, Any]]:
        """Named parameter groups (``{"name": ..., "params": [...]}``); all trainable parameters
        must appear exactly once. Override to give, e.g., a head its own learning rate."""
        return [{"name": "prompt", "params": [p for p in self.parameters() if p.requires_grad]}]

    @property
    def has_trainable_parameters(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def configure_optimizers(self) -> Any:
        if not self.has_trainable_parameters:
            return None  # nothing to train: fit only validates
        warn_on_half_precision_parameters(self)
        optimizer = self._optimizer_factory(self._optimizer_groups())
        if self._scheduler_factory is None:
            return optimizer
        scheduler = self._scheduler_factory(optimizer)
        if hasattr(scheduler, "set_max_epochs") and self._trainer is not None:
            trainer = self.trainer
            epochwise = self._scheduler_interval == "epoch"
            total = self._schedule_epochs(trainer) if epochwise else trainer.estimated_stepping_batches
            if total is not None and 0 < total < math.inf:
                scheduler.set_max_epochs(int(total))
            if getattr(scheduler, "never_leaves_warmup", False) and not trainer.fast_dev_run:
                warnings.warn(
                    f"warmup_epochs ({scheduler.warmup_epochs}) is not shorter than the schedule "
                    f"({scheduler.max_epochs} {'epochs' if epochwise else 'steps'}): the whole run stays in the "
                    f"warm-up and never reaches the optimizer's learning rate.",
                    UserWarning,
                    stacklevel=2,
                )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self._scheduler_interval}}

    def _optimizer_groups(self) -> list[dict[str, Any]]:
        """:meth:`param_groups`, checked, with ``param_group_lr``'s learning rates."""
        groups = self.param_groups()
        self._check_param_groups(groups)
        unknown = set(self._param_group_lr) - {group["name"] for group in groups}
        if unknown:
            names = sorted(group["name"] for group in groups)
            raise ConfigurationError(
                f"param_group_lr names unknown groups {sorted(unknown)}; {type(self).__name__} has {names}."
            )
        for group in groups:
            if group["name"] in self._param_group_lr:
                group["lr"] = float(self._param_group_lr[group["name"]])
        return groups

    def check_optimizer(self) -> None:
        """Build the optimizer once, before training: torch checks its settings (a negative learning rate, betas
        outside [0, 1)) only when it is built, which Lightning does after the run folder is written."""
        if not self.has_trainable_parameters:
            return
        try:
            self._optimizer_factory(self._optimizer_groups())
        except (ValueError, TypeError) as error:
            raise ConfigurationError(f"{type(self).__name__}'s optimizer refuses its settings: {error}") from error

    @staticmethod
    def _schedule_epochs(trainer: Any) -> Any:
        """Epochs one schedule spans: the whole run, unless a callback restarts it (``epochs_per_schedule``,
        e.g. :class:`~lightning_prompts.callbacks.PseudoLabelRounds`: one round)."""
        for callback in trainer.callbacks:
            span = getattr(callback, "epochs_per_schedule", None)
            if isinstance(span, int):
                return span
        return trainer.max_epochs

    # -- manual optimisation (several steps per batch, private gradients): Lightning steps no scheduler then,
    # so the base does, at the configured interval, after the training step
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self.automatic_optimization:
            self._step_scheduler("step")

    def on_train_epoch_end(self) -> None:
        if not self.automatic_optimization:
            self._step_scheduler("epoch")

    def _step_scheduler(self, interval: str) -> None:
        scheduler = self.lr_schedulers()
        if scheduler is not None and self._scheduler_interval == interval:
            scheduler.step()

    def _check_param_groups(self, groups: list[dict[str, Any]]) -> None:
        seen: dict[int, str] = {}
        for group in groups:
            for param in group["params"]:
                if not param.requires_grad:
                    raise ConfigurationError(f"Parameter group {group['name']!r} holds a frozen parameter.")
                if id(param) in seen:
                    raise ConfigurationError(f"A parameter is in groups {seen[id(param)]!r} and {group['name']!r}.")
                seen[id(param)] = group["name"]
        missing = [name for name, p in self.named_parameters() if p.requires_grad and id(p) not in seen]
        if missing:
            raise ConfigurationError(f"Trainable parameters in no parameter group: {missing}.")
