"""The multi-label continual evaluator's own step (its metric, MultiLabelCLMetrics, is pinned by hand in
tests/data/test_multilabel_incremental.py): logits of the seen classes only are padded with never-predicted
classes after the sigmoid, validation scores the classes seen by the epoch's task, and ``val/avg_map`` is the mean
of the task-end mAPs so far."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lightning_prompts.evaluation.multilabel_continual import MultiLabelContinualEvaluator
from lightning_prompts.metrics.multilabel_continual import MultiLabelCLMetrics


class Stream:
    """Three tasks of two classes, one epoch each."""

    num_tasks, epochs_per_task = 3, 1

    def task_of_epoch(self, epoch: int) -> int:
        return epoch

    def seen_classes(self, task: int) -> int:
        return 2 * (task + 1)


def test_validation_scores_the_seen_classes_and_averages_the_task_end_maps():
    generator = torch.Generator().manual_seed(0)
    stream = Stream()
    trainer = SimpleNamespace(current_epoch=0, sanity_checking=False)
    module = SimpleNamespace(
        classnames=[f"c{i}" for i in range(6)], device=torch.device("cpu"), _trainer=trainer, datamodule=stream
    )
    evaluator = MultiLabelContinualEvaluator(threshold=0.8)
    evaluator.setup(module, stream, "fit")
    maps = []
    for task in range(2):
        trainer.current_epoch = task
        seen = stream.seen_classes(task)
        targets = (torch.rand(12, 6, generator=generator) > 0.5).long()
        logits = 3 * torch.randn(12, seen, generator=generator)  # a method scoring the seen classes only
        evaluator.start(module, "val")
        evaluator.update(module, None, logits[:5], targets[:5], "val", 0)
        evaluator.update(module, None, logits[5:], targets[5:], "val", 0)
        logged = evaluator.finish(module, "val")
        reference = MultiLabelCLMetrics(6, 0.8)
        reference.update(torch.cat([logits.sigmoid(), torch.zeros(12, 6 - seen)], dim=1), targets)
        expected = reference.scores(seen)
        maps.append(float(expected["map"]))
        for name in ("map", "cf1", "of1"):
            torch.testing.assert_close(logged[f"val/{name}"], expected[name])
        assert logged["val/avg_map"].item() == pytest.approx(sum(maps) / len(maps))
    assert maps[0] != maps[1]
