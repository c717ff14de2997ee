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


def test_masked_and_partwise_means_under_two_processes_equal_the_global_batch_mean(monkeypatch):
    """Masked BCE (MoleculeNet's missing labels) and the pseudolabel loss's two part-means divided each process's
    sum by its own count, so DDP averaged per-process means (2 and 4 labels; a part absent from one process)
    instead of taking the global batch's mean. Two processes are simulated here: each sees its half, the
    collective sums the counts of both halves, and DDP's averaging is the mean of the two gradients; it now
    equals one process's gradient on the whole batch. tests/test_distributed_and_precision.py runs real ones."""
    import lightning_prompts.utils.distributed as distributed
    from lightning_prompts.callbacks.pseudolabel_selection import pseudolabel_loss
    from lightning_prompts.methods.base.graph import masked_binary_cross_entropy

    torch.manual_seed(0)
    logits = torch.randn(6, 2) * 3
    nan = float("nan")
    targets = torch.tensor([[1.0, nan], [0.0, nan], [nan, nan], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels, pseudo = torch.tensor([1, 0, 1, 1, 0, 1]), torch.tensor([False, False, False, True, True, False])
    losses = {
        "masked_bce": lambda z, rows: masked_binary_cross_entropy(z, targets[rows]),
        "pseudolabel": lambda z, rows: pseudolabel_loss(z, labels[rows], pseudo[rows], gamma=2.0),
    }
    halves = [slice(0, 3), slice(3, 6)]  # process 0 has 2 labels and no pseudolabelled image, process 1 has 6 labels
    expected = {}
    for name, loss_of in losses.items():  # one process, the whole batch
        whole = logits.clone().requires_grad_(True)
        loss_of(whole, slice(None)).backward()
        expected[name] = whole.grad
    for name, loss_of in losses.items():
        averaged = torch.zeros_like(logits)
        for rows in halves:
            counts_of_both = {}

            def all_reduce(count, rows=rows, counts_of_both=counts_of_both, name=name):
                # the collective's sum of each process's count, taken in the order the loss asks for them
                call = len(counts_of_both)
                counts_of_both[call] = count.clone()
                count += _other_half_count(name, call, rows, targets, pseudo)

            monkeypatch.setattr(distributed, "process_count_and_rank", lambda: (2, 0))
            monkeypatch.setattr(distributed.dist, "all_reduce", all_reduce)
            share = logits[rows].clone().requires_grad_(True)
            loss_of(share, rows).backward()
            averaged[rows] += share.grad / 2  # DDP: the mean of the processes' gradients
        torch.testing.assert_close(averaged, expected[name], rtol=1e-5, atol=1e-6, msg=name)


def _other_half_count(name, call, rows, targets, pseudo):
    other = slice(3, 6) if rows.start == 0 else slice(0, 3)
    if name == "masked_bce":
        return (~torch.isnan(targets[other])).sum().float()
    part = ~pseudo[other] if call == 0 else pseudo[other]  # the labelled part's mean is asked for first
    return part.sum().float()


def test_a_training_set_without_shuffling_keeps_its_order_over_processes(monkeypatch):
    """Lightning gives a training loader a shuffling sampler under DDP whatever its ``shuffle``; the data module's
    ``shuffle=False`` now gives each process an unshuffled share (Lightning leaves a DistributedSampler alone)."""
    import lightning_prompts.data.processes as processes
    from lightning_prompts.data.processes import training_shard

    assert training_shard(range(5)) is None  # one process: the loader's own order
    monkeypatch.setattr(processes, "process_count_and_rank", lambda: (2, 1))
    assert list(training_shard(range(5))) == [1, 3, 0]  # every other sample in order, padded as Lightning pads


def test_evaluation_under_ddp_uses_the_first_processs_batchnorm_statistics(monkeypatch):
    """Each DDP process updates its BatchNorm running statistics from its own share of the last training batch
    (IDPT's generator and head: 0.07 apart after a fit); a ``test`` run in the same processes after ``fit`` scored
    each share with other statistics than the checkpoint keeps. Every evaluation epoch now starts by giving every
    process the first process's statistics."""
    import lightning_prompts.utils.distributed as distributed
    from lightning_prompts.methods.base.module import PromptModule

    first, mine = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    first.running_mean.fill_(0.5), first.running_var.fill_(2.0), first.num_batches_tracked.fill_(7)
    sent = dict(zip(("running_mean", "running_var", "num_batches_tracked"), first.buffers()))
    received = []

    def broadcast(tensor, src):  # this process is rank 1: it receives the first process's buffer
        name = next(key for key, value in mine.named_buffers() if value is tensor)
        tensor.copy_(sent[name])
        received.append((name, src))

    monkeypatch.setattr(distributed, "process_count_and_rank", lambda: (2, 1))
    monkeypatch.setattr(distributed.dist, "broadcast", broadcast)
    distributed.share_batchnorm_statistics(torch.nn.Sequential(torch.nn.Linear(3, 3), mine))
    assert [name for name, src in received if src == 0] == ["running_mean", "running_var", "num_batches_tracked"]
    assert all(torch.equal(a, b) for a, b in zip(mine.buffers(), first.buffers()))

    calls = []  # and the evaluation epochs of every method start with it
    monkeypatch.setattr("lightning_prompts.methods.base.module.share_batchnorm_statistics", calls.append)
    module = PromptModule.__new__(PromptModule)
    monkeypatch.setattr(PromptModule, "_evaluator", lambda self: type("E", (), {"start": lambda *a: None})())
    PromptModule.on_validation_epoch_start(module)
    PromptModule.on_test_epoch_start(module)
    assert calls == [module, module]
