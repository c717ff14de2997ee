"""How evaluation and training sets split over DDP processes (lightning_prompts.data.processes), without
starting processes: the splits are pure index arithmetic. tests/test_distributed_and_precision.py runs them."""

from __future__ import annotations

import pytest
import torch

from lightning_prompts.data.processes import EvaluationShard, drops_last, evaluation_sampler
from lightning_prompts.metrics.mean_per_class import MeanPerClassAccuracy
from lightning_prompts.metrics.n_point_map import NPointMeanAveragePrecision
from lightning_prompts.metrics.validation_means import WeightedMean


@pytest.mark.parametrize("size", [1, 2, 5, 9, 10])
@pytest.mark.parametrize("processes", [2, 3, 4])
def test_evaluation_shards_hold_every_sample_exactly_once(size, processes):
    shards = [list(EvaluationShard(range(size), processes, rank)) for rank in range(processes)]
    assert sorted(index for shard in shards for index in shard) == list(range(size))  # no repeats, none left out
    for rank, shard in enumerate(shards):
        assert shard == list(range(rank, size, processes))  # strided: predictions interleave back into order
        assert len(EvaluationShard(range(size), processes, rank)) == len(shard)


def test_one_process_keeps_the_loaders_own_order():
    assert evaluation_sampler(range(9)) is None  # no process group: the loader's SequentialSampler


@pytest.mark.parametrize(
    ("size", "batch", "processes", "expected"),
    [(6, 4, 1, True), (6, 4, 2, False), (8, 4, 2, True), (9, 4, 2, True), (7, 4, 2, True), (37, 32, 2, False)],
)
def test_the_last_partial_batch_is_dropped_only_where_each_process_has_a_full_one(size, batch, processes, expected):
    class Trainer:
        world_size = processes

    # 6 images in batches of 4: one full batch in one process, but 3 images each for two (ceil(6 / 2) = 3), where
    # dropping the partial batch left no training step at all
    assert drops_last(size, batch, Trainer()) is expected


def test_list_state_metrics_compute_after_their_lists_were_gathered_into_one_tensor():
    """torchmetrics turns a ``cat`` list state into one tensor when it syncs processes: ``if not self.targets``
    then raised 'Boolean value of Tensor with more than one value is ambiguous'."""
    for metric, batch, expected in (
        (MeanPerClassAccuracy(), (torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]]), torch.tensor([0, 1, 1])), 0.75),
        (NPointMeanAveragePrecision(points=11), (torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.eye(2)), 1.0),
    ):
        metric.update(*batch)
        metric.scores, metric.targets = torch.cat(metric.scores), torch.cat(metric.targets)  # as after a sync
        assert metric.compute() == pytest.approx(expected)


def test_the_weighted_mean_sums_floats_so_unequal_shares_average_exactly():
    """Two processes that scored 2 and 1 samples: their sums add (what a sync does) to the mean of all three."""
    first, second = WeightedMean(), WeightedMean()
    first.update(torch.tensor(1.0568), 2)  # mean loss of 2 samples
    second.update(torch.tensor(0.9497), 1)
    first.total, first.weight = first.total + second.total, first.weight + second.weight  # dist_reduce_fx="sum"
    assert first.compute().item() == pytest.approx((1.0568 * 2 + 0.9497) / 3)
    assert first.weight.dtype == torch.float64  # Lightning's own count is an integer, averaged by integer division
