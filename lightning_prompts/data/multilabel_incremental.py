"""Multi-label class-incremental streams (MULTI-LANE's and KRT's protocol) from PASCAL VOC 2007 and MS-COCO 2014.

The classes, in label order, are cut into a base task of ``base_classes`` and ``num_tasks − 1`` equal increments:
VOC B0-C4 is ``base_classes: 4, num_tasks: 5``, B10-C2 ``10, 6``; COCO B0-C10 ``10, 8``, B40-C10 ``40, 5``. One
``fit`` runs the stream, ``epochs_per_task`` epochs per task (``max_epochs = num_tasks · epochs_per_task``,
``reload_dataloaders_every_n_epochs: 1``). Task ``t`` trains on the images that contain any of its classes, with
their full multi-hot labels (the method sees only the current task's columns); validation after task ``t`` holds
the test images that contain any seen class; test holds every test image with any class. Batches are
``{"image", "label"}`` with ``label`` ``(B, C)`` multi-hot.

Read from local folders in the layouts the official loaders expect:

* ``voc``: ``<root>/VOCdevkit/VOC2007/`` with ``ImageSets/Main/<class>_{trainval,test}.txt`` (``<id> <1|0|-1>``
  lines; only ``1`` is a positive, ``0`` — difficult — is not) and ``JPEGImages/<id>.jpg``; classes sorted by name;
* ``coco``: ``<root>/coco/annotations/instances_{train,val}2014.json`` and the images under
  ``<root>/coco/{train,val}/<file_name>``; classes are the category names sorted, an image's labels the set of
  its annotations' categories. Annotation files are JSON (no code runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from lightning_prompts.batch import IMAGE, INDEX, LABEL
from lightning_prompts.data.class_incremental import current_stream_task
from lightning_prompts.data.images import load_rgb
from lightning_prompts.data.processes import evaluation_loader
from lightning_prompts.data.synthetic import classnames_for
from lightning_prompts.data.transforms import build_transform
from lightning_prompts.errors import DatasetError
from lightning_prompts.registry import register_datamodule
from lightning_prompts.utils.json_files import read_json


@dataclass
class SyntheticMultiLabel:
    """A generated multi-label set: each image is split into vertical stripes, one colour per present class."""

    num_classes: int = 6
    train_images: int = 24
    test_images: int = 12
    image_size: int = 32
    max_labels: int = 2
    seed: int = 0


class MultiLabelImages(Dataset):
    """``{"image", "label", "index"}`` samples from image files or a uint8 ``(N, H, W, 3)`` array."""

    def __init__(self, images: Sequence[Path] | np.ndarray, labels: list[list[int]], num_classes: int, transform: Any):
        self.images, self.labels, self.num_classes, self.transform = images, labels, num_classes, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from PIL import Image

        source = self.images[index]
        image = Image.fromarray(source) if isinstance(source, np.ndarray) else load_rgb(source)
        target = torch.zeros(self.num_classes, dtype=torch.long)
        target[self.labels[index]] = 1
        return {IMAGE: torch.as_tensor(self.transform(image)), LABEL: target, INDEX: index}


def read_voc(root: Path, split: str) -> tuple[list[str], list[Path], list[list[int]]]:
    """Class names, image paths and label lists of VOC 2007 ``split`` (``trainval`` or ``test``)."""
    folder = root / "VOCdevkit" / "VOC2007"
    main = folder / "ImageSets" / "Main"
    if not main.is_dir():
        raise DatasetError(f"VOC 2007 not found: {main} is missing (expected <root>/VOCdevkit/VOC2007/).")
    files = sorted(p for p in main.glob(f"*_{split}.txt"))
    names = sorted(p.name[: -len(f"_{split}.txt")] for p in files)
    if not names:
        raise DatasetError(f"no ImageSets/Main/<class>_{split}.txt files under {main}.")
    index: dict[str, int] = {}
    labels: list[list[int]] = []
    for path in files:  # the official order: files sorted, images numbered as first seen
        label = names.index(path.name[: -len(f"_{split}.txt")])
        for number, line in enumerate(path.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("1", "0", "-1"):
                raise DatasetError(f"{path}:{number}: expected '<image id> <1|0|-1>', got {line!r}.")
            if parts[0] not in index:
                index[parts[0]] = len(labels)
                labels.append([])
            if parts[1] == "1":
                labels[index[parts[0]]].append(label)
    paths = [folder / "JPEGImages" / f"{image_id}.jpg" for image_id in index]
    return names, paths, labels


def read_coco(root: Path, split: str) -> tuple[list[str], list[Path], list[list[int]]]:
    """Class names (sorted category names), image paths and label lists of COCO 2014 ``split`` (train or val)."""
    path = root / "coco" / "annotations" / f"instances_{split}2014.json"
    if not path.is_file():
        raise DatasetError(f"COCO annotations not found: {path}.")
    content = read_json(path, "COCO instances file")
    try:
        categories = {int(c["id"]): str(c["name"]) for c in content["categories"]}
        images = [(int(image["id"]), str(image["file_name"])) for image in content["images"]]
        annotations = [(int(a["image_id"]), int(a["category_id"])) for a in content["annotations"]]
    except (ValueError, KeyError, TypeError) as error:
        raise DatasetError(f"{path} is not a COCO instances file: {error}") from None
    names = sorted(set(categories.values()))
    position = {image_id: i for i, (image_id, _) in enumerate(images)}
    labels: list[set[int]] = [set() for _ in images]
    for image_id, category in annotations:
        if image_id not in position or category not in categories:
            raise DatasetError(f"{path}: an annotation names image {image_id} or category {category}, not listed.")
        labels[position[image_id]].add(names.index(categories[category]))
    paths = [root / "coco" / split / name for _, name in images]
    return names, paths, [sorted(s) for s in labels]


@register_datamodule()
class MultiLabelIncrementalDataModule(LightningDataModule):
    """A multi-label class-incremental stream (see the module docstring).

    Args:
        dataset: ``"voc"`` or ``"coco"``.
        root: the folder holding ``VOCdevkit/`` or ``coco/``.
        base_classes: classes of the first task.
        num_tasks: tasks (the base task and equal increments).
        epochs_per_task: epochs of each task.
        batch_size, eval_batch_size, num_workers: loaders (the official evaluation batch is 24).
        image_size, augmentation, normalization: see :func:`~lightning_prompts.data.transforms.build_transform`
            (``multi_lane`` and ``none``: MULTI-LANE's pipeline).
        synthetic: a generated set instead of files (tests, tiny overlays, the testbed).
    """

    def __init__(
        self,
        dataset: Literal["voc", "coco"] = "voc",
        root: str | Path = "data",
        base_classes: int = 4,
        num_tasks: int = 5,
        epochs_per_task: int = 30,
        batch_size: int = 256,
        eval_batch_size: int = 24,
        num_workers: int = 0,
        image_size: int = 224,
        augmentation: str = "multi_lane",
        normalization: str = "none",
        synthetic: SyntheticMultiLabel | dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if dataset not in ("voc", "coco"):
            raise ValueError(f"dataset must be 'voc' or 'coco', got {dataset!r}.")
        if num_tasks < 1 or epochs_per_task < 1 or base_classes < 1:
            raise ValueError("num_tasks, epochs_per_task and base_classes must be positive.")
        self.dataset, self.root = dataset, Path(root)
        self.base_classes, self.num_tasks, self.epochs_per_task = base_classes, num_tasks, epochs_per_task
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.image_size, self.augmentation, self.normalization = image_size, augmentation, normalization
        self.synthetic = SyntheticMultiLabel(**synthetic) if isinstance(synthetic, dict) else synthetic
        self._data: dict[str, Any] | None = None

    # -- reading ------------------------------------------------------------------------------------
    def _generate(self, spec: SyntheticMultiLabel) -> dict[str, Any]:
        rng = np.random.default_rng(spec.seed)
        colours = [
            np.array([(c * 67) % 256, (c * 131 + 40) % 256, (c * 197 + 80) % 256]) for c in range(spec.num_classes)
        ]
        data: dict[str, Any] = {"names": classnames_for(spec.num_classes)}
        for split, count in (("train", spec.train_images), ("test", spec.test_images)):
            images, labels = [], []
            for index in range(count):
                present = sorted({index % spec.num_classes, *rng.choice(spec.num_classes, spec.max_labels - 1)})
                stripes = np.array_split(np.arange(spec.image_size), len(present))
                image = rng.normal(0, 20, size=(spec.image_size, spec.image_size, 3))
                for label, columns in zip(present, stripes):
                    image[:, columns] += colours[label]
                images.append(np.clip(image, 0, 255).astype(np.uint8))
                labels.append([int(label) for label in present])
            data[split] = (np.stack(images), labels)
        return data

    def data(self) -> dict[str, Any]:
        """``{"names", "train", "test"}`` (images and label lists), read once and checked."""
        if self._data is None:
            if self.synthetic is not None:
                data = self._generate(self.synthetic)
            else:
                reader, splits = (
                    (read_voc, ("trainval", "test")) if self.dataset == "voc" else (read_coco, ("train", "val"))
                )
                names, train_paths, train_labels = reader(self.root, splits[0])
                test_names, test_paths, test_labels = reader(self.root, splits[1])
                if test_names != names:
                    raise DatasetError(
                        f"{self.dataset}: the {splits[0]} and {splits[1]} splits name different classes."
                    )
                data = {"names": names, "train": (train_paths, train_labels), "test": (test_paths, test_labels)}
            count = len(data["names"])
            increments = count - self.base_classes
            if self.num_tasks > 1 and (increments <= 0 or increments % (self.num_tasks - 1)):
                raise DatasetError(
                    f"{count} classes cannot be cut into a base task of {self.base_classes} and "
                    f"{self.num_tasks - 1} equal increments."
                )
            self._data = data
        return self._data

    # -- the stream ---------------------------------------------------------------------------------
    multi_label = True

    @property
    def classnames(self) -> list[str]:
        return list(self.data()["names"])

    @property
    def classes_per_task(self) -> list[int]:
        """Classes of each task: the base task, then equal increments."""
        count = len(self.data()["names"])
        if self.num_tasks == 1:
            return [count]
        step = (count - self.base_classes) // (self.num_tasks - 1)
        return [self.base_classes] + [step] * (self.num_tasks - 1)

    def seen_classes(self, task: int) -> int:
        """Classes of tasks ``0..task`` (they are the first labels)."""
        return sum(self.classes_per_task[: task + 1])

    @property
    def batch_keys(self) -> frozenset[str]:
        return frozenset({INDEX})

    def default_evaluator(self) -> Any:
        from lightning_prompts.evaluation.multilabel_continual import MultiLabelContinualEvaluator

        return MultiLabelContinualEvaluator()

    def task_of_epoch(self, epoch: int) -> int:
        return min(epoch // self.epochs_per_task, self.num_tasks - 1)

    def _subset(self, split: str, first: int, last: int, train: bool) -> MultiLabelImages:
        """Images with any class in ``[first, last)``, with all their labels."""
        images, labels = self.data()[split]
        keep = [i for i, present in enumerate(labels) if any(first <= c < last for c in present)]
        chosen = images[keep] if isinstance(images, np.ndarray) else [images[i] for i in keep]
        transform = build_transform(self.augmentation, self.image_size, self.normalization, train=train)
        return MultiLabelImages(chosen, [labels[i] for i in keep], len(self.data()["names"]), transform)

    def _current_task(self) -> int:
        return current_stream_task(self)

    def train_dataloader(self) -> DataLoader:
        task = self._current_task()
        dataset = self._subset("train", self.seen_classes(task - 1) if task else 0, self.seen_classes(task), True)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.seen_classes(self._current_task()))

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.seen_classes(self.num_tasks - 1))

    def predict_dataloader(self) -> DataLoader:
        """The test images of every task (as ``test``)."""
        return self.test_dataloader()

    def _eval_loader(self, seen: int) -> DataLoader:
        dataset = self._subset("test", 0, seen, train=False)
        return evaluation_loader(dataset, self.eval_batch_size, self.num_workers)
