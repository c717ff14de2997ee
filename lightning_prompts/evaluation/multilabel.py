"""Multi-label classification: macro-/micro-F1, Jaccard and mAP of per-class sigmoid scores.

A text is in class ``c`` when ``sigmoid(logit_c) >= threshold`` (0.5, as PTEC thresholds). Logged per
stage: ``<stage>/macro_f1`` (PTEC's headline metric and the default ``best.ckpt`` monitor),
``<stage>/micro_f1``, ``<stage>/jaccard`` (macro-averaged Jaccard index) and ``<stage>/map`` (macro
average precision, threshold-free), all torchmetrics metrics, so they reduce over DDP ranks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MultilabelAveragePrecision,
    MultilabelF1Score,
    MultilabelJaccardIndex,
)

from lightning_prompts.errors import ConfigurationError
from lightning_prompts.evaluation.base import Evaluator, Stage
from lightning_prompts.registry import register_evaluator

if TYPE_CHECKING:
    from lightning_prompts.methods.base import PromptModule


def multilabel_metrics(num_labels: int, threshold: float = 0.5) -> MetricCollection:
    """The metrics of :class:`MultiLabelEvaluator`, on probabilities and multi-hot targets."""
    return MetricCollection(
        {
            "macro_f1": MultilabelF1Score(num_labels, threshold=threshold, average="macro"),
            "micro_f1": MultilabelF1Score(num_labels, threshold=threshold, average="micro"),
            "jaccard": MultilabelJaccardIndex(num_labels, threshold=threshold, average="macro"),
            "map": MultilabelAveragePrecision(num_labels, average="macro"),
        }
    )


@register_evaluator()
class MultiLabelEvaluator(Evaluator):
    """Multi-label metrics of the method's per-class logits (see the module docstring).

    Args:
        threshold: probability at or above which a class is predicted.
    """

    monitor: ClassVar[tuple[str, str] | None] = ("val/macro_f1", "max")

    def __init__(self, threshold: float = 0.5) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}.")
        self.threshold = threshold
        self._metrics: dict[str, MetricCollection] = {}

    def check_ready(self, module: PromptModule, datamodule: Any | None, stage: str) -> None:
        if datamodule is not None and getattr(datamodule, "multi_label", True) is False:
            raise ConfigurationError(
                "MultiLabelEvaluator needs multi-label data (set label_separator on the data module)."
            )

    def start(self, module: PromptModule, stage: Stage) -> None:
        self._metrics[stage] = multilabel_metrics(len(module.classnames), self.threshold).to(module.device)

    def update(
        self, module: PromptModule, batch: Any, scores: Tensor, targets: Tensor, stage: Stage, dataloader_idx: int
    ) -> None:
        if targets.dim() != 2:
            raise ConfigurationError(
                f"MultiLabelEvaluator needs multi-hot (B, C) targets, got shape {tuple(targets.shape)}."
            )
        self._metrics[stage].update(torch.sigmoid(scores.float()), targets.long())

    def finish(self, module: PromptModule, stage: Stage) -> dict[str, Tensor]:
        metrics = self._metrics.get(stage)
        if metrics is None or not metrics["macro_f1"].update_called:
            return {}
        values = metrics.compute()
        metrics.reset()
        return {f"{stage}/{name}": value for name, value in values.items()}
