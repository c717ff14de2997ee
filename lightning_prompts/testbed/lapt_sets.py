"""LAPT's training folders for the offline OOD testbed: ID classes and negative labels, one folder each.

LAPT trains on images of its negative labels, which the paper synthesises with SDXL or retrieves from
LAION by CLIP similarity; neither set is released, and neither a diffusion model nor LAION is reachable
offline. The testbed follows the retrieval route on a pool it can build: random square crops of the
photographs that ship inside the ``scikit-image`` wheel (astronaut, coffee, chelsea the cat, a rocket, coins,
motorcycles, the moon, …; read as files, nothing downloaded), made grey and 28×28 like every other testbed image
so that no set differs from another by style. Each negative label gets the pool crops the stand-in CLIP
finds most similar to ``"a photo of a {label}."``, no crop serving two labels (it would be a training image
with two answers). ``prepare-lapt`` takes the labels from NegLabel's mining over the testbed's word list
(ImageNet's class names): the first 25, the farthest from the ID classes, to train on, and all 500 to test with,
the labels NegLabel scores.

Written under ``<root>/lapt/train/<label>/`` in ``ImageFolderDataModule``'s layout, beside copies of the ID
classes' training images (the testbed's base half, all of its training images: the data module draws the
shots with its seed). A stand-in for the paper's data, said so in docs/testbed_ood.md.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lightning_prompts.data.transforms import build_transform
from lightning_prompts.testbed.fashion_mnist import CLASSNAMES, SPLIT_FILE

#: The folder under the testbed root that holds LAPT's ``train/<label>/`` tree.
LAPT_FOLDER = "lapt"
#: The ID classes: the testbed's base half.
ID_CLASSES = CLASSNAMES[:5]
#: Photographs of scikit-image's wheel too small or too synthetic to crop from.
SKIPPED_PHOTOS = {"chessboard_GRAY", "chessboard_RGB", "phantom", "microaneurysms", "horse", "logo"}


def scikit_image_photos() -> dict[str, np.ndarray]:
    """The photographs inside the installed scikit-image wheel (``skimage/data/*.png|jpg``), grey uint8."""
    import importlib.util

    from lightning_prompts.data.images import open_image

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("LAPT's testbed pool crops scikit-image's bundled photos: pip install scikit-image.")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    photos = {}
    for path in sorted(folder.glob("*")):
        if path.suffix.lower() not in {".png", ".jpg"} or path.stem in SKIPPED_PHOTOS:
            continue
        with open_image(path) as image:
            photos[path.stem] = np.asarray(image.convert("L"))
    if len(photos) < 10:
        raise FileNotFoundError(f"{folder} holds {len(photos)} photos; the installed scikit-image ships more.")
    return photos


def random_crops(photos: dict[str, np.ndarray], per_photo: int, seed: int, size: int = 28) -> np.ndarray:
    """``per_photo`` random square crops of each photo (side 20–100% of its shorter side), resized to
    ``size`` (bilinear with antialiasing): ``(len(photos) · per_photo, size, size)`` uint8."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    crops = []
    for name in sorted(photos):
        photo = photos[name]
        height, width = photo.shape
        for _ in range(per_photo):
            side = int(rng.uniform(0.2, 1.0) * min(height, width))
            top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
            crop = Image.fromarray(photo[top : top + side, left : left + side])
            crops.append(np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR)))
    return np.stack(crops)


def retrieve_exclusive(similarity: Tensor, per_label: int) -> list[list[int]]:
    """For each label (a row of ``similarity``: labels × pool), ``per_label`` pool indices, most similar
    first, each pool item given to at most one label: the globally most similar (label, item) pairs are
    taken first, ties broken by the lower index."""
    labels, pool = similarity.shape
    if labels * per_label > pool:
        raise ValueError(f"{labels} labels × {per_label} images need {labels * per_label} pool items; {pool} given.")
    chosen: list[list[int]] = [[] for _ in range(labels)]
    taken = torch.zeros(pool, dtype=torch.bool)
    for flat in torch.argsort(similarity.flatten(), descending=True, stable=True).tolist():
        label, item = divmod(flat, pool)
        if taken[item] or len(chosen[label]) == per_label:
            continue
        chosen[label].append(item)
        taken[item] = True
        if all(len(items) == per_label for items in chosen):
            break
    return chosen


def folder_name(label: str) -> str:
    """The folder of a label (``ImageFolderDataModule`` reads ``_`` as a space)."""
    return label.replace(" ", "_")


def write_lapt_training_set(
    root: str | Path,
    negative_labels: Sequence[str],
    encode_images: Callable[[Tensor], Tensor],
    encode_texts: Callable[[Sequence[str]], Tensor],
    per_label: int = 16,
    crops_per_photo: int = 64,
    seed: int = 0,
    batch_size: int = 128,
) -> dict[str, int]:
    """Write ``<root>/lapt/train/<label>/`` for the ID classes (copies of the testbed's training images) and
    for each of ``negative_labels`` (``per_label`` retrieved pool crops); returns images written per kind.

    ``encode_images`` maps a batch of images ``(B, 3, 224, 224)``, preprocessed as the testbed's recipes do
    (RGB, resized bilinearly, ``(x − 0.5) / 0.5``), to L2-normalised features; ``encode_texts`` maps strings to
    L2-normalised features."""
    from PIL import Image

    root = Path(root)
    if any("/" in label or "_" in label for label in negative_labels):
        raise ValueError("Negative labels become folder names: no '/' or '_' in them.")
    target = root / LAPT_FOLDER / "train"
    if target.exists():
        shutil.rmtree(target)
    id_count = 0
    split = json.loads((root / "fashion_mnist" / SPLIT_FILE).read_text())
    for path, _, classname in split["train"]:
        if classname in ID_CLASSES:
            destination = target / folder_name(classname) / Path(path).name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / "fashion_mnist" / "images" / path, destination)
            id_count += 1

    crops = random_crops(scikit_image_photos(), crops_per_photo, seed)
    transform = build_transform("vtab", 224, "inception", train=False)  # the testbed recipes' preprocessing
    features = []
    with torch.no_grad():
        for start in range(0, len(crops), batch_size):
            images = [transform(Image.fromarray(crop).convert("RGB")) for crop in crops[start : start + batch_size]]
            features.append(encode_images(torch.stack(images)))
        text = encode_texts([f"a photo of a {label}." for label in negative_labels])
    chosen = retrieve_exclusive(text @ torch.cat(features).t(), per_label)
    for label, items in zip(negative_labels, chosen):
        folder = target / folder_name(label)
        folder.mkdir(parents=True)
        for rank, item in enumerate(items):
            Image.fromarray(crops[item]).save(folder / f"crop_{item:05d}_rank{rank:02d}.png")
    return {"id": id_count, "negative": len(negative_labels) * per_label, "pool": len(crops)}
