"""Per-step random draws of a callback that follow the run's seed and resume exactly."""

from __future__ import annotations

import os
import random
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule, Trainer


class SeededDraws:
    """Mixin: ``self.rng``, seeded with ``seed`` or, when that is ``None``, with the run's seed
    (``seed_everything``, read at ``setup``), so runs with different seeds draw different sequences and
    every DDP rank draws the same; its state travels in checkpoints as plain lists (loadable with
    ``weights_only=True``), so a resumed run continues the sequence."""

    def init_draws(self, seed: int | None) -> None:
        self.rng = random.Random(seed if seed is not None else 0)
        self._seeded = seed is not None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not self._seeded:
            self.rng = random.Random(int(os.environ.get("PL_GLOBAL_SEED", "0")))
            self._seeded = True

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "rng" in state_dict:
            version, internal, gauss = state_dict["rng"]
            self.rng.setstate((version, tuple(internal), gauss))
            self._seeded = True
