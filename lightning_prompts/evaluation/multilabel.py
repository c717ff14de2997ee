"""Multi-label classification: macro-/micro-F1, Jaccard and mAP of per-class sigmoid scores.

A text is in class ``c`` when ``sigmoid(logit_c) >= threshold`` (0.5, as PTEC thresholds). Logged per
stage: ``<stage>/macro_f1`` (PTEC's headline metric and the default ``best.ckpt`` monitor),
``<stage>/micro_f1``, ``<stage>/jaccard`` (macro-averaged Jaccard index) and ``<stage>/map`` (macro
average precision, threshold-free), all torchmetrics metrics, so they reduce over DDP ranks. With
``n_point_map=11``, also ELEVATER's 11-point mAP (VOC 2007's official metric) of the raw scores.
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
from lightning_prompts.metrics.n_point_map import NPointMeanAveragePrecision
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
        n_point_map: also report ELEVATER's N-point mAP of the raw scores (``11``: VOC 2007's official
            ``11point_mAP``, logged as ``<stage>/map_11point``;
            :class:`~lightning_prompts.metrics.NPointMeanAveragePrecision`); the best checkpoint then follows it.
    """

    monitor: ClassVar[tuple[str, str] | None] = ("val/macro_f1", "max")

    def __init__(self, threshold: float = 0.5, n_point_map: int | None = None) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}.")
        if n_point_map is not None and n_point_map < 2:
            raise ValueError(f"n_point_map must be at least 2 (or None), got {n_point_map}.")
        self.threshold, self.n_point_map = threshold, n_point_map
        if n_point_map is not None:
            self.monitor = (f"val/map_{n_point_map}point", "max")  # type: ignore[misc]
        self._metrics: dict[str, MetricCollection] = {}
        self._n_point: dict[str, NPointMeanAveragePrecision] = {}

    def check_ready(self, module: PromptModule, datamodule: Any | None, stage: str) -> None:
        if datamodule is not None and getattr(datamodule, "multi_label", True) is False:
            raise ConfigurationError(
                "MultiLabelEvaluator needs multi-label data (set label_separator or label_columns on the data module)."
            )

    def start(self, module: PromptModule, stage: Stage) -> None:
        self._metrics[stage] = multilabel_metrics(len(module.classnames), self.threshold).to(module.device)
        if self.n_point_map is not None:
            self._n_point[stage] = NPointMeanAveragePrecision(self.n_point_map).to(module.device)

    def update(
        self, module: PromptModule, batch: Any, scores: Tensor, targets: Tensor, stage: Stage, dataloader_idx: int
    ) -> None:
        if targets.dim() != 2:
            raise ConfigurationError(
                f"MultiLabelEvaluator needs multi-hot (B, C) targets, got shape {tuple(targets.shape)}."
            )
        self._metrics[stage].update(torch.sigmoid(scores.float()), targets.long())
        if stage in self._n_point:  # raw scores: a sigmoid would tie large logits in float32
            self._n_point[stage].update(scores, targets)

    def finish(self, module: PromptModule, stage: Stage) -> dict[str, Tensor]:
        metrics = self._metrics.get(stage)
        if metrics is None or not metrics["macro_f1"].update_called:
            return {}
        values = metrics.compute()
        metrics.reset()
        if stage in self._n_point:
            values[f"map_{self.n_point_map}point"] = self._n_point[stage].compute()
            self._n_point[stage].reset()
        return {f"{stage}/{name}": value for name, value in values.items()}
