"""ELEVATER's own downloaded format (vision-datasets' "iris" image classification), single- and multi-label.

A dataset as ELEVATER's toolkit downloads it (``vision_benchmark/resources/datasets/vision_datasets.json``) is a
folder holding a label map (``labels.txt``: one class name per line, in label order) and one index file per
split, each line ``<image> <label>[,<label>…]``: the image a path relative to the folder or
``<archive>.zip@<member>`` (read from the archive, never extracted), the labels 0-based. VOC 2007 classification,
ELEVATER's multi-label dataset, names its splits ``train_ic.txt``, ``val_ic.txt`` and ``test_ic.txt``; most others
``train.txt``, ``val.txt`` (or ``valid.txt``) and ``test.txt``.

The datasets ELEVATER ships as COCO manifests instead (``resisc45_clip``, ``kitti-distance``, ``hateful-memes``,
``imagenet-1k``: ``train.json``, ``val.json``, ``test.json``) are read when an index file name ends in ``.json``:
``images`` (``id``, ``file_name``, optional ``zip_file``), ``annotations`` (``image_id``, ``category_id``) and
``categories`` (``id``, ``name``; class order is by ``id``, the label map file is not read). JSON runs no code;
image URLs are refused (nothing is downloaded).

Few-shot training sets are drawn as vision-datasets' few-shot sampler draws them: the images in index order,
shuffled by Python's ``random.Random(seed)``, each taken while one of its classes still lacks ``shots`` images
(single-label: exactly ``shots`` per class; multi-label: at least ``shots`` per class).

Validation follows MVLPT's use of the toolkit (``construct_dataloader`` and ``get_dataloader`` in
``trainers/vision_benchmark/evaluation/feature.py``): it holds out 20% of the (few-shot) training set and trains on
the rest — per class the first ``ceil(0.2 · n)`` images in the draw's order; for multi-label data, repeatedly the
first image of the first class still short of its ``ceil(0.2 · n)``; with one shot, training and validation are the
same images. The dataset's own validation index is not used by that code (``validation: "index"`` reads it
instead). Images are resized straight to size × size (bicubic) for training and evaluation alike, with no crop and
no augmentation (``augmentation: "elevater"``: the toolkit with ``CENTER_CROP: False``, MVLPT's setting).

Batches are ``{"image", "label"}``; for multi-label data ``label`` is a multi-hot float ``(B, C)``, which the
CLIP methods train on with MVLPT's objective (cross-entropy against the uniform distribution over an image's
classes) and :class:`~lightning_prompts.evaluation.MultiLabelEvaluator` scores with ELEVATER's 11-point mAP.
Every index line, label and image reference is checked at ``setup``, and every image the run reads is decoded
once; a reference that leaves the dataset folder (absolute, ``..``) is refused.
"""

from __future__ import annotations

import io
import math
import os
import random
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from lightning_prompts.batch import IMAGE, LABEL
from lightning_prompts.data.arguments import check_shots
from lightning_prompts.data.image_datamodule import Synthetic, _synthetic_root
from lightning_prompts.data.images import ImageItem, decode_fully, load_rgb, verify_images
from lightning_prompts.data.processes import evaluation_loader
from lightning_prompts.data.synthetic import classnames_for
from lightning_prompts.data.transforms import Augmentation, build_transform
from lightning_prompts.errors import DatasetError
from lightning_prompts.registry import register_datamodule
from lightning_prompts.utils.json_files import read_json


@dataclass(frozen=True)
class IndexEntry:
    """One line of an index file: the image reference and its labels."""

    image: str
    labels: tuple[int, ...]

    @property
    def archive_member(self) -> tuple[str, str] | None:
        """``(archive, member)`` for an ``<archive>.zip@<member>`` reference, else ``None`` (a plain file)."""
        archive, at, member = self.image.partition("@")
        return (archive, member) if at else None


def read_labelmap(path: Path) -> list[str]:
    """Class names, one per non-empty line, in label order."""
    if not path.is_file():
        raise DatasetError(f"ELEVATER label map {path} does not exist.")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise DatasetError(f"{path}: a label map needs at least two distinct class names, got {names[:5]}.")
    return names


def read_index(path: Path, num_classes: int) -> list[IndexEntry]:
    """The entries of an iris index file (``<image> <label>[,<label>…]`` per line), checked."""
    if not path.is_file():
        raise DatasetError(f"ELEVATER index file {path} does not exist.")
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        image, _, labels = line.strip().rpartition(" ")  # image paths may contain spaces; labels do not
        try:
            values = tuple(int(value) for value in labels.split(","))
        except ValueError:
            values = ()
        if not image or not values or any(not 0 <= value < num_classes for value in values):
            raise DatasetError(
                f"{path}:{number}: expected '<image> <label>[,<label>...]' with labels in 0..{num_classes - 1}, "
                f"got {line.strip()[:120]!r}."
            )
        image = image.replace("\\", "/")  # index files written on Windows (vision-datasets accepts both)
        check_reference(image, f"{path}:{number}")
        entries.append(IndexEntry(image, tuple(sorted(set(values)))))
    if not entries:
        raise DatasetError(f"ELEVATER index file {path} lists no image.")
    return entries


def read_coco_manifest(path: Path) -> tuple[list[str], list[IndexEntry]]:
    """Class names (by category id) and the entries of a vision-datasets COCO classification manifest, checked."""
    manifest = read_json(path, "ELEVATER manifest")
    try:
        categories = sorted((int(c["id"]), str(c["name"])) for c in manifest["categories"])
        images = [(int(i["id"]), str(i["file_name"]), i.get("zip_file")) for i in manifest["images"]]
        annotations = [(int(a["image_id"]), int(a["category_id"])) for a in manifest["annotations"]]
    except (ValueError, KeyError, TypeError) as error:
        raise DatasetError(
            f"{path}: not a COCO classification manifest (images, annotations, categories with ids): {error!r}"
        ) from None
    label_of = {category: label for label, (category, _) in enumerate(categories)}
    labels: dict[int, set[int]] = {}
    for image_id, category in annotations:
        if category not in label_of:
            raise DatasetError(f"{path}: an annotation of image {image_id} names unknown category {category}.")
        labels.setdefault(image_id, set()).add(label_of[category])
    entries = []
    for image_id, file_name, zip_file in images:
        reference = (f"{zip_file}@{file_name}" if zip_file else file_name).replace("\\", "/")
        if "://" in reference:
            raise DatasetError(f"{path}: image {image_id} is a URL ({reference[:80]}); give the images locally.")
        check_reference(reference, f"{path} image {image_id}")
        if image_id not in labels:
            raise DatasetError(f"{path}: image {image_id} ({reference[:80]}) has no annotation.")
        entries.append(IndexEntry(reference, tuple(sorted(labels[image_id]))))
    if not entries:
        raise DatasetError(f"ELEVATER manifest {path} lists no image.")
    return [name for _, name in categories], entries


def check_reference(image: str, where: str) -> None:
    """Refuse an image reference that would leave the dataset folder (absolute, ``..``, a non-zip archive)."""
    parts = image.split("@", 1)
    for part in parts:
        path = PurePosixPath(part.replace("\\", "/"))
        if not part or path.is_absolute() or ".." in path.parts or ":" in path.parts[0]:
            raise DatasetError(f"{where}: image reference {image!r} must stay inside the dataset folder.")
    if len(parts) == 2 and not parts[0].lower().endswith(".zip"):
        raise DatasetError(f"{where}: image reference {image!r} names an archive that is not a .zip file.")


def sample_few_shot(entries: Sequence[IndexEntry], shots: int, seed: int, num_classes: int) -> list[IndexEntry]:
    """vision-datasets' few-shot draw (see the module docstring); fails when a class has too few images."""
    order = list(entries)
    random.Random(seed).shuffle(order)
    missing = Counter({label: shots for label in range(num_classes)})
    chosen = []
    for entry in order:
        counts = Counter(entry.labels)
        if set((+missing).keys()) & set(counts.keys()):
            missing -= counts
            chosen.append(entry)
        if not +missing:
            break
    if +missing:
        short = sorted((+missing).keys())
        raise DatasetError(f"ELEVATER few-shot sampling: classes {short[:10]} have fewer than {shots} images.")
    return chosen


#: The share of the (few-shot) training set MVLPT's use of the ELEVATER toolkit holds out for validation.
TOOLKIT_VALIDATION_FRACTION = 0.2


def held_out_positions(labels: Sequence[int], fraction: float) -> set[int]:
    """Positions of the single-label toolkit hold-out: per class, its first ``ceil(count · fraction)`` items."""
    positions: dict[int, list[int]] = {}
    for position, label in enumerate(labels):
        positions.setdefault(label, []).append(position)
    return {position for found in positions.values() for position in found[: math.ceil(len(found) * fraction)]}


def toolkit_validation_split(
    entries: Sequence[IndexEntry], num_classes: int, multi_label: bool, fraction: float = TOOLKIT_VALIDATION_FRACTION
) -> tuple[list[IndexEntry], list[IndexEntry]]:
    """``(train, val)``: the ELEVATER toolkit's class-balanced hold-out of ``fraction`` of a training set (see the
    module docstring), deterministic in the entries' order."""
    if fraction <= 0:
        return list(entries), []
    chosen: set[int] = set()
    if not multi_label:
        chosen = held_out_positions([entry.labels[0] for entry in entries], fraction)
    else:
        hot = torch.zeros(len(entries), num_classes)
        for position, entry in enumerate(entries):
            hot[position, list(entry.labels)] = 1.0
        short = torch.tensor([float(math.ceil(count * fraction)) for count in hot.sum(0).tolist()])
        while bool((short > 0).any()):
            target = int(torch.nonzero(short > 0)[0])
            position = int(torch.nonzero(hot[:, target] > 0)[0])
            chosen.add(position)
            short -= hot[position]
            hot[position] = 0.0
    train = [entry for position, entry in enumerate(entries) if position not in chosen]
    return train, [entry for position, entry in enumerate(entries) if position in chosen]


class ReferencedImages(Dataset):
    """``{"image", "label"}`` from iris image references; archives are opened once per process."""

    def __init__(self, root: Path, entries: Sequence[IndexEntry], num_classes: int, multi_label: bool, transform: Any):
        self.root, self.entries, self.num_classes = root, list(entries), num_classes
        self.multi_label, self.transform = multi_label, transform
        self._archives: dict[tuple[int, str], zipfile.ZipFile] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def archive(self, name: str) -> zipfile.ZipFile:
        # keyed by process: a loader worker must not share a file offset with its parent
        key = (os.getpid(), name)
        if key not in self._archives:
            self._archives[key] = zipfile.ZipFile(self.root / name)
        return self._archives[key]

    def open(self, entry: IndexEntry) -> Any:
        if entry.archive_member is not None:
            name, member = entry.archive_member
            return load_rgb(io.BytesIO(self.archive(name).read(member)))
        return load_rgb(self.root / entry.image)

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.entries[index]
        if self.multi_label:
            label: Any = torch.zeros(self.num_classes)
            label[list(entry.labels)] = 1.0
        else:
            label = entry.labels[0]
        return {IMAGE: torch.as_tensor(self.transform(self.open(entry))), LABEL: label}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_archives": {}}  # open archives stay in their process


def verify_references(root: Path, entries: Sequence[IndexEntry], where: str) -> None:
    """Every referenced image exists and decodes (fail at ``setup``, naming the first bad one): files through
    :func:`~lightning_prompts.data.images.verify_images` (decoded once, then remembered by size and time), archive
    members decoded from the archive."""
    from PIL import UnidentifiedImageError

    files = [ImageItem(root / entry.image, entry.labels[0], "") for entry in entries if entry.archive_member is None]
    verify_images(files, where)
    by_archive: dict[str, list[str]] = {}
    for entry in entries:
        if entry.archive_member is not None:
            name, member = entry.archive_member
            by_archive.setdefault(name, []).append(member)
    for name, members in by_archive.items():
        if not (root / name).is_file():
            raise DatasetError(f"{where}: archive {root / name} does not exist.")
        with zipfile.ZipFile(root / name) as archive:
            known = set(archive.namelist())
            for member in members:
                if member not in known:
                    raise DatasetError(f"{where}: {member!r} is not in archive {root / name}.")
                try:
                    decode_fully(io.BytesIO(archive.read(member)))
                except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
                    raise DatasetError(f"{where}: {name}@{member} cannot be read: {error}") from error


@register_datamodule()
class ElevaterDataModule(LightningDataModule):
    """One ELEVATER dataset in the format its toolkit downloads (see the module docstring).

    Args:
        root: the dataset folder (e.g. ``data/elevater/voc2007_20211007``).
        train_index, val_index, test_index: index files in ``root`` (iris ``.txt`` or COCO ``.json``); a missing
            ``val_index`` file is allowed (validation then runs on the test split).
        validation: ``"toolkit"`` (MVLPT's protocol): hold out 20% of the training set as the toolkit does (see the
            module docstring); ``"index"``: validate on ``val_index``, or on the test split without one.
        labelmap: the label-map file in ``root`` (iris format).
        multi_label: the dataset is multi-label (VOC 2007): multi-hot targets and ELEVATER's 11-point mAP;
            single-label data refuses index lines with several labels.
        shots: training images per class (few-shot, vision-datasets' draw); ``-1`` uses all.
        seed: the few-shot seed.
        batch_size, eval_batch_size, num_workers, image_size, augmentation, normalization: loading and
            preprocessing (see :class:`~lightning_prompts.data.ImageClassificationDataModule`).
        verify_images: decode every referenced image once at ``setup`` (files are remembered, as
            :class:`~lightning_prompts.data.ImageClassificationDataModule` does; archive members are decoded
            each run).
        synthetic: generate a tiny dataset in this format instead of reading ``root`` (training images in a zip
            archive, evaluation images as files; multi-label when ``multi_label``).
    """

    def __init__(
        self,
        root: str = "data/elevater",
        train_index: str = "train.txt",
        val_index: str = "val.txt",
        test_index: str = "test.txt",
        labelmap: str = "labels.txt",
        multi_label: bool = False,
        shots: int = -1,
        seed: int = 1,
        batch_size: int = 32,
        eval_batch_size: int = 100,
        num_workers: int = 4,
        image_size: int = 224,
        augmentation: Augmentation = "elevater",
        normalization: str = "clip",
        verify_images: bool = True,
        synthetic: Synthetic | dict[str, Any] | None = None,
        validation: Literal["toolkit", "index"] = "toolkit",
    ) -> None:
        super().__init__()
        check_shots(shots)
        if validation not in ("toolkit", "index"):
            raise ValueError(f"validation must be 'toolkit' or 'index', got {validation!r}.")
        self.validation = validation
        self.root = Path(root).expanduser()
        self.index_files = {"train": train_index, "val": val_index, "test": test_index}
        self.labelmap, self.multi_label, self.shots, self.seed = labelmap, multi_label, shots, seed
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.image_size, self.augmentation, self.normalization = image_size, augmentation, normalization
        self.verify = verify_images
        self.synthetic = Synthetic(**synthetic) if isinstance(synthetic, dict) else synthetic
        self._splits: dict[str, list[IndexEntry]] | None = None
        self._names: list[str] | None = None
        self._datasets: dict[str, ReferencedImages] = {}

    # -- reading --------------------------------------------------------------------------------------
    def _read(self) -> tuple[list[str], dict[str, list[IndexEntry]]]:
        if self._splits is None or self._names is None:
            if self.synthetic is not None:
                self.root = _synthetic_root()
                shots = max(self.synthetic.images_per_class, self.shots)  # enough for the few-shot draw
                write_synthetic_iris(
                    self.root, self.synthetic, self.index_files, self.labelmap, self.multi_label, shots
                )
            if not self.root.is_dir():
                raise DatasetError(f"ELEVATER dataset folder {self.root} does not exist.")
            coco = self.index_files["train"].endswith(".json")
            names = None if coco else read_labelmap(self.root / self.labelmap)  # COCO: the training manifest's
            splits = {}
            for split, file in self.index_files.items():  # train first
                if split == "val" and (self.validation == "toolkit" or not (self.root / file).is_file()):
                    continue
                if coco:
                    split_names, entries = read_coco_manifest(self.root / file)
                    if names is None:
                        names = split_names
                    elif split_names != names:
                        raise DatasetError(f"{self.root / file}: its categories differ from the training manifest's.")
                else:
                    entries = read_index(self.root / file, len(names))
                several = next((entry for entry in entries if len(entry.labels) > 1), None)
                if several is not None and not self.multi_label:
                    raise DatasetError(
                        f"{self.root / file}: image {several.image!r} has several labels; this is a multi-label "
                        f"dataset: set multi_label: true."
                    )
                splits[split] = entries
            if self.shots > 0:
                splits["train"] = sample_few_shot(splits["train"], self.shots, self.seed, len(names))
            if self.validation == "toolkit":
                if self.shots == 1:  # the toolkit trains and validates on the same single shot per class
                    splits["val"] = list(splits["train"])
                else:
                    splits["train"], splits["val"] = toolkit_validation_split(
                        splits["train"], len(names), self.multi_label
                    )
            self._names, self._splits = names, splits
        return self._names, self._splits

    @property
    def classnames(self) -> list[str]:
        return list(self._read()[0])

    def default_evaluator(self) -> Any:
        from lightning_prompts.evaluation import ClassificationEvaluator, MultiLabelEvaluator

        return MultiLabelEvaluator(n_point_map=11) if self.multi_label else ClassificationEvaluator()

    # -- Lightning hooks ------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        names, splits = self._read()
        evaluated = "val" if "val" in splits else "test"  # without a validation index, validation uses test
        wanted = ("train", evaluated) if stage in ("fit", "validate") else ("test",)
        for split in wanted:
            if split in self._datasets or split not in splits:
                continue
            if self.verify:
                verify_references(self.root, splits[split], f"ELEVATER {split} split")
            transform = build_transform(self.augmentation, self.image_size, self.normalization, train=split == "train")
            self._datasets[split] = ReferencedImages(self.root, splits[split], len(names), self.multi_label, transform)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self._datasets["train"], batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self._datasets["val"] if "val" in self._datasets else self._datasets["test"])

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self._datasets["test"])

    def predict_dataloader(self) -> DataLoader:
        """The test images (as ``test``)."""
        return self.test_dataloader()

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        return evaluation_loader(dataset, self.eval_batch_size, self.num_workers)


def write_synthetic_iris(
    root: Path, spec: Synthetic, index_files: dict[str, str], labelmap: str, multi_label: bool, train_per_class: int
) -> None:
    """A tiny dataset in the iris format: training images (``train_per_class`` per class) in ``train_images.zip``,
    the others as files; every other multi-label image also holds the next class."""
    from lightning_prompts.data.synthetic import write_image

    names = classnames_for(spec.num_classes)
    (root / labelmap).write_text("\n".join(names) + "\n", encoding="utf-8")
    for split, file in index_files.items():
        lines = []
        for label in range(spec.num_classes):
            for index in range(train_per_class if split == "train" else spec.images_per_class):
                labels = [label, (label + 1) % spec.num_classes] if multi_label and index % 2 else [label]
                member = f"{split}/{label}_{index}.jpg"
                write_image(root / member, label, index, spec.image_size, spec.seed + len(lines))
                lines.append((member, ",".join(map(str, labels))))
        if split == "train":  # the archive form: the files move into train_images.zip
            with zipfile.ZipFile(root / "train_images.zip", "w") as archive:
                for member, _ in lines:
                    archive.write(root / member, member)
                    (root / member).unlink()
            (root / split).rmdir()
            lines = [(f"train_images.zip@{member}", labels) for member, labels in lines]
        (root / file).write_text("".join(f"{image} {labels}\n" for image, labels in lines), encoding="utf-8")
