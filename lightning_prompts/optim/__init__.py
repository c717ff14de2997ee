"""Learning-rate schedules used by the paper recipes."""

from lightning_prompts.optim.schedulers import WarmupCosineLR

__all__ = ["WarmupCosineLR"]
