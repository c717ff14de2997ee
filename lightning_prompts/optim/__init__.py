"""Learning-rate schedules used by the paper recipes, and GRAM's gradient regulator."""

from lightning_prompts.optim.gradient_regulator import GradientRegulator
from lightning_prompts.optim.schedulers import ExponentialDecayLR, WarmupCosineLR

__all__ = ["ExponentialDecayLR", "GradientRegulator", "WarmupCosineLR"]
