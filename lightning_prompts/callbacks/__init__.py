"""Reusable regularisers and training dynamics that plug into any method whose outputs fit."""

from lightning_prompts.callbacks.consistency import ConsistencyRegularization
from lightning_prompts.callbacks.loss_term import LossTerm

__all__ = ["ConsistencyRegularization", "LossTerm"]
