"""How the data modules' loaders split a set over several processes (DDP).

Lightning gives every loader a ``DistributedSampler`` under DDP. For training that is what we want, but its
evaluation sets are padded with repeats to a multiple of the process count, so a 9-image test set was scored
as 10 images (accuracy, F1, AUROC, mAP all counted the repeats). :func:`evaluation_sampler` gives the evaluation
loaders a sampler of our own instead: process ``r`` of ``W`` takes samples ``r, r + W, r + 2W, …``, every sample
on exactly one process. Lightning leaves a loader alone that already has a ``DistributedSampler``.

:func:`drops_last` decides the training loaders' ``drop_last`` on what each process gets, not on the whole set:
6 images in batches of 4 are one full batch for one process, but 3 images each for two, and dropping the
partial batch there left no training step at all.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized
from typing import Any

from torch.utils.data import DataLoader, DistributedSampler

from lightning_prompts.utils.distributed import process_count_and_rank


class EvaluationShard(DistributedSampler):
    """Samples ``rank, rank + W, …`` of a dataset in order: each sample on exactly one of ``W`` processes, no
    repeats. The processes may get one sample more or less than each other, which evaluation allows (metrics
    gather their states across processes at the end of the epoch)."""

    def __init__(self, dataset: Sized, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)  # type: ignore[arg-type]
        self.num_samples = len(range(rank, len(dataset), num_replicas))
        self.total_size = len(dataset)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


def evaluation_sampler(dataset: Sized) -> EvaluationShard | None:
    """The sampler for an evaluation loader: an :class:`EvaluationShard` under several processes, ``None`` (the
    loader's own order) in one. A set smaller than the process count keeps Lightning's padded sampler: a
    process without a single batch would leave the others waiting in the model's first forward pass (DDP
    synchronises buffers there), and a one-item set (a node task's whole graph) repeated on every process
    scores as itself."""
    processes, rank = process_count_and_rank()
    if processes == 1 or len(dataset) < processes:
        return None
    return EvaluationShard(dataset, processes, rank)


def evaluation_loader(dataset: Any, batch_size: int, num_workers: int = 0, **options: Any) -> DataLoader:
    """A validation, test or predict loader: in order, each sample on one process (:func:`evaluation_sampler`)."""
    return DataLoader(
        dataset, batch_size=batch_size, sampler=evaluation_sampler(dataset), num_workers=num_workers, **options
    )


def drops_last(dataset_size: int, batch_size: int, trainer: Any | None = None) -> bool:
    """Dassl's rule, per process: drop the last partial batch only when each process has at least one full
    batch (Lightning pads every process's share to ``ceil(N / W)``)."""
    processes = getattr(trainer, "world_size", None) or process_count_and_rank()[0]
    return math.ceil(dataset_size / processes) >= batch_size


def training_shard(dataset: Sized) -> DistributedSampler | None:
    """Under several processes, an unshuffled share of a training set that asked for no shuffling
    (``shuffle=False``): Lightning replaces a training loader's sampler with a shuffling one otherwise, and leaves
    a ``DistributedSampler`` alone. ``None`` in one process."""
    processes, rank = process_count_and_rank()
    if processes == 1:
        return None
    return DistributedSampler(dataset, num_replicas=processes, rank=rank, shuffle=False)  # type: ignore[arg-type]
