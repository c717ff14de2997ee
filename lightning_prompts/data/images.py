"""Labelled image lists: the common currency of every image data module.

A data module reads its on-disk format into lists of :class:`ImageItem` (path, label, class
name); everything after that (validation, transforms, loaders) is shared.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from lightning_prompts.errors import DatasetError


@dataclass(frozen=True)
class ImageItem:
    """One labelled image."""

    path: Path
    label: int
    classname: str


def load_rgb(path: Path) -> Any:
    """Open an image as RGB (PIL)."""
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def verify_images(items: Sequence[ImageItem], where: str) -> None:
    """Raise :class:`DatasetError` naming the first missing or unreadable image.

    Only headers are checked (PIL ``verify``), so this costs milliseconds per thousand images.
    """
    from PIL import Image, UnidentifiedImageError

    for item in items:
        if not item.path.is_file():
            raise DatasetError(f"{where}: image {item.path} (class {item.classname!r}) does not exist.")
        try:
            with Image.open(item.path) as image:
                image.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise DatasetError(
                f"{where}: image {item.path} (class {item.classname!r}) cannot be read: {error}"
            ) from error


def classnames_by_label(items: Sequence[ImageItem], where: str) -> list[str]:
    """Class names ordered by label; raise if a label has two names or labels have gaps."""
    names: dict[int, str] = {}
    for item in items:
        known = names.setdefault(item.label, item.classname)
        if known != item.classname:
            raise DatasetError(
                f"{where}: label {item.label} is named both {known!r} and {item.classname!r} ({item.path})."
            )
    missing = sorted(set(range(max(names, default=-1) + 1)) - set(names))
    if missing:
        raise DatasetError(f"{where}: labels {missing[:10]} have no images (labels must run from 0 to C-1).")
    return [names[label] for label in range(len(names))]


def check_known_classes(items: Sequence[ImageItem], classnames: Sequence[str], where: str) -> None:
    """Raise if an item's label/class is not one of ``classnames`` (the training classes)."""
    for index, item in enumerate(items):
        if not 0 <= item.label < len(classnames) or classnames[item.label] != item.classname:
            expected = classnames[item.label] if 0 <= item.label < len(classnames) else "no class"
            raise DatasetError(
                f"{where}: entry {index} ({item.path.name}, label {item.label}, class {item.classname!r}) is not "
                f"one of the {len(classnames)} training classes (label {item.label} is {expected!r} there)."
            )


class ImageListDataset(Dataset):
    """A list of :class:`ImageItem` as a torch dataset of ``{"image", "label", "index"}`` dicts."""

    def __init__(self, items: Sequence[ImageItem], transform: Callable[[Any], Any] | None = None) -> None:
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        image = load_rgb(item.path)
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, "label": item.label, "index": index}
