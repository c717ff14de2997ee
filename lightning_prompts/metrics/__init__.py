"""torchmetrics metrics for the evaluation protocols of prompt learning."""

from lightning_prompts.metrics.setwise_accuracy import SetwiseAccuracy, harmonic_mean

__all__ = ["SetwiseAccuracy", "harmonic_mean"]
