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


def test_predictions_of_several_processes_are_put_back_in_data_order(monkeypatch):
    """Rows that are samples interleave back (process r predicted samples r, r + W, …); a node task's one graph,
    predicted by one process as a row per node, is written as that process predicted it (interleaving it failed)."""
    import pytest

    import lightning_prompts.lightning_cli as lightning_cli

    def gathering(*shares):
        def all_gather_object(output, mine):
            output[:] = list(shares)

        monkeypatch.setattr(torch.distributed, "all_gather_object", all_gather_object)

    samples = torch.arange(5.0).unsqueeze(1)  # 5 images, one row each: process 0 has 0, 2, 4 and process 1 has 1, 3
    gathering({"logits": samples[0::2]}, {"logits": samples[1::2]})
    assert torch.equal(lightning_cli._gathered_in_data_order({}, 2, {"": 5})["logits"], samples)

    nodes = torch.arange(7.0).unsqueeze(1)  # one graph of 7 nodes, all on process 0
    gathering({"logits": nodes}, {})
    assert torch.equal(lightning_cli._gathered_in_data_order({}, 2, {"": 1})["logits"], nodes)

    gathering({"logits": nodes[:4]}, {"logits": nodes[4:]})  # two graphs of 4 and 3 nodes: not a row per sample
    with pytest.warns(UserWarning, match="written in process order"):
        assert torch.equal(lightning_cli._gathered_in_data_order({}, 2, {"": 2})["logits"], nodes)


def test_each_validation_loader_logs_its_own_mean(tiny_clip, trainer_kwargs):
    """One metric per name mixed the loaders: loader 1's ``val/loss`` was the mean over both."""
    from helpers import synthetic_fewshot
    from lightning.pytorch import LightningDataModule, Trainer

    from lightning_prompts.methods import CoOp

    data = synthetic_fewshot(augmentation="vtab")
    data.setup("fit")
    data.setup("test")

    class Loaders(LightningDataModule):
        def __init__(self, *loaders):
            super().__init__()
            self.loaders = list(loaders)

        def val_dataloader(self):
            return self.loaders

    torch.manual_seed(0)
    method = CoOp(tiny_clip, data.classnames, n_ctx=4, init_std=1.0)
    validate = Trainer(**trainer_kwargs).validate
    validation, test = data.val_dataloader(), data.test_dataloader()[0]
    first = validate(method, Loaders(validation), verbose=False)[0]["val/loss"]
    second = validate(method, Loaders(test), verbose=False)[0]["val/loss"]
    assert first != pytest.approx(second)
    both = validate(method, Loaders(validation, test), verbose=False)
    assert both[0]["val/loss/dataloader_idx_0"] == pytest.approx(first)
    assert both[1]["val/loss/dataloader_idx_1"] == pytest.approx(second)
