"""The multi-label class-incremental protocol (MULTI-LANE, KRT): after each task, mAP, CF1 and OF1 over the
classes seen so far on the test images that contain any of them, and the average mAP over the tasks so far.

Logged: ``val/map`` (the default ``best.ckpt`` monitor), ``val/avg_map`` (the mean of the mAPs at the end of
each task so far, the papers' "average mAP"), ``val/cf1`` and ``val/of1`` at the threshold 0.8; ``test/map``,
``test/cf1``, ``test/of1`` over all classes. Scores are the sigmoid of the logits; a method may return logits
for the seen classes only (the rest count as never predicted). The per-task mAP history travels in checkpoints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from lightning_prompts.data.protocols import TaskStream, provided
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.evaluation.base import Evaluator, Stage
from lightning_prompts.metrics.multilabel_continual import MultiLabelCLMetrics
from lightning_prompts.registry import register_evaluator

if TYPE_CHECKING:
    from lightning_prompts.methods.base import PromptModule


@register_evaluator()
class MultiLabelContinualEvaluator(Evaluator):
    """mAP / CF1 / OF1 over the seen classes after each task (see the module docstring).

    Args:
        threshold: a class is predicted when its probability is strictly above this (0.8, KRT's protocol).
    """

    monitor: ClassVar[tuple[str, str] | None] = ("val/map", "max")

    def __init__(self, threshold: float = 0.8) -> None:
        self.threshold = threshold
        self.metric: MultiLabelCLMetrics | None = None
        self.map_history = torch.full((0,), float("nan"))

    def setup(self, module: PromptModule, datamodule: Any | None, stage: str) -> None:
        stream = provided(datamodule, TaskStream)
        if stream is None or not hasattr(datamodule, "seen_classes"):
            raise ConfigurationError(
                "MultiLabelContinualEvaluator needs a multi-label task stream (MultiLabelIncrementalDataModule)."
            )
        classes = len(module.classnames)
        if self.metric is None or self.metric.num_classes != classes:
            self.metric = MultiLabelCLMetrics(classes, self.threshold)
        if self.map_history.numel() != stream.num_tasks:
            self.map_history = torch.full((stream.num_tasks,), float("nan"))

    def check_ready(self, module: PromptModule, datamodule: Any | None, stage: str) -> None:
        if provided(datamodule, TaskStream) is None or not hasattr(datamodule, "seen_classes"):
            raise ConfigurationError(
                f"{type(module).__name__} evaluates a multi-label stream here: use MultiLabelIncrementalDataModule."
            )

    def start(self, module: PromptModule, stage: Stage) -> None:
        assert self.metric is not None
        self.metric = self.metric.to(module.device)
        self.metric.reset()

    def update(
        self, module: PromptModule, batch: Any, scores: Tensor, targets: Tensor, stage: Stage, dataloader_idx: int
    ) -> None:
        assert self.metric is not None
        probabilities = torch.zeros(targets.shape, device=scores.device)
        probabilities[:, : scores.shape[1]] = scores.float().sigmoid()
        self.metric.update(probabilities, targets)

    def finish(self, module: PromptModule, stage: Stage) -> dict[str, Tensor]:
        assert self.metric is not None
        trainer = module._trainer
        datamodule = module.datamodule
        if stage == "test":
            scores = self.metric.scores()
            self.metric.reset()
            return {f"test/{name}": value for name, value in scores.items()}
        if trainer is not None and trainer.sanity_checking:
            self.metric.reset()
            return {}
        task = datamodule.task_of_epoch(trainer.current_epoch) if trainer is not None else 0
        scores = self.metric.scores(datamodule.seen_classes(task))
        self.metric.reset()
        self.map_history[task] = scores["map"].detach().cpu()
        done = self.map_history[: task + 1]
        return {
            "val/map": scores["map"],
            "val/avg_map": done[~done.isnan()].mean(),
            "val/cf1": scores["cf1"],
            "val/of1": scores["of1"],
        }

    def state_dict(self) -> dict[str, Any]:
        return {"map_history": self.map_history.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "map_history" in state:
            self.map_history = torch.as_tensor(state["map_history"]).clone()
