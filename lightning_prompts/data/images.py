"""Labelled image lists: the common currency of every image data module.

A data module reads its on-disk format into lists of :class:`ImageItem` (path, label, class
name); everything after that (validation, transforms, loaders) is shared.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from torch.utils.data import Dataset

from lightning_prompts.batch import GENERATED_VIEWS, IMAGE, IMAGE_VIEWS, INDEX, LABEL, MASK, image_view
from lightning_prompts.errors import DatasetError

#: File suffixes read as images (case-insensitive); names starting with "." are skipped.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
#: The formats PIL may decode a dataset image as, whatever its name says. PIL otherwise tries every format it
#: knows: an EPS file named ``.jpg`` would be handed to Ghostscript, which runs its PostScript. (JPEG covers the
#: multi-picture JPEGs many cameras write; a format this PIL was built without is left out.)
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
#: The label of images without one (OOD test sets).
NO_LABEL = -1


@dataclass(frozen=True)
class ImageItem:
    """One labelled image."""

    path: Path
    label: int
    classname: str


def read_unlabelled_images(folder: Path, where: str) -> list[ImageItem]:
    """Every image under ``folder`` at any depth, sorted by path, labelled :data:`NO_LABEL`."""
    if not folder.is_dir():
        raise DatasetError(f"{where}: folder {folder} does not exist.")
    items = [
        ImageItem(path, NO_LABEL, "")
        for path in sorted(folder.rglob("*"))
        if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()
    ]
    if not items:
        raise DatasetError(f"{where}: folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    return items


def open_image(path: Path | IO[bytes]) -> Any:
    """``PIL.Image.open`` restricted to :data:`IMAGE_FORMATS` (a file in another format is refused as not an
    image, never passed to an external decoder)."""
    from PIL import Image

    Image.init()  # every plugin registered, so the check below sees what this PIL can open
    return Image.open(path, formats=[name for name in IMAGE_FORMATS if name in Image.OPEN])


def load_rgb(path: Path | IO[bytes]) -> Any:
    """Open an image (a path, or a binary file such as an archive member) as 8-bit RGB (PIL): grayscale,
    palette, CMYK and alpha images are converted, and 16-bit or float images are scaled to 8 bits first (PIL's
    RGB conversion would clip them)."""
    with open_image(path) as image:
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            return _to_8bit(image).convert("RGB")
        return image.convert("RGB")


def _to_8bit(image: Any) -> Any:
    import numpy as np
    from PIL import Image

    pixels = np.asarray(image, dtype=np.float64)
    low, high = float(pixels.min()), float(pixels.max())
    scaled = (pixels - low) / (high - low) * 255.0 if high > low else np.zeros_like(pixels)
    return Image.fromarray(scaled.round().astype(np.uint8), mode="L")


def decode_fully(path: Path | IO[bytes]) -> None:
    """Decode the whole image (not just its header), so a truncated or corrupt body fails here and not in
    the middle of an epoch. JPEGs decode in draft mode (1/8 scale: every entropy-coded block is still
    read, which is where truncation and corruption show), about 1.6× faster than a full decode."""
    with open_image(path) as image:
        if image.format == "JPEG":
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
        image.load()


def verify_images(items: Sequence[ImageItem], where: str, cache: Any = None) -> None:
    """Raise :class:`DatasetError` naming the first missing or undecodable image.

    Every image is decoded once (:func:`decode_fully`); files verified before, with the same size and
    modification time, are skipped (:class:`~lightning_prompts.data.verification.VerifiedImages`), so a
    second run of the same data costs a ``stat`` per image.
    """
    from PIL import UnidentifiedImageError

    from lightning_prompts.data.verification import VerifiedImages

    cache = VerifiedImages.for_items(items) if cache is None else cache
    try:
        for item in items:
            try:
                stat = item.path.stat()
            except FileNotFoundError:
                raise DatasetError(f"{where}: image {item.path} (class {item.classname!r}) does not exist.") from None
            except OSError as error:  # a symlink loop, a permission problem
                raise DatasetError(
                    f"{where}: image {item.path} (class {item.classname!r}) cannot be read: {error}"
                ) from None
            if cache.known(item.path, stat):
                continue
            try:
                decode_fully(item.path)
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
                raise DatasetError(
                    f"{where}: image {item.path} (class {item.classname!r}) cannot be read: {error}"
                ) from error
            cache.add(item.path, stat)
    finally:
        cache.save()


def verify_masks(items: Sequence[ImageItem], mask_path: Callable[[ImageItem], Path], where: str) -> None:
    """Raise :class:`DatasetError` naming the first image whose foreground mask is missing or unreadable."""
    from PIL import UnidentifiedImageError

    for item in items:
        path = mask_path(item)
        if not path.is_file():
            raise DatasetError(f"{where}: the mask of {item.path} should be at {path}, which does not exist.")
        try:
            with open_image(path) as mask:
                mask.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise DatasetError(f"{where}: mask {path} cannot be read: {error}") from error


def classnames_by_label(items: Sequence[ImageItem], where: str) -> list[str]:
    """Class names ordered by label; raise if a label has two names or labels have gaps."""
    names: dict[int, str] = {}
    for item in items:
        if item.label < 0:  # NO_LABEL (-1) marks unlabelled images, which cannot define a class
            raise DatasetError(f"{where}: image {item.path} has label {item.label}; labels must run from 0 to C-1.")
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
        test_views: with N > 0, also ``"image_views"`` ``(N, 3, H, W)``: N views by ``view_transform``
            (test-time adaptation); sample ``i``'s views are drawn from a generator seeded with
            ``(view_seed, i)``, so they do not depend on the batch order or the loader's workers.
        generated_views: ``(K, path of the k-th pre-generated view of an item)``: adds ``"generated_views"``
            ``(K, 3, H, W)``, those images through ``transform`` (DiffTPT's diffusion samples).
    """

    def __init__(
        self,
        items: Sequence[ImageItem],
        transform: Callable[..., Any] | None = None,
        views: int = 1,
        mask_path: Callable[[ImageItem], Path] | None = None,
        test_views: int = 0,
        view_transform: Callable[..., Any] | None = None,
        view_seed: int = 0,
        generated_views: tuple[int, Callable[[ImageItem, int], Path]] | None = None,
    ) -> None:
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}.")
        self.generated_views = generated_views
        if test_views and view_transform is None:
            raise ValueError("test_views needs a view_transform.")
        self.items = list(items)
        self.transform, self.views, self.mask_path = transform, views, mask_path
        self.test_views, self.view_transform, self.view_seed = test_views, view_transform, view_seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        image = load_rgb(item.path)
        sample: dict[str, Any] = {LABEL: item.label, INDEX: index}
        if self.mask_path is not None:
            mask = fit_mask(load_mask(self.mask_path(item)), image.size)
            first, mask = _apply(self.transform, image, mask)
            sample[MASK] = (mask > 0).float()
        else:
            first = _apply(self.transform, image)
        sample[IMAGE] = first
        for view in range(2, self.views + 1):
            sample[image_view(view)] = _apply(self.transform, image)
        if self.test_views:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.view_seed * 1_000_003 + index)
                sample[IMAGE_VIEWS] = torch.stack([_apply(self.view_transform, image) for _ in range(self.test_views)])
        if self.generated_views is not None:
            count, path_of = self.generated_views
            sample[GENERATED_VIEWS] = torch.stack(
                [_apply(self.transform, load_rgb(path_of(item, k))) for k in range(count)]
            )
        return sample


def load_mask(path: Path) -> Any:
    """A foreground mask file as a ``(1, H, W)`` uint8 torchvision ``Mask``."""
    import numpy as np
    from torchvision import tv_tensors

    with open_image(path) as mask:
        pixels = np.asarray(mask.convert("L"))
    return tv_tensors.Mask(torch.from_numpy(pixels.copy()).unsqueeze(0))


def fit_mask(mask: Any, size: tuple[int, int]) -> Any:
    """``mask`` resized to the image's ``(width, height)`` when it differs, as DAPT's loader resizes each mask to its
    image before the joint crop (nearest neighbour here, so labels stay labels; DAPT resizes with PIL's default)."""
    from torchvision import tv_tensors

    width, height = size
    if tuple(mask.shape[-2:]) == (height, width):
        return mask
    resized = torch.nn.functional.interpolate(mask[None].float(), size=(height, width), mode="nearest")[0]
    return tv_tensors.Mask(resized.to(torch.uint8))


def _apply(transform: Callable[..., Any] | None, *inputs: Any) -> Any:
    outputs = transform(*inputs) if transform is not None else (inputs if len(inputs) > 1 else inputs[0])
    # plain tensors out: torchvision's tensor subclasses would otherwise travel through the batch
    if isinstance(outputs, tuple):
        return tuple(_plain(output) for output in outputs)
    return _plain(outputs)


def _plain(value: Any) -> Any:
    return value.as_subclass(torch.Tensor) if isinstance(value, torch.Tensor) else value
