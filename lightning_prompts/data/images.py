"""Labelled image lists: the common currency of every image data module.

A data module reads its on-disk format into lists of :class:`ImageItem` (path, label, class
name); everything after that (validation, transforms, loaders) is shared.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from lightning_prompts.batch import IMAGE, INDEX, LABEL, MASK, image_view
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


def verify_masks(items: Sequence[ImageItem], mask_path: Callable[[ImageItem], Path], where: str) -> None:
    """Raise :class:`DatasetError` naming the first image whose foreground mask is missing or unreadable."""
    from PIL import Image, UnidentifiedImageError

    for item in items:
        path = mask_path(item)
        if not path.is_file():
            raise DatasetError(f"{where}: the mask of {item.path} should be at {path}, which does not exist.")
        try:
            with Image.open(path) as mask:
                mask.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise DatasetError(f"{where}: mask {path} cannot be read: {error}") from error


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
    """A list of :class:`ImageItem` as a torch dataset of ``{"image", "label", "index"}`` dicts.

    Args:
        items: the images.
        transform: applied to each image (and, jointly, to its mask).
        views: with 2 or more, also ``"image_view2"``, … : further independently transformed views of
            the same image (CoPrompt's second view for the frozen teacher).
        mask_path: maps an item to its foreground mask file; adds ``"mask"`` ``(1, H, W)`` in ``{0, 1}``,
            transformed jointly with the first view (nonzero mask pixels are foreground).
    """

    def __init__(
        self,
        items: Sequence[ImageItem],
        transform: Callable[..., Any] | None = None,
        views: int = 1,
        mask_path: Callable[[ImageItem], Path] | None = None,
    ) -> None:
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}.")
        self.items = list(items)
        self.transform, self.views, self.mask_path = transform, views, mask_path

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        image = load_rgb(item.path)
        sample: dict[str, Any] = {LABEL: item.label, INDEX: index}
        if self.mask_path is not None:
            first, mask = _apply(self.transform, image, load_mask(self.mask_path(item)))
            sample[MASK] = (mask > 0).float()
        else:
            first = _apply(self.transform, image)
        sample[IMAGE] = first
        for view in range(2, self.views + 1):
            sample[image_view(view)] = _apply(self.transform, image)
        return sample


def load_mask(path: Path) -> Any:
    """A foreground mask file as a ``(1, H, W)`` uint8 torchvision ``Mask``."""
    import numpy as np
    from PIL import Image
    from torchvision import tv_tensors

    with Image.open(path) as mask:
        pixels = np.asarray(mask.convert("L"))
    return tv_tensors.Mask(torch.from_numpy(pixels.copy()).unsqueeze(0))


def _apply(transform: Callable[..., Any] | None, *inputs: Any) -> Any:
    outputs = transform(*inputs) if transform is not None else (inputs if len(inputs) > 1 else inputs[0])
    # plain tensors out: torchvision's tensor subclasses would otherwise travel through the batch
    if isinstance(outputs, tuple):
        return tuple(_plain(output) for output in outputs)
    return _plain(outputs)


def _plain(value: Any) -> Any:
    return value.as_subclass(torch.Tensor) if isinstance(value, torch.Tensor) else value
