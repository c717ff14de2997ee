"""``GradientRegulation``: apply a (meta-learned) gradient regulator to a method's prompt gradients.

GRAM (Li et al., ICCV 2023) meta-learns a gradient-regulating function ψ and then tunes a prompt
with every gradient replaced by ψ(gradient). This callback is that second half, usable on any method:
after the backward pass (and after AMP unscaling and gradient accumulation) and before gradient
clipping and the optimizer step, it replaces the gradient of every parameter in the chosen parameter
groups (default: ``prompt``) by ψ of it. Heads and other groups keep their raw gradients; the frozen
backbone has none. ψ itself stays frozen and is not saved with the method's checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn
from torch.optim import Optimizer

from lightning_prompts.callbacks.parameter_groups import group_parameters
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.optim.gradient_regulator import GradientRegulator
from lightning_prompts.registry import register_callback

if TYPE_CHECKING:
    from lightning_prompts.methods.base import PromptModule


@register_callback(
    paper="Li et al., ICCV 2023 — Gradient-Regulated Meta-Prompt Learning for Generalizable Vision-Language Models",
    docs="callbacks/gradient_regulation.md",
)
class GradientRegulation(Callback):
    """Replace the gradients of a method's prompt parameters by ψ(gradient) before each optimizer step.

    Args:
        regulator: a :class:`~lightning_prompts.optim.GradientRegulator` or the path of its file
            (``regulator.safetensors``, written by :class:`~lightning_prompts.pretraining.GRAM`).
        groups: the method's parameter groups (``param_groups()`` names) whose gradients are regulated.
    """

    def __init__(self, regulator: str | Path | GradientRegulator, groups: Sequence[str] = ("prompt",)) -> None:
        super().__init__()
        if not groups:
            raise ValueError("groups must name at least one parameter group.")
        self.source, self.groups = regulator, list(groups)
        self.regulator: GradientRegulator | None = regulator if isinstance(regulator, GradientRegulator) else None
        self._params: list[nn.Parameter] = []

    def _load(self) -> GradientRegulator:
        if self.regulator is None:
            try:
                self.regulator = GradientRegulator.load(self.source)
            except (FileNotFoundError, ValueError) as error:
                raise ConfigurationError(f"GradientRegulation: {error}") from error
        self.regulator.requires_grad_(False).eval()
        return self.regulator

    def check_ready(self, module: PromptModule, datamodule: Any | None, callbacks: Sequence[Any] = ()) -> None:
        """Fail before training if the regulator cannot be read or the method lacks a named group."""
        self._load()
        self._params = group_parameters(module, self.groups, "GradientRegulation")

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            self.check_ready(pl_module, trainer.datamodule, trainer.callbacks)
            self.regulator.to(pl_module.device)

    def state_dict(self) -> dict[str, Any]:
        # ψ is not saved, only its fingerprint: a run resumed with another regulator (the file rewritten in between)
        # would continue silently with other gradients
        return {"regulator_sha256": _fingerprint(self.regulator)} if self.regulator is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        expected = state_dict.get("regulator_sha256")
        if expected and self.regulator is not None and _fingerprint(self.regulator) != expected:
            where = f" {self.source}" if isinstance(self.source, (str, Path)) else ""
            raise ConfigurationError(
                f"GradientRegulation: the regulator{where} differs from the one the checkpoint was trained with; "
                "resume with that regulator."
            )

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        for param in self._params:
            if param.grad is not None:
                param.grad.copy_(self.regulator(param.grad))


def _fingerprint(regulator: nn.Module) -> str:
    """SHA-256 of the regulator's tensors, in state-dict order."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in regulator.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
