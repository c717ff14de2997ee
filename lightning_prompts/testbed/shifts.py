"""Distribution shifts of the testbed's Fashion-MNIST test images: the same images under fixed corruptions.

``write_shifted_root(data_root, target_root, shift, per_class)`` writes a testbed root whose Fashion-MNIST test
split holds the first ``per_class`` test images of each class *corrupted* by ``shift``, and whose training and
validation splits are the original ones (linked, not copied), so every recipe reads it with
``--data.init_args.root`` unchanged. The corruptions, at one fixed severity each, on the 28×28 grey images before
they are resized:

* ``rotation``: rotated by 45° (bilinear, black fill);
* ``inversion``: ``255 − pixel`` (dark garments on white);
* ``blur``: Gaussian blur, radius 1.5 pixels;
* ``noise``: additive Gaussian noise, σ = 40 grey levels, clipped to 0–255 (seeded per image).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from lightning_prompts.data.images import open_image
from lightning_prompts.testbed.fashion_mnist import SPLIT_FILE, first_per_class


def _noise(image: Image.Image, index: int) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32)
    noisy = pixels + np.random.default_rng(index).normal(0.0, 40.0, pixels.shape)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))


#: Each shift as a function of the grey image and its index in the split (the noise seed).
SHIFTS: dict[str, Callable[[Image.Image, int], Image.Image]] = {
    "rotation": lambda image, _: image.rotate(45, resample=Image.BILINEAR, fillcolor=0),
    "inversion": lambda image, _: ImageOps.invert(image),
    "blur": lambda image, _: image.filter(ImageFilter.GaussianBlur(radius=1.5)),
    "noise": _noise,
}


def write_shifted_root(data_root: str | Path, target_root: str | Path, shift: str, per_class: int) -> Path:
    """The testbed root of one shift (see the module docstring); returns it."""
    if shift not in SHIFTS:
        raise ValueError(f"Unknown shift {shift!r}; known: {sorted(SHIFTS)}.")
    source = Path(data_root) / "fashion_mnist"
    target = Path(target_root) / "fashion_mnist"
    images = target / "images"
    images.mkdir(parents=True, exist_ok=True)
    split = json.loads((source / SPLIT_FILE).read_text())
    for folder in sorted({entry[0].split("/")[0] for entry in split["train"] + split["val"]}):
        if not (images / folder).exists():  # the original training and validation images, linked
            (images / folder).symlink_to((source / "images" / folder).resolve())
    kept = []
    for index, (relative, label, name) in first_per_class(split["test"], per_class):
        shifted = f"{shift}/{relative}"
        (images / shifted).parent.mkdir(parents=True, exist_ok=True)
        with open_image(source / "images" / relative) as original:
            SHIFTS[shift](original.convert("L"), index).save(images / shifted)
        kept.append([shifted, label, name])
    (target / SPLIT_FILE).write_text(json.dumps({**split, "test": kept}))
    return target.parent
