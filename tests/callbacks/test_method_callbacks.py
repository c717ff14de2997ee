"""Callbacks a method brings itself (``configure_callbacks``): Lightning adds them to the Trainer's before
``setup`` and replaces a user's callback of the same type, dropping its settings. ``check_ready`` refuses a user's
copy, and never takes the method's own for one, also for a method class a user writes."""

from __future__ import annotations

import pytest
from helpers import synthetic_fewshot
from lightning.pytorch import Callback, Trainer

from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods import CoOp


class Counting(Callback):
    def __init__(self, step: int = 1) -> None:
        self.step, self.batches = step, 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.batches += self.step


class CoOpWithItsOwnCallback(CoOp):  # a user's method, written the plain Lightning way
    def configure_callbacks(self):
        return [Counting()]


def test_a_users_method_with_its_own_callback_fits_and_a_second_copy_is_refused(tiny_clip, trainer_kwargs):
    data = synthetic_fewshot()
    method = CoOpWithItsOwnCallback(tiny_clip, data.classnames, n_ctx=2)
    trainer = Trainer(max_steps=2, num_sanity_val_steps=0, limit_val_batches=0, **trainer_kwargs)
    trainer.fit(method, data)  # the method's own callback, in trainer.callbacks by setup, is not the user's
    assert next(c for c in trainer.callbacks if isinstance(c, Counting)).batches == 2

    given = Counting(step=100)
    with pytest.raises(ConfigurationError, match="CoOpWithItsOwnCallback attaches Counting itself"):
        method.check_ready("fit", [given], data)
    again = Trainer(max_steps=1, callbacks=[given], limit_val_batches=0, **trainer_kwargs)
    with pytest.raises(ConfigurationError, match="attaches Counting itself"):
        again.fit(CoOpWithItsOwnCallback(tiny_clip, data.classnames, n_ctx=2), data)
    assert given.batches == 0
