"""Class-incremental task streams for continual learning (LAE, L2P, DualPrompt, CODA-Prompt).

The classes, in a fixed order, are cut into ``num_tasks`` equal tasks; one ``fit`` runs them all,
``epochs_per_task`` epochs each (the Trainer needs ``max_epochs = num_tasks · epochs_per_task`` and
``reload_dataloaders_every_n_epochs: 1``). In task ``t`` the training batches hold only task ``t``'s
classes; validation holds the test images of every class seen so far (tasks ``0..t``), with their
task in ``batch["task"]``. Labels are positions in the class order, so task ``t`` owns labels
``t·k .. (t+1)·k − 1``.

Datasets, read from local folders as the official code's loaders expect them:

* ``cifar100``: the python version, ``<root>/cifar-100-python/{train,test,meta}`` (pickles, read with
  an allow-list of numpy's array globals only, so the files cannot run code);
* ``imagenet_r``: ``<root>/imagenet-r/{train_list,val_list}.txt`` with ``<path> <label>`` lines,
  paths relative to ``<root>/imagenet-r/`` — the L2P split (80 % / 20 % of ImageNet-R) LAE publishes;
  class names from the WordNet ids in the paths;
* ``image_folder``: your own images, ``<root>/train/<class>/*`` and ``<root>/test/<class>/*`` (classes sorted by
  folder name, ``_`` read as a space; the offline continual testbed writes Fashion-MNIST this way).

``class_order`` is ``null`` (sorted labels, LAE's first order) or an explicit permutation (LAE's
second and third orders are lists in its configs).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from lightning_prompts.batch import IMAGE, INDEX, LABEL, TASK
from lightning_prompts.data.image_datamodule import Synthetic
from lightning_prompts.data.images import IMAGE_SUFFIXES, ImageItem, load_rgb, verify_images
from lightning_prompts.data.processes import drops_last, evaluation_loader
from lightning_prompts.data.synthetic import classnames_for
from lightning_prompts.data.transforms import build_transform
from lightning_prompts.errors import DatasetError
from lightning_prompts.registry import register_datamodule
from lightning_prompts.utils.safe_pickle import load_cifar_pickle


class StreamDataset(Dataset):
    """``{"image", "label", "task", "index"}`` samples from image files or a uint8 ``(N, H, W, 3)`` array."""

    def __init__(
        self, images: Sequence[Path] | np.ndarray, labels: Sequence[int], tasks: Sequence[int], transform: Any
    ):
        self.images, self.labels, self.tasks, self.transform = images, list(labels), list(tasks), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from PIL import Image

        source = self.images[index]
        image = Image.fromarray(source) if isinstance(source, np.ndarray) else load_rgb(source)
        return {
            IMAGE: torch.as_tensor(self.transform(image)),
            LABEL: self.labels[index],
            TASK: self.tasks[index],
            INDEX: index,
        }


@register_datamodule()
class ClassIncrementalDataModule(LightningDataModule):
    """A class-incremental stream (see the module docstring).

    Args:
        dataset: ``"cifar100"`` or ``"imagenet_r"``.
        root: the folder holding ``cifar-100-python/`` or ``imagenet-r/``.
        num_tasks: tasks the classes are cut into (LAE: 10).
        epochs_per_task: training epochs per task (LAE: 5 for CIFAR-100, 50 for ImageNet-R).
        class_order: ``None`` (sorted) or a permutation of the dataset's labels.
        batch_size, eval_batch_size, num_workers: loaders (LAE: batch 24, drop_last).
        drop_last: drop each epoch's last partial training batch where every process has a full one (LAE's
            config); ``False`` trains on every image (MULTI-LANE's: at batch 1024 on CIFAR-100 dropping it
            skips 904 of each task's 5,000 images, 4 steps an epoch instead of 5).
        image_size, augmentation, normalization: preprocessing (LAE: 224, ``lae``, ``none``).
        synthetic: generate a tiny stream in memory (``num_classes``, ``images_per_class`` per split).
        verify: check every image file's header at ``setup`` (ImageNet-R).
    """

    def __init__(
        self,
        dataset: Literal["cifar100", "imagenet_r", "image_folder"] = "cifar100",
        root: str | Path = "data",
        num_tasks: int = 10,
        epochs_per_task: int = 5,
        class_order: Sequence[int] | None = None,
        batch_size: int = 24,
        eval_batch_size: int = 100,
        num_workers: int = 0,
        drop_last: bool = True,
        image_size: int = 224,
        augmentation: str = "lae",
        normalization: str = "none",
        synthetic: Synthetic | dict[str, Any] | None = None,
        verify: bool = True,
    ) -> None:
        super().__init__()
        if dataset not in ("cifar100", "imagenet_r", "image_folder"):
            raise ValueError(f"dataset must be 'cifar100', 'imagenet_r' or 'image_folder', got {dataset!r}.")
        if num_tasks < 1 or epochs_per_task < 1:
            raise ValueError(f"num_tasks and epochs_per_task must be positive, got {num_tasks}, {epochs_per_task}.")
        self.dataset, self.root = dataset, Path(root)
        self.num_tasks, self.epochs_per_task = num_tasks, epochs_per_task
        self.requested_order = list(class_order) if class_order is not None else None
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.drop_last = drop_last
        self.image_size, self.augmentation, self.normalization = image_size, augmentation, normalization
        self.synthetic = Synthetic(**synthetic) if isinstance(synthetic, dict) else synthetic
        self.verify = verify
        self._data: dict[str, Any] | None = None
        self._datasets: dict[str, StreamDataset] = {}

    # -- reading ------------------------------------------------------------------------------------
    def _read_cifar100(self, folder: Path) -> dict[str, Any]:
        base = folder / "cifar-100-python"
        splits = {}
        for split in ("train", "test"):
            path = base / split
            if not path.is_file():
                raise DatasetError(
                    f"CIFAR-100: {path} does not exist (expected the python version, cifar-100-python/)."
                )
            content = load_cifar_pickle(path)
            images = np.asarray(content["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            splits[split] = (images, [int(label) for label in content["fine_labels"]])
        meta = base / "meta"
        if not meta.is_file():
            raise DatasetError(f"CIFAR-100: {meta} does not exist.")
        names = [name.replace("_", " ") for name in load_cifar_pickle(meta)["fine_label_names"]]
        return {"names": names, **splits}

    def _read_imagenet_r(self, folder: Path) -> dict[str, Any]:
        base = folder / "imagenet-r"
        splits: dict[str, Any] = {}
        wnids: dict[int, str] = {}
        for split, file in (("train", "train_list.txt"), ("test", "val_list.txt")):
            path = base / file
            if not path.is_file():
                raise DatasetError(f"ImageNet-R: {path} does not exist (LAE's L2P split lists: <path> <label> lines).")
            paths, labels = [], []
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                parts = line.rsplit(" ", 1)
                if len(parts) != 2 or not parts[1].strip().lstrip("-").isdigit():
                    raise DatasetError(f"{path}: line {number} is not '<path> <label>': {line!r}.")
                paths.append(base / parts[0])
                labels.append(int(parts[1]))
                wnids.setdefault(labels[-1], Path(parts[0]).parent.name)
            splits[split] = (paths, labels)
        count = max(wnids) + 1
        return {"names": _wordnet_names([wnids.get(label, str(label)) for label in range(count)]), **splits}

    def _read_image_folder(self, folder: Path) -> dict[str, Any]:
        """``<root>/train/<class>/*`` and ``<root>/test/<class>/*``; classes sorted by folder name, the same in
        both splits."""
        splits: dict[str, Any] = {}
        names: list[str] | None = None
        for split in ("train", "test"):
            base = folder / split
            if not base.is_dir():
                raise DatasetError(f"image_folder stream: {base} does not exist (expected <root>/{split}/<class>/).")
            classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
            if names is not None and classes != names:
                raise DatasetError(f"image_folder stream: {folder}/train and {folder}/test hold different classes.")
            names = classes
            paths, labels = [], []
            for label, name in enumerate(classes):
                found = [p for p in sorted((base / name).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
                if not found:
                    raise DatasetError(f"image_folder stream: class folder {base / name} holds no images.")
                paths += found
                labels += [label] * len(found)
            splits[split] = (paths, labels)
        return {"names": [name.replace("_", " ") for name in names or []], **splits}

    def _write_synthetic(self, spec: Synthetic) -> dict[str, Any]:
        rng = np.random.default_rng(spec.seed)
        splits = {}
        for split in ("train", "test"):
            images, labels = [], []
            for label in range(spec.num_classes):
                colour = np.array([(label * 67) % 256, (label * 131 + 40) % 256, (label * 197 + 80) % 256])
                for _ in range(spec.images_per_class):
                    noise = rng.normal(0, 30, size=(spec.image_size, spec.image_size, 3))
                    images.append(np.clip(colour + noise, 0, 255).astype(np.uint8))
                    labels.append(label)
            splits[split] = (np.stack(images), labels)
        return {"names": classnames_for(spec.num_classes), **splits}

    def data(self) -> dict[str, Any]:
        """``{"names", "order", "train", "test"}``, read once and checked."""
        if self._data is None:
            if self.synthetic is not None:  # generated in memory, not on disk
                data = self._write_synthetic(self.synthetic)
            elif self.dataset == "cifar100":
                data = self._read_cifar100(self.root)
            elif self.dataset == "imagenet_r":
                data = self._read_imagenet_r(self.root)
            else:
                data = self._read_image_folder(self.root)
            count = len(data["names"])
            order = self.requested_order if self.requested_order is not None else list(range(count))
            if sorted(order) != list(range(count)):
                raise DatasetError(f"class_order must be a permutation of the {count} labels 0..{count - 1}.")
            if count % self.num_tasks:
                raise DatasetError(f"{count} classes cannot be cut into {self.num_tasks} equal tasks.")
            for split in ("train", "test"):
                unknown = sorted({label for label in data[split][1] if not 0 <= label < count})
                if unknown:
                    raise DatasetError(f"{self.dataset} {split} split has labels {unknown[:5]} outside 0..{count - 1}.")
            data["order"] = order
            self._data = data
        return self._data

    # -- the stream ---------------------------------------------------------------------------------
    @property
    def classnames(self) -> list[str]:
        """All class names in stream order (the label of ``classnames[i]`` is ``i``)."""
        data = self.data()
        return [data["names"][label] for label in data["order"]]

    @property
    def classes_per_task(self) -> int:
        return len(self.data()["order"]) // self.num_tasks

    @property
    def batch_keys(self) -> frozenset[str]:
        return frozenset({TASK, INDEX})

    def default_evaluator(self) -> Any:
        """The continual protocol (A_t, average incremental accuracy, forgetting)."""
        from lightning_prompts.evaluation.continual import ContinualEvaluator

        return ContinualEvaluator()

    def task_of_epoch(self, epoch: int) -> int:
        """The task trained in (0-based) ``epoch``."""
        return min(epoch // self.epochs_per_task, self.num_tasks - 1)

    def _subset(self, split: str, tasks: Sequence[int], train: bool) -> StreamDataset:
        data = self.data()
        position = {label: i for i, label in enumerate(data["order"])}
        images, labels = data[split]
        per_task = self.classes_per_task
        keep = [i for i, label in enumerate(labels) if position[label] // per_task in set(tasks)]
        chosen = images[keep] if isinstance(images, np.ndarray) else [images[i] for i in keep]
        new_labels = [position[labels[i]] for i in keep]
        transform = build_transform(self.augmentation, self.image_size, self.normalization, train=train)
        return StreamDataset(chosen, new_labels, [label // per_task for label in new_labels], transform)

    def setup(self, stage: str) -> None:
        data = self.data()
        if self.verify and self.synthetic is None and self.dataset in ("imagenet_r", "image_folder"):
            for split in ("train", "test"):
                paths, labels = data[split]
                items = [ImageItem(path, label, data["names"][label]) for path, label in zip(paths, labels)]
                verify_images(items, f"{self.dataset} {split} split")

    def _current_task(self) -> int:
        return current_stream_task(self)

    def train_dataloader(self) -> DataLoader:
        dataset = self._subset("train", [self._current_task()], train=True)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=self.drop_last and drops_last(len(dataset), self.batch_size, self.trainer),
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(range(self._current_task() + 1))

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(range(self.num_tasks))

    def predict_dataloader(self) -> DataLoader:
        """The test images of every task (as ``test``)."""
        return self.test_dataloader()

    def _eval_loader(self, tasks: Sequence[int]) -> DataLoader:
        dataset = self._subset("test", list(tasks), train=False)
        return evaluation_loader(dataset, self.eval_batch_size, self.num_workers)


def _wordnet_names(wnids: Sequence[str]) -> list[str]:
    """Readable names for ImageNet WordNet ids (timm ships the table); unknown ids stay as they are."""
    try:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
    except ImportError:
        return list(wnids)
    names = []
    for wnid in wnids:
        try:
            names.append(info.label_name_to_description(wnid).split(",")[0])
        except (KeyError, ValueError):
            names.append(wnid)
    return names


def current_stream_task(stream: Any) -> int:
    """The task a stream data module serves now: its schedule's task of the trainer's epoch (0 before a trainer)."""
    trainer = getattr(stream, "trainer", None)
    return stream.task_of_epoch(trainer.current_epoch) if trainer is not None else 0
