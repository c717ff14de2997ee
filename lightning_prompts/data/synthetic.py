"""Tiny generated datasets in the real on-disk layouts (for tests and the ``_tiny`` overlays).

Each writer produces kilobytes of JPEG images whose colour depends on the class (so a model can
learn something) in exactly the layout a reader expects; the real reader then runs on them. The
Dassl layouts also get a foreground mask per image in the ``mask/`` folder that mirrors ``images``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: Readable class names for generated data (real words, so CLIP tokenization behaves normally).
CLASSNAMES = (
    "airplane",
    "bicycle",
    "bird",
    "cat",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
    "apple",
    "banana",
    "chair",
    "guitar",
    "lamp",
    "mountain",
    "river",
)
SPLITS = ("train", "val", "test")


def classnames_for(num_classes: int) -> list[str]:
    if num_classes > len(CLASSNAMES):
        return [f"object {i}" for i in range(num_classes)]
    return list(CLASSNAMES[:num_classes])


def write_image(path: Path, label: int, index: int, size: int, seed: int) -> None:
    """A ``size``×``size`` JPEG: a class-specific colour plus noise."""
    from PIL import Image

    rng = np.random.default_rng([seed, label, index])
    base = np.array([(label * 67) % 256, (label * 131 + 40) % 256, (label * 197 + 80) % 256], dtype=np.float64)
    pixels = np.clip(base + rng.normal(0, 30, size=(size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)


def write_unlabelled_images(folder: Path, count: int, size: int, seed: int) -> None:
    """``count`` grey-noise JPEGs (no class colour) in ``folder/images/``, a stand-in OOD set."""
    from PIL import Image

    for index in range(count):
        rng = np.random.default_rng([seed, 1000, index])
        pixels = np.clip(rng.normal(128, 60, size=(size, size, 1)).repeat(3, axis=2), 0, 255).astype(np.uint8)
        path = folder / "images" / f"{index:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, format="JPEG", quality=90)


def write_mask(path: Path, size: int) -> None:
    """A foreground mask: the central half of the image (255) on background (0), as PNG."""
    from PIL import Image

    pixels = np.zeros((size, size), dtype=np.uint8)
    pixels[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path.with_suffix(".png"))


def write_split_json_layout(
    dataset_root: Path, image_dir: str, split_file: str, num_classes: int, per_class: int, size: int, seed: int
) -> None:
    """``<dataset_root>/<image_dir>/<class>/…`` plus a ``split_zhou_*.json`` file."""
    image_root = dataset_root / image_dir
    names = classnames_for(num_classes)
    split: dict[str, list[list[object]]] = {name: [] for name in SPLITS}
    for part_index, part in enumerate(SPLITS):
        for label, name in enumerate(names):
            folder = name.replace(" ", "_")
            for i in range(per_class):
                relative = f"{folder}/{part}_{i:03d}.jpg"
                write_image(image_root / relative, label, part_index * 1000 + i, size, seed)
                write_mask(dataset_root / "mask" / relative, size)
                split[part].append([relative, label, name])
    (dataset_root / split_file).write_text(json.dumps(split, indent=1))


def write_imagenet_layout(dataset_root: Path, num_classes: int, per_class: int, size: int, seed: int) -> None:
    """CoOp's ImageNet layout: ``classnames.txt`` and ``images/{train,val}/<wnid>/``."""
    names = classnames_for(num_classes)
    wnids = [f"n{label:08d}" for label in range(num_classes)]
    (dataset_root).mkdir(parents=True, exist_ok=True)
    (dataset_root / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in zip(wnids, names)))
    for part_index, folder in enumerate(("train", "val")):
        for label, wnid in enumerate(wnids):
            for i in range(per_class):
                relative = f"{folder}/{wnid}/{wnid}_{i:04d}.JPEG"
                write_image(dataset_root / "images" / relative, label, part_index * 1000 + i, size, seed)
                write_mask(dataset_root / "mask" / relative, size)


def write_fgvc_aircraft_layout(dataset_root: Path, num_classes: int, per_class: int, size: int, seed: int) -> None:
    """FGVC-Aircraft: ``variants.txt``, ``images_variant_{split}.txt`` and ``images/<id>.jpg``."""
    variants = [f"{700 + 7 * label}-{label}00" for label in range(num_classes)]
    dataset_root.mkdir(parents=True, exist_ok=True)
    (dataset_root / "variants.txt").write_text("".join(f"{v}\n" for v in variants))
    for part_index, part in enumerate(SPLITS):
        lines = []
        for label, variant in enumerate(variants):
            for i in range(per_class):
                image_id = f"{part_index}{label:03d}{i:03d}"
                write_image(dataset_root / "images" / f"{image_id}.jpg", label, part_index * 1000 + i, size, seed)
                write_mask(dataset_root / "mask" / f"{image_id}.png", size)
                lines.append(f"{image_id} {variant}\n")
        (dataset_root / f"images_variant_{part}.txt").write_text("".join(lines))


def write_list_layout(
    root: Path, list_files: dict[str, str], num_classes: int, per_class: int, size: int, seed: int
) -> list[str]:
    """``<root>/images/<split>/…`` plus ``<list file>`` with ``<relative path> <label>`` lines (VTAB-1k)."""
    for part_index, (part, list_file) in enumerate(list_files.items()):
        lines = []
        for label in range(num_classes):
            for i in range(per_class):
                relative = f"images/{part}/{label:03d}_{i:03d}.jpg"
                write_image(root / relative, label, part_index * 1000 + i, size, seed)
                lines.append(f"{relative} {label}\n")
        (root / list_file).write_text("".join(lines))
    return classnames_for(num_classes)


def write_json_map_layout(root: Path, num_classes: int, per_class: int, size: int, seed: int) -> None:
    """VPT's FGVC layout: ``images/<class folder>/…`` plus ``{train,val,test}.json`` mapping path -> class id."""
    names = classnames_for(num_classes)
    for part_index, part in enumerate(SPLITS):
        mapping = {}
        for label, name in enumerate(names):
            for i in range(per_class):
                relative = f"{label + 1:03d}.{name.replace(' ', '_')}/{part}_{i:03d}.jpg"
                write_image(root / "images" / relative, label, part_index * 1000 + i, size, seed)
                mapping[relative] = f"{label + 1:03d}"
        (root / f"{part}.json").write_text(json.dumps(mapping, indent=1))


def write_image_folder_layout(root: Path, num_classes: int, per_class: int, size: int, seed: int) -> None:
    """torchvision ``ImageFolder`` trees ``<root>/{train,val,test}/<class>/…``."""
    for part_index, part in enumerate(SPLITS):
        for label, name in enumerate(classnames_for(num_classes)):
            for i in range(per_class):
                write_image(root / part / name / f"{i:03d}.jpg", label, part_index * 1000 + i, size, seed)
