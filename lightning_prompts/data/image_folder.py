"""Your own images in torchvision's ``ImageFolder`` layout: ``<root>/<split>/<class>/<image>``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from lightning_prompts.data.arguments import check_shots
from lightning_prompts.data.dassl import few_shot_splits
from lightning_prompts.data.elevater import TOOLKIT_VALIDATION_FRACTION, held_out_positions
from lightning_prompts.data.image_datamodule import ImageClassificationDataModule, LoadedSplits, Synthetic
from lightning_prompts.data.images import IMAGE_SUFFIXES, ImageItem, check_known_classes
from lightning_prompts.data.synthetic import write_image_folder_layout
from lightning_prompts.errors import ConfigurationError, DatasetError
from lightning_prompts.registry import register_datamodule


def read_image_folder(folder: Path, classes: list[str] | None = None) -> tuple[list[str], list[ImageItem]]:
    """Items of ``folder/<class>/<image>``; classes are the sorted sub-folders unless given."""
    if not folder.is_dir():
        raise DatasetError(f"Image folder {folder} does not exist.")
    found = sorted(p.name for p in folder.iterdir() if p.is_dir())
    names = classes if classes is not None else found
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise DatasetError(f"{folder}: class folders {unknown} are not among the training classes {names}.")
    items = []
    for label, name in enumerate(names):
        class_dir = folder / name
        if not class_dir.is_dir():
            continue
        found = [
            ImageItem(path, label, name.replace("_", " "))
            for path in sorted(class_dir.rglob("*"))
            if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
        ]
        if not found and classes is None:  # a training class without images would never be learned
            raise DatasetError(
                f"{class_dir}: class folder {name!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})."
            )
        items.extend(found)
    if not items:  # an empty val/ or test/ would silently be replaced (test/ by val/, val/ by the training images)
        raise DatasetError(
            f"Image folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in class folders "
            f"<class>/<image>; add them, or remove the folder."
        )
    return names, items


@register_datamodule()
class ImageFolderDataModule(ImageClassificationDataModule):
    """Image classification on your own data, one folder per class and split.

    Args:
        root: folder holding ``train/`` and optionally ``val/`` and ``test/`` (each ``<class>/<image>``).
            Class names are the training folder names (``_`` read as a space).
        shots: images per class for training (few-shot, seeded); ``-1`` uses all.
        seed: the few-shot sampling seed.
        validation: ``"folder"``: validate on ``val/`` (without one, on the training images, with a warning, so
            ``best`` is then chosen on training data); ``"toolkit"``: hold out 20% of the (few-shot) training images
            per class, the first ``ceil(0.2 · n)`` drawn, as MVLPT's ELEVATER toolkit does (one shot: train and
            validate on the same image, as it does too); ``val/`` is then not read.
        **kwargs: loader and preprocessing settings of :class:`ImageClassificationDataModule`.
    """

    def __init__(
        self,
        root: str = "data",
        shots: int = -1,
        seed: int = 1,
        validation: Literal["folder", "toolkit"] = "folder",
        **kwargs: Any,
    ) -> None:
        if validation not in ("folder", "toolkit"):
            raise ConfigurationError(f"validation must be 'folder' or 'toolkit', got {validation!r}.")
        check_shots(shots)
        super().__init__(root, **kwargs)
        self.shots, self.seed, self.validation = shots, seed, validation

    def write_synthetic(self, root: Path, spec: Synthetic) -> None:
        per_class = max(spec.images_per_class, self.shots)
        write_image_folder_layout(root, spec.num_classes, per_class, spec.image_size, spec.seed)

    def load_splits(self) -> LoadedSplits:
        folders, train = read_image_folder(self.root / "train")
        classnames = [name.replace("_", " ") for name in folders]
        splits = {}
        for split in ("val", "test"):
            folder = self.root / split
            splits[split] = read_image_folder(folder, folders)[1] if folder.is_dir() else []
            check_known_classes(splits[split], classnames, f"{self.description} {split} split")
        if self.shots > 0:
            train, _ = few_shot_splits(train, [], self.shots, self.seed, self.description)
        test = splits["test"] or splits["val"]
        val = splits["val"]
        if self.validation == "toolkit":
            if self.shots == 1:
                val = list(train)
            else:
                held_out = held_out_positions([item.label for item in train], TOOLKIT_VALIDATION_FRACTION)
                train, val = [i for p, i in enumerate(train) if p not in held_out], [train[p] for p in sorted(held_out)]
        return LoadedSplits(classnames, train, val, {"test": (classnames, test)} if test else {})
