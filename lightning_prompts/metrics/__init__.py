"""torchmetrics metrics for the evaluation protocols of prompt learning."""

from lightning_prompts.metrics.continual import (
    ContinualAccuracy,
    TaskAccuracy,
    average_incremental_accuracy,
    forgetting,
)
from lightning_prompts.metrics.mean_per_class import MeanPerClassAccuracy
from lightning_prompts.metrics.multilabel_continual import MultiLabelCLMetrics
from lightning_prompts.metrics.multitask_auroc import MultiTaskAUROC
from lightning_prompts.metrics.n_point_map import NPointMeanAveragePrecision
from lightning_prompts.metrics.ood import OODDetection, ood_metrics
from lightning_prompts.metrics.setwise_accuracy import SetwiseAccuracy, harmonic_mean

__all__ = [
    "ContinualAccuracy",
    "MeanPerClassAccuracy",
    "MultiLabelCLMetrics",
    "MultiTaskAUROC",
    "NPointMeanAveragePrecision",
    "OODDetection",
    "SetwiseAccuracy",
    "TaskAccuracy",
    "average_incremental_accuracy",
    "forgetting",
    "harmonic_mean",
    "ood_metrics",
]
