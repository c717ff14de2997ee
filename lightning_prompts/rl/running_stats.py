"""Running reward normalisation as RELIEF's ``reward.py`` computes it.

``RunningMeanStd`` is Welford's running mean and (population) standard deviation, with the official code's
first step: after one value the *standard deviation is set to that value* (not 0), so the first normalised
reward is ``(x − x) / (x + 1e-8) = 0`` whatever ``x`` is. ``RewardNormalizer`` is the official
``Normalization``: ``(x − mean) / (std + 1e-8)``, updating the statistics first unless ``update=False``.
Both are reproduced as released (the published policies were trained with them).
"""

from __future__ import annotations

from typing import Any

import numpy as np


class RunningMeanStd:
    """Running mean and population standard deviation of scalars or fixed-shape arrays (see the module
    docstring for the first step)."""

    def __init__(self, shape: tuple[int, ...] | int = ()) -> None:
        self.count = 0
        self.mean = np.zeros(shape)
        self.sum_squares = np.zeros(shape)
        self.std = np.zeros(shape)

    def update(self, value: Any) -> None:
        value = np.asarray(value, dtype=np.float64)
        self.count += 1
        if self.count == 1:
            self.mean, self.std = value.copy(), value.copy()  # the official first step
            return
        previous = self.mean.copy()
        self.mean = previous + (value - previous) / self.count
        self.sum_squares = self.sum_squares + (value - previous) * (value - self.mean)
        self.std = np.sqrt(self.sum_squares / self.count)

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean.tolist(), "sum_squares": self.sum_squares.tolist(),
                "std": self.std.tolist()}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])
        self.mean, self.sum_squares, self.std = (np.asarray(state[k]) for k in ("mean", "sum_squares", "std"))


class RewardNormalizer:
    """``(x − mean) / (std + 1e-8)`` with running statistics (RELIEF's ``Normalization``)."""

    def __init__(self, shape: tuple[int, ...] | int = ()) -> None:
        self.stats = RunningMeanStd(shape)

    def warm_up(self, rewards: Any) -> None:
        """Feed every reward once without normalising (RELIEF does this for the first batch of episodes)."""
        for reward in rewards:
            self.stats.update(reward)

    def __call__(self, reward: Any, update: bool = True) -> np.ndarray:
        if update:
            self.stats.update(reward)
        return (np.asarray(reward, dtype=np.float64) - self.stats.mean) / (self.stats.std + 1e-8)
