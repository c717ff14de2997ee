"""Prompt tuning with differential privacy (DP-SGD on the prompt only): POST's private stage.

In POST (Wang et al., ICML 2025) the data owner tunes the soft prompt on a small model with DP-SGD
(the paper's PromptDPSGD), so the prompt it hands over — and anything transferred from it
(:class:`~lightning_prompts.methods.POST`) — is differentially private with respect to the private data.
Each step: per-example gradients of the trainable tensors (the prompt, and the head for sequence
classification), each clipped to norm ``max_grad_norm`` (C), summed, Gaussian noise N(0, σ²C²) added,
divided by the batch size, then a plain SGD step (the official code allows SGD only).

Privacy accounting uses Opacus (``opacus``, the maintained PyTorch DP library): its PRV accountant (the
default of the official code's ``PrivacyEngine()``; ``accountant="rdp"`` for the RDP one, which adds about 6 %
more noise for the same ε) tracks ε for ``δ = 1/N`` (the official choice) and, given a target ε, its
``get_noise_multiplier`` picks σ for the optimizer steps the run takes. Opacus's own per-sample-gradient hooks
cannot see a soft prompt (a parameter concatenated to the inputs, not a layer applied to them), so the per-example
gradients are computed here, one example at a time — exact, and affordable on the small models this stage is for.

Where we deviate: batches are fixed-size shuffled batches, while the accountant assumes Poisson sampling
of rate ``batch_size / N`` (the common approximation; the official code samples Poisson batches with
Opacus's data loader). σ is calibrated to the batches the run takes (``Trainer.estimated_stepping_batches``:
⌈N/B⌉ per epoch, or ``max_steps`` when it ends the run first), where the official code's
``make_private_with_epsilon`` takes the epochs at N/B expected batches each: equal when B divides N, and a run
that ``max_steps`` ends still finishes at the target ε.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lightning_prompts.backbones.hf_text import HFText
from lightning_prompts.batch import ATTENTION_MASK, INPUT_IDS
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods.prompt_tuning import PromptTuning
from lightning_prompts.registry import register_method


def clip_and_noise(
    per_example: Sequence[Sequence[Tensor]], max_grad_norm: float, noise_multiplier: float, generator: torch.Generator
) -> list[Tensor]:
    """DP-SGD's gradient: ``(Σ_i clip_C(g_i) + N(0, σ²C²)) / B`` per tensor, ``g_i`` clipped jointly over tensors."""
    summed = [torch.zeros_like(t) for t in per_example[0]]
    for grads in per_example:
        norm = torch.sqrt(sum(g.float().pow(2).sum() for g in grads))
        scale = min(1.0, max_grad_norm / (float(norm) + 1e-6))
        for total, g in zip(summed, grads):
            total.add_(g, alpha=scale)
    out = []
    for total in summed:
        noise = torch.randn(total.shape, generator=generator, dtype=torch.float32).to(total)
        out.append((total + noise_multiplier * max_grad_norm * noise) / len(per_example))
    return out


@register_method(
    family="text",
    title="Prompt tuning with DP-SGD",
    paper="Wang et al., ICML 2025 — POST: Privacy Of Soft-prompt Transfer (its private prompt tuning, PromptDPSGD)",
    code="sprintml/POST",
    overlay="text_short_prompt",
    example={"num_virtual_tokens": 3, "noise_multiplier": 1.0},
)
class DPPromptTuning(PromptTuning):
    """Soft prompt tuning whose updates are differentially private (see the module docstring).

    Args:
        backbone, classnames: see :class:`~lightning_prompts.methods.PromptTuning` (and its other arguments
            through ``**kwargs``).
        target_epsilon: ε to reach at the end of the run (σ is computed from it and the run's steps at the start
            of training);
            ignored when ``noise_multiplier`` is given.
        noise_multiplier: σ directly.
        max_grad_norm: C, the per-example clipping norm (POST: 1.0).
        delta: δ (default ``1 / N``).
        accountant: Opacus's privacy accountant, ``"prv"`` (the official code's, Opacus's default) or ``"rdp"``
            (looser: at ε = 8 on SST-2 over 3 epochs, σ 0.432 instead of 0.407).
        **kwargs: :class:`~lightning_prompts.methods.PromptTuning`'s. Default optimizer: SGD, lr 0.1.
    """

    default_optimizer: ClassVar[dict[str, Any]] = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}}
    #: the private step clips and noises per-example gradients of the task loss only
    accepts_loss_terms: ClassVar[bool] = False
    manual_steps: ClassVar[str] = (
        "one noisy step per batch of per-example gradients clipped to max_grad_norm; for more examples per step, "
        "raise the data's batch_size"
    )

    def __init__(
        self,
        backbone: HFText,
        classnames: Sequence[str] | None = None,
        target_epsilon: float | None = 8.0,
        noise_multiplier: float | None = None,
        max_grad_norm: float = 1.0,
        delta: float | None = None,
        accountant: Literal["prv", "rdp"] = "prv",
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, classnames, **kwargs)
        if accountant not in ("prv", "rdp"):
            raise ValueError(f"accountant must be 'prv' or 'rdp', got {accountant!r}.")
        self.accountant = accountant
        if noise_multiplier is None and target_epsilon is None:
            raise ConfigurationError("DPPromptTuning needs target_epsilon or noise_multiplier.")
        if max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be > 0, got {max_grad_norm}.")
        self.target_epsilon, self.noise_multiplier = target_epsilon, noise_multiplier
        self.max_grad_norm, self.delta = float(max_grad_norm), delta
        self.automatic_optimization = False
        self._accountant: Any = None
        self._sample_rate = 0.0
        self._noise = torch.Generator()

    # -- privacy accounting ------------------------------------------------------------------------------
    def check_trainer(self, stage: str, trainer: Any) -> None:
        super().check_trainer(stage, trainer)
        if stage != "fit":
            return
        # the clipped, noised gradient is assigned to .grad by hand, past DDP's averaging: each process would train
        # on its own share, and the accounting would count one process's batch as the sampling rate
        if trainer.world_size > 1:
            raise ConfigurationError(
                "DPPromptTuning clips and noises per-example gradients in one process; run it on one device."
            )
        if self.noise_multiplier is None and trainer.max_epochs == -1 and trainer.max_steps == -1:
            raise ConfigurationError(
                "DPPromptTuning sets its noise to reach target_epsilon over the run's steps: give the run an end "
                "(trainer.max_epochs or trainer.max_steps), or set noise_multiplier."
            )
        if self._gradient_scaler(trainer) is not None:
            rank_zero_warn(
                "DPPromptTuning under a float16 gradient scaler (16-mixed): a step whose scaled gradients overflow is "
                "skipped, a decision that depends on the batch before clipping and noise and is outside the privacy "
                "guarantee (the accountant still counts the step). Train in 32-true or bf16-mixed where the "
                "accounting must be strict."
            )

    def on_train_start(self) -> None:
        from opacus.accountants import create_accountant
        from opacus.accountants.utils import get_noise_multiplier

        size = len(self.trainer.datamodule.train_dataloader().dataset) if self.trainer.datamodule else None
        if not size:
            raise ConfigurationError("DPPromptTuning needs the training set's size (a data module) for its accounting.")
        batch = self.trainer.datamodule.batch_size
        self._sample_rate = min(1.0, batch / size)
        self.delta = self.delta if self.delta is not None else 1.0 / size
        if self.noise_multiplier is None:
            # the optimizer steps this run takes (its epochs' batches, or max_steps when that ends it first): the
            # accountant counts one step of rate B/N per batch, so the run ends at target_epsilon, not past it
            steps = self.trainer.estimated_stepping_batches
            self.noise_multiplier = float(
                get_noise_multiplier(
                    target_epsilon=self.target_epsilon,
                    target_delta=self.delta,
                    sample_rate=self._sample_rate,
                    steps=int(steps),
                    accountant=self.accountant,
                )
            )
        if self._accountant is None:  # a resumed run keeps the history (and noise stream) of its checkpoint
            self._accountant = create_accountant(self.accountant)
            self._noise.manual_seed(int(os.environ.get("PL_GLOBAL_SEED", "0")) + 7919)

    @property
    def epsilon(self) -> float:
        """ε spent so far (at ``delta``)."""
        if self._accountant is None or not self._accountant.history:
            return 0.0
        return float(self._accountant.get_epsilon(self.delta))

    # -- the private step --------------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        optimizer = self.optimizers()
        params = [p for p in self.parameters() if p.requires_grad]
        ids, mask, targets = batch[INPUT_IDS], batch[ATTENTION_MASK], self.batch_targets(batch)
        # under a float16 scaler (16-mixed), each loss is scaled as manual_backward would, so no gradient flushes to
        # zero in the half-precision backward; clipping and noise work on the true gradients, and .grad gets them
        # scaled back, because the scaler's step divides them (and skips a step whose gradients are not finite)
        per_example, losses = [], []
        for index in range(ids.shape[0]):
            one = slice(index, index + 1)
            loss = self.task_loss(self(ids[one], mask[one]), targets[one])
            per_example.append(torch.autograd.grad(self.scale_loss(loss), params))
            losses.append(loss.detach())
        scale = self.gradient_scale()
        per_example = [[g / scale for g in grads] for grads in per_example] if scale != 1.0 else per_example
        assert self.noise_multiplier is not None
        grads = clip_and_noise(per_example, self.max_grad_norm, self.noise_multiplier, self._noise)
        for param, grad in zip(params, grads):
            param.grad = grad * scale
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self._accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self._sample_rate)
        loss = torch.stack(losses).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=ids.shape[0])
        self.log("train/epsilon", self.epsilon, prog_bar=True, batch_size=ids.shape[0])
        return loss

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self._accountant is not None:  # plain lists: the history resumes with weights_only loading
            checkpoint["dp_accountant"] = [list(map(float, step)) for step in self._accountant.history]
            checkpoint["dp_noise_multiplier"] = self.noise_multiplier
            checkpoint["dp_noise_state"] = self._noise.get_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if "dp_accountant" in checkpoint:
            from opacus.accountants import create_accountant

            self._accountant = create_accountant(self.accountant)
            self._accountant.history = [tuple(step[:2]) + (int(step[2]),) for step in checkpoint["dp_accountant"]]
            self.noise_multiplier = checkpoint.get("dp_noise_multiplier", self.noise_multiplier)
            if "dp_noise_state" in checkpoint:
                self._noise.set_state(checkpoint["dp_noise_state"])
