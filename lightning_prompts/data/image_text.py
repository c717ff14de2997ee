"""Image–caption pairs for meta-learning prompts (GRAM) from a CSV/TSV/JSONL file.

Each row names an image (a path relative to ``image_root``) and its caption, the form in which web
image–text corpora (CC3M, CC12M, LAION subsets) are usually kept after download::

    image,caption
    00000/000000012.jpg,a dog running on the beach at sunset

An optional ``domain`` column assigns each pair to a domain; without one the meta-learning module
clusters the pairs into domains (:meth:`ImageTextDataModule.assign_domains`). Training batches are
*meta-tasks*: ``batch_size`` pairs from one domain (the support set) followed by ``batch_size`` pairs
from another (the query set); validation batches are plain held-out pairs.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lightning_prompts.batch import CAPTION, IMAGE, INDEX
from lightning_prompts.data.image_datamodule import Synthetic, _synthetic_root
from lightning_prompts.data.images import ImageItem, load_rgb, verify_images
from lightning_prompts.data.processes import evaluation_loader
from lightning_prompts.data.synthetic import classnames_for, write_image
from lightning_prompts.data.text import read_records
from lightning_prompts.data.transforms import build_transform
from lightning_prompts.errors import ConfigurationError, DatasetError
from lightning_prompts.registry import register_datamodule
from lightning_prompts.utils.distributed import process_count_and_rank
from lightning_prompts.utils.resources import resolve_path


class ImageCaptionDataset(Dataset):
    """``{"image", "caption", "index"}`` samples of image–caption pairs."""

    def __init__(self, paths: Sequence[Path], captions: Sequence[str], transform: Any) -> None:
        self.paths, self.captions, self.transform = list(paths), list(captions), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self.transform(load_rgb(self.paths[index]))
        return {IMAGE: torch.as_tensor(image), CAPTION: self.captions[index], INDEX: index}


class CrossDomainTaskSampler(DistributedSampler):
    """Meta-tasks: ``shots`` indices of one domain then ``shots`` of another, drawn with a
    ``random.Random(seed + epoch)`` so every rerun draws the same tasks. Under DDP every rank draws the
    same task list and keeps its own share of it (tasks ``rank, rank + world, …``).

    It is the sampler of a loader over :class:`MetaTasks` (one item per task, ``batch_size=None``), not a batch
    sampler: Lightning then tells it its epoch (``set_epoch``), so a resumed run draws the tasks of the epoch it
    resumes at, and, being a ``DistributedSampler``, keeps it under DDP instead of trying to put one of its own
    into it (which stopped GRAM's meta-training on several devices). Without ``set_epoch`` the epoch counts the
    iterations."""

    def __init__(self, domains: Sequence[int], shots: int, tasks: int, seed: int = 0) -> None:
        world, rank = process_count_and_rank()
        super().__init__(range(max(tasks, world)), num_replicas=world, rank=rank, shuffle=True, seed=seed)
        self.members: dict[int, list[int]] = {}
        for index, domain in enumerate(domains):
            self.members.setdefault(int(domain), []).append(index)
        if len(self.members) < 2:
            raise DatasetError(f"meta-tasks need at least 2 domains, the training pairs have {len(self.members)}.")
        self.shots, self.tasks, self.seed, self.epoch = shots, tasks, seed, 0
        self._epoch_given = False
        self.num_samples = len(self)  # DistributedSampler's own count, as this sampler yields it
        self.total_size = self.num_samples * world

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._epoch_given = int(epoch), True

    def __len__(self) -> int:
        return max(1, self.tasks // process_count_and_rank()[0])

    def _draw(self, rng: random.Random, domain: int) -> list[int]:
        members = self.members[domain]
        if len(members) >= self.shots:
            return rng.sample(members, self.shots)
        return [rng.choice(members) for _ in range(self.shots)]  # small domains: with replacement

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        if not self._epoch_given:
            self.epoch += 1
        names = sorted(self.members)
        world, rank = process_count_and_rank()
        tasks = []
        for _ in range(max(self.tasks, world)):
            support, query = rng.sample(names, 2)
            tasks.append(self._draw(rng, support) + self._draw(rng, query))
        yield from tasks[rank::world][: len(self)]  # the same number of tasks on every rank


class MetaTasks(Dataset):
    """``pairs`` read a task at a time: item ``[i, j, …]`` (a task, as :class:`CrossDomainTaskSampler` yields it) is
    the list of those pairs, which ``collate_pairs`` makes a batch. Its length is the pairs'."""

    def __init__(self, pairs: Dataset) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)  # type: ignore[arg-type]

    def __getitem__(self, task: Sequence[int]) -> list[dict[str, Any]]:
        return [self.pairs[index] for index in task]


def collate_pairs(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        IMAGE: torch.stack([item[IMAGE] for item in items]),
        CAPTION: [item[CAPTION] for item in items],
        INDEX: torch.tensor([item[INDEX] for item in items]),
    }


@register_datamodule()
class ImageTextDataModule(LightningDataModule):
    """Image–caption pairs as meta-tasks (training) and held-out pairs (validation).

    Args:
        train_file: CSV/TSV/JSONL of pairs (``pkg://`` paths work).
        val_file: held-out pairs; without it ``val_fraction`` of ``train_file`` is held out (seeded).
        image_root: the folder image paths are relative to (default: the file's folder).
        image_column, caption_column: column names.
        domain_column: optional column of domain names; otherwise domains are assigned by clustering.
        batch_size: pairs in the support set and in the query set of a meta-task (a batch holds both).
        tasks_per_epoch: meta-tasks per epoch (default: as many as cover the pairs once).
        eval_batch_size: validation batch size (also the number of captions each image is ranked among).
        image_size, normalization: evaluation-style preprocessing (resize + center crop; CLIP mean/std).
        seed: the validation hold-out and the task draws.
        num_workers: data-loading processes.
        synthetic: generate tiny pairs (``num_classes`` colours × ``images_per_class``) instead of reading files.
        verify: check every image header at ``setup``.
    """

    def __init__(
        self,
        train_file: str | Path | None = None,
        val_file: str | Path | None = None,
        image_root: str | Path | None = None,
        image_column: str = "image",
        caption_column: str = "caption",
        domain_column: str | None = None,
        val_fraction: float = 0.05,
        batch_size: int = 32,
        tasks_per_epoch: int | None = None,
        eval_batch_size: int = 64,
        image_size: int = 224,
        normalization: str = "clip",
        seed: int = 0,
        num_workers: int = 0,
        synthetic: Synthetic | dict[str, Any] | None = None,
        verify: bool = True,
    ) -> None:
        super().__init__()
        if train_file is None and synthetic is None:
            raise ValueError("ImageTextDataModule needs train_file (or synthetic).")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
        if batch_size < 2:  # the contrastive loss ranks each pair's caption among the other pairs' captions
            raise ValueError(
                f"batch_size is the pairs of a meta-task's support set and of its query set, each ranked among "
                f"themselves by a contrastive loss: at least 2, got {batch_size}."
            )
        self.train_file, self.val_file = train_file, val_file
        self.image_root = Path(image_root) if image_root is not None else None
        self.columns = (image_column, caption_column, domain_column)
        self.val_fraction, self.batch_size, self.tasks_per_epoch = val_fraction, batch_size, tasks_per_epoch
        self.eval_batch_size, self.image_size, self.normalization = eval_batch_size, image_size, normalization
        self.seed, self.num_workers, self.verify = seed, num_workers, verify
        self.synthetic = Synthetic(**synthetic) if isinstance(synthetic, dict) else synthetic
        self.domains: list[int] | None = None
        self.domain_names: list[str] = []
        self._splits: dict[str, tuple[list[Path], list[str], list[str] | None]] | None = None
        self._datasets: dict[str, ImageCaptionDataset] = {}

    @property
    def classnames(self) -> None:
        """Captions are not classes: nothing to link to the model."""
        return None

    # -- reading ------------------------------------------------------------------------------------
    def _read(self, path: str | Path) -> tuple[list[Path], list[str], list[str] | None]:
        file = resolve_path(path)
        image_column, caption_column, domain_column = self.columns
        columns = [image_column, caption_column] + ([domain_column] if domain_column else [])
        records = read_records(file, columns)
        # generated pairs lie beside their CSV, wherever a recipe's image_root points
        root = file.parent if self.synthetic is not None or self.image_root is None else self.image_root
        paths = [root / record[image_column] for record in records]
        captions = [record[caption_column].strip() for record in records]
        empty = next((number for number, caption in enumerate(captions, 1) if not caption), None)
        if empty is not None:
            raise DatasetError(f"{file}: row {empty} has an empty caption.")
        domains = [record[domain_column] for record in records] if domain_column else None
        return paths, captions, domains

    def splits(self) -> dict[str, tuple[list[Path], list[str], list[str] | None]]:
        """``{"train"|"val": (image paths, captions, domain names or None)}``, read once."""
        if self._splits is None:
            train_file = self.train_file
            if self.synthetic is not None:
                train_file = self._write_synthetic(_synthetic_root(), self.synthetic)
            train = self._read(train_file)
            if self.val_file is not None:
                val = self._read(self.val_file)
            else:
                order = list(range(len(train[0])))
                random.Random(self.seed).shuffle(order)
                held = set(order[: round(len(order) * self.val_fraction)])

                def pick(keep: bool) -> tuple[list[Path], list[str], list[str] | None]:
                    rows = [i for i in range(len(order)) if (i in held) == keep]
                    domains = train[2]
                    return (
                        [train[0][i] for i in rows],
                        [train[1][i] for i in rows],
                        ([domains[i] for i in rows] if domains is not None else None),
                    )

                train, val = pick(False), pick(True)
            if len(train[0]) < 2:
                raise DatasetError(f"{train_file}: meta-learning needs at least 2 training pairs, got {len(train[0])}.")
            self._splits = {"train": train, "val": val}
            if train[2] is not None:
                self.domain_names = sorted(set(train[2]))
                index = {name: i for i, name in enumerate(self.domain_names)}
                self.domains = [index[name] for name in train[2]]
        return self._splits

    def _write_synthetic(self, root: Path, spec: Synthetic) -> Path:
        """Coloured squares captioned with their colour's word (one "domain" per colour)."""
        lines = ["image,caption"]
        for label, name in enumerate(classnames_for(spec.num_classes)):
            for index in range(2 * spec.images_per_class):
                relative = f"images/{label}_{index}.jpg"
                write_image(root / relative, label, index, spec.image_size, spec.seed)
                lines.append(f"{relative},a picture showing a {name} number {index}")
        (root / "pairs.csv").write_text("\n".join(lines) + "\n")
        return root / "pairs.csv"

    def assign_domains(self, domains: Sequence[int]) -> None:
        """Set each training pair's domain (the meta-learner's clustering); one entry per pair."""
        count = len(self.splits()["train"][0])
        if len(domains) != count:
            raise ValueError(f"assign_domains got {len(domains)} domains for {count} training pairs.")
        self.domains = [int(domain) for domain in domains]

    # -- Lightning hooks ----------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        transform = build_transform("clip", self.image_size, self.normalization, train=False)
        for split, (paths, captions, _) in self.splits().items():
            if split not in self._datasets:
                if self.verify:
                    items = [ImageItem(path, -1, caption[:60]) for path, caption in zip(paths, captions)]
                    verify_images(items, f"{type(self).__name__} {split} pairs")
                self._datasets[split] = ImageCaptionDataset(paths, captions, transform)

    def pairs_dataloader(self, split: str = "train") -> DataLoader:
        """All pairs of ``split`` in file order (what the meta-learner clusters)."""
        return self._loader(self._datasets[split], batch_size=self.eval_batch_size)

    def train_dataloader(self) -> DataLoader:
        if self.domains is None:
            raise DatasetError(
                "ImageTextDataModule has no domains: give a domain_column or let the meta-learner assign them."
            )
        if self.trainer is not None and self.trainer.overfit_batches:
            # Lightning would swap the task sampler for a sequential one over single pairs (read as tasks, they fail)
            raise ConfigurationError(
                "ImageTextDataModule draws each training batch as a meta-task (support and query pairs from two "
                "domains) with its own sampler, which trainer.overfit_batches replaces; leave overfit_batches out "
                "(trainer.limit_train_batches and data.init_args.tasks_per_epoch make short epochs)."
            )
        dataset = self._datasets["train"]
        tasks = self.tasks_per_epoch or max(1, len(dataset) // (2 * self.batch_size))
        sampler = CrossDomainTaskSampler(self.domains, self.batch_size, tasks, self.seed)
        return DataLoader(
            MetaTasks(dataset), batch_size=None, sampler=sampler, collate_fn=collate_pairs, num_workers=self.num_workers
        )

    def val_dataloader(self) -> DataLoader:
        dataset = self._datasets["val"] if len(self._datasets["val"]) else self._datasets["train"]
        return evaluation_loader(dataset, self.eval_batch_size, self.num_workers, collate_fn=collate_pairs)

    def _loader(self, dataset: Dataset, batch_size: int | None = None) -> DataLoader:
        """Every pair in order, in every process (a pass over a whole split, such as the domain assignment's)."""
        return DataLoader(
            dataset,
            batch_size=batch_size or self.eval_batch_size,
            shuffle=False,
            collate_fn=collate_pairs,
            num_workers=self.num_workers,
        )
