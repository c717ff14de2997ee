"""What a resumed run needs beyond the checkpoint's own state to end where the uninterrupted run ended.

Lightning keeps ``EarlyStopping``'s counters in checkpoints but not the Trainer's decision to stop, so a run that
``EarlyStopping`` ended, resumed from its ``last.ckpt`` (a preemption script passes ``--ckpt_path last`` every
time), trained another epoch, rewriting ``last.ckpt`` and possibly ``best.ckpt``. :class:`KeepEarlyStoppingDecision`
stops such a run before its first step and says so. ``lightning-prompts fit`` adds it; add it to your own
``Trainer`` too. To train such a run on, leave ``EarlyStopping`` out (its state, patience included, is restored from
the checkpoint, so a larger ``patience`` would not help) or monitor another metric.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_info


class KeepEarlyStoppingDecision(Callback):
    """On a resumed ``fit``, stop before the first step when an ``EarlyStopping`` callback's restored state says
    it had stopped the run (its ``stopping_reason`` is other than ``NOT_STOPPED``)."""

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        from lightning.pytorch.callbacks import EarlyStopping
        from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

        if trainer.ckpt_path is None:
            return
        for callback in trainer.callbacks:
            if isinstance(callback, EarlyStopping) and callback.stopping_reason != EarlyStoppingReason.NOT_STOPPED:
                trainer.should_stop = True  # the fit loop checks this before its first epoch and ends
                rank_zero_info(
                    f"Resumed from {trainer.ckpt_path}, a run EarlyStopping had ended "
                    f"({callback.stopping_reason_message or callback.stopping_reason.name}): nothing more to train. "
                    "To train on, leave EarlyStopping out of the config or monitor another metric."
                )
                return
