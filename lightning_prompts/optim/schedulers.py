"""Warm-up then cosine decay, in the two flavours the prompt-tuning literature uses.

* **Dassl / CoOp** (``warmup="constant"``, ``cosine_span="total"``): epoch 0 runs at a constant
  ``warmup_lr`` (1e-5), then epoch ``e >= 1`` runs at ``base * (1 + cos(pi * (e - 1) / E)) / 2`` with
  ``E = max_epochs``: the cosine spans ``E`` epochs *counted after* the warm-up, so the last epoch
  never reaches zero.
* **VPT** (``warmup="linear"``, ``warmup_lr=0``, ``cosine_span="remaining"``): epoch ``e < W`` runs at
  ``base * e / W`` (so epoch 0 at zero), then a cosine over the remaining ``max_epochs - W`` epochs.

* **Hugging Face's** ``get_linear_schedule_with_warmup`` (DePT, PANDA): ``warmup="linear"``,
  ``warmup_lr=0``, ``cosine_span="remaining"``, ``decay="linear"``: ``base * (T - e) / (T - W)`` after the
  warm-up, stepped per optimizer step.

Dassl and VPT step once per epoch in the official code; with ``interval: step`` in the module, read
"epoch" as "optimizer step" everywhere here.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class WarmupCosineLR(LRScheduler):
    """Constant or linear warm-up, then cosine decay to ``min_lr``.

    Args:
        optimizer: the wrapped optimizer (every parameter group keeps its own base lr).
        max_epochs: length of training; ``None`` takes the Trainer's ``max_epochs`` (filled in by
            :class:`~lightning_prompts.methods.PromptModule`).
        warmup_epochs: epochs of warm-up.
        warmup: ``"constant"`` (run at ``warmup_lr``) or ``"linear"`` (from ``warmup_lr`` to the base lr).
        warmup_lr: the warm-up learning rate (absolute, the same for every group, as in Dassl).
        cosine_span: ``"remaining"``: the cosine spans ``max_epochs - warmup_epochs`` (VPT);
            ``"total"``: it spans ``max_epochs`` counted from the end of warm-up (Dassl);
            ``"from_start"``: it spans ``max_epochs`` counted from epoch 0, so warm-up ends part-way down
            the curve (timm's ``CosineLRScheduler`` without ``warmup_prefix``: Point-MAE, IDPT).
        min_lr: the cosine's floor.
        decay: ``"cosine"`` or ``"linear"`` (from the base lr to ``min_lr`` over the same span).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        max_epochs: int | None = None,
        warmup_epochs: int = 0,
        warmup: str = "linear",
        warmup_lr: float = 0.0,
        cosine_span: str = "remaining",
        min_lr: float = 0.0,
        decay: str = "cosine",
        last_epoch: int = -1,
    ) -> None:
        if decay not in ("cosine", "linear"):
            raise ValueError(f"decay must be 'cosine' or 'linear', got {decay!r}.")
        self.decay = decay
        if warmup not in ("constant", "linear"):
            raise ValueError(f"warmup must be 'constant' or 'linear', got {warmup!r}.")
        if cosine_span not in ("remaining", "total", "from_start"):
            raise ValueError(f"cosine_span must be 'remaining', 'total' or 'from_start', got {cosine_span!r}.")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}.")
        self.max_epochs = max_epochs
        self.warmup_epochs, self.warmup, self.warmup_lr = warmup_epochs, warmup, warmup_lr
        self.cosine_span, self.min_lr = cosine_span, min_lr
        super().__init__(optimizer, last_epoch)

    def set_max_epochs(self, max_epochs: int) -> None:
        """Fill in ``max_epochs`` when it was left to the Trainer."""
        if self.max_epochs is None:
            self.max_epochs = max_epochs

    @property
    def never_leaves_warmup(self) -> bool:
        """The warm-up is as long as the schedule or longer: every step runs at the warm-up's learning rate."""
        return self.max_epochs is not None and self.warmup_epochs >= self.max_epochs

    def lr_at(self, epoch: int, base_lr: float) -> float:
        """The learning rate of ``epoch`` for a group whose base lr is ``base_lr``."""
        if epoch < self.warmup_epochs:
            if self.warmup == "constant":
                return self.warmup_lr
            return self.warmup_lr + (base_lr - self.warmup_lr) * epoch / self.warmup_epochs
        if self.max_epochs is None:  # not bound to the Trainer yet: the first post-warm-up epoch runs at base lr
            return base_lr
        span = self.max_epochs if self.cosine_span != "remaining" else max(1, self.max_epochs - self.warmup_epochs)
        elapsed = epoch if self.cosine_span == "from_start" else epoch - self.warmup_epochs
        progress = min(elapsed, span) / span
        remaining = 1.0 - progress if self.decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr + (base_lr - self.min_lr) * remaining

    def get_lr(self) -> list[float]:
        return [self.lr_at(self.last_epoch, base) for base in self.base_lrs]


class ExponentialDecayLR(LRScheduler):
    """Exponential decay from the base lr to ``final_fraction`` of it at the last of ``total_steps`` steps:
    ``lr_t = base · γ^t`` with ``γ = final_fraction^(1 / (total_steps − 1))`` (PTEC: to 1 % over training,
    stepped per optimizer update).

    Args:
        optimizer: the wrapped optimizer (every group decays from its own base lr).
        final_fraction: the last step's share of the base lr.
        total_steps: steps of training; ``None`` takes the Trainer's (filled in by
            :class:`~lightning_prompts.methods.PromptModule`: optimizer steps with ``interval: step``).
    """

    def __init__(
        self, optimizer: Optimizer, final_fraction: float = 0.01, total_steps: int | None = None, last_epoch: int = -1
    ) -> None:
        if not 0.0 < final_fraction <= 1.0:
            raise ValueError(f"final_fraction must be in (0, 1], got {final_fraction}.")
        self.final_fraction, self.total_steps = final_fraction, total_steps
        super().__init__(optimizer, last_epoch)

    def set_max_epochs(self, max_epochs: int) -> None:
        if self.total_steps is None:
            self.total_steps = max_epochs

    @property
    def gamma(self) -> float:
        if self.total_steps is None or self.total_steps < 2:
            return 1.0
        return self.final_fraction ** (1.0 / (self.total_steps - 1))

    def get_lr(self) -> list[float]:
        step = min(self.last_epoch, (self.total_steps or 1) - 1)
        return [base * self.gamma**step for base in self.base_lrs]
