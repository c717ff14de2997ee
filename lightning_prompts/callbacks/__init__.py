"""Reusable regularisers and training dynamics that plug into any method whose outputs fit."""

from lightning_prompts.callbacks.consistency import ConsistencyRegularization
from lightning_prompts.callbacks.gradcam_masks import GradCAMMasks
from lightning_prompts.callbacks.gradient_regulation import GradientRegulation
from lightning_prompts.callbacks.loss_term import LossTerm
from lightning_prompts.callbacks.momentum_accumulation import MomentumAccumulation
from lightning_prompts.callbacks.pull_push import PullPushRegularization

__all__ = [
    "ConsistencyRegularization",
    "GradCAMMasks",
    "GradientRegulation",
    "LossTerm",
    "MomentumAccumulation",
    "PullPushRegularization",
]
