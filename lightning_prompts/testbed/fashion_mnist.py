"""Fashion-MNIST in the Dassl layout, from the IDX files of the Debian package ``dataset-fashion-mnist``.

``write_fashion_mnist(source, root)`` picks a fixed number of images per class (deterministic for a
seed: the official training set gives train and val, the official test set gives test), writes them
as PNG under ``<root>/fashion_mnist/images/<class>/``, a ``split_zhou_FashionMNIST.json`` that
:class:`~lightning_prompts.data.FewShotImageDataModule` reads as any CoOp dataset
(``dataset: fashion_mnist``), and a foreground mask per image under ``<root>/fashion_mnist/mask/``
mirroring the image tree (the images have a black background, so the mask is the non-dark pixels).
"""

from __future__ import annotations

import gzip
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

#: The Debian package's install location.
DEBIAN_SOURCE = "/usr/share/datasets/fashion-mnist"
#: Readable class names by label (the official names, lower-cased; "T-shirt/top" -> "t-shirt").
CLASSNAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
SPLIT_FILE = "split_zhou_FashionMNIST.json"
#: Pixel value above which a pixel is foreground in the masks.
MASK_THRESHOLD = 10


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): unsigned-byte tensors of MNIST-style datasets."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    zero, dtype, dims = data[0:2], data[2], data[3]
    if zero != b"\x00\x00" or dtype != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file.")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_split(source: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 28, 28)`` and labels ``(N,)`` of ``train`` or ``t10k``."""
    images = read_idx(_find(source, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(source, f"{prefix}-labels-idx1-ubyte"))
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{source}: {images.shape[0]} {prefix} images but {labels.shape[0]} labels.")
    return images, labels


def _find(source: Path, stem: str) -> Path:
    for candidate in (source / f"{stem}.gz", source / stem):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{source} has no {stem}(.gz). Install the Debian package dataset-fashion-mnist "
        f"(apt-get install dataset-fashion-mnist) or point --source at the IDX files."
    )


def write_fashion_mnist(
    source: str | Path = DEBIAN_SOURCE,
    root: str | Path = "data/testbed",
    train_per_class: int = 100,
    val_per_class: int = 20,
    test_per_class: int = 200,
    seed: int = 0,
) -> Path:
    """Write the Dassl tree and return the path of the split file (see the module docstring)."""
    from PIL import Image

    source, final_root = Path(source), Path(root) / "fashion_mnist"
    train_images, train_labels = load_split(source, "train")
    test_images, test_labels = load_split(source, "t10k")
    rng = np.random.default_rng(seed)
    final_root.parent.mkdir(parents=True, exist_ok=True)
    dataset_root = Path(tempfile.mkdtemp(prefix=".fashion_mnist.", dir=final_root.parent))  # renamed when complete
    split: dict[str, list[list[object]]] = {"train": [], "val": [], "test": []}
    for label, name in enumerate(CLASSNAMES):
        folder = name.replace(" ", "_")
        pool = rng.permutation(np.flatnonzero(train_labels == label))
        test_pool = rng.permutation(np.flatnonzero(test_labels == label))
        picks = {
            "train": (train_images, pool[:train_per_class]),
            "val": (train_images, pool[train_per_class : train_per_class + val_per_class]),
            "test": (test_images, test_pool[:test_per_class]),
        }
        for part, (images, indices) in picks.items():
            for index in sorted(int(i) for i in indices):
                relative = f"{folder}/{part}_{index:05d}.png"
                pixels = images[index]
                for tree, content in (("images", pixels), ("mask", (pixels > MASK_THRESHOLD).astype(np.uint8) * 255)):
                    target = dataset_root / tree / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(content).save(target)
                split[part].append([relative, label, name])
    (dataset_root / SPLIT_FILE).write_text(json.dumps(split, indent=1))
    if final_root.exists():
        shutil.rmtree(final_root)
    dataset_root.replace(final_root)
    return final_root / SPLIT_FILE


def first_per_class(entries: list[list], per_class: int) -> list[tuple[int, list]]:
    """The first ``per_class`` entries ``[path, label, name]`` of every label, with their index in ``entries``."""
    counts: dict[int, int] = {}
    kept = []
    for index, entry in enumerate(entries):
        counts[entry[1]] = counts.get(entry[1], 0) + 1
        if counts[entry[1]] <= per_class:
            kept.append((index, entry))
    return kept


def write_test_subset(data_root: str | Path, target_root: str | Path, per_class: int) -> Path:
    """A testbed root under ``target_root`` whose Fashion-MNIST test split keeps the first ``per_class`` images of
    every class (train and validation splits unchanged; the images are linked, not copied). Benchmarks whose test
    costs many forwards per image (TPT) or that test many runs (MVLPT) use it; returns the new root."""
    source = Path(data_root) / "fashion_mnist"
    target = Path(target_root) / "fashion_mnist"
    target.mkdir(parents=True, exist_ok=True)
    if not (target / "images").exists():
        (target / "images").symlink_to((source / "images").resolve())
    split = json.loads((source / SPLIT_FILE).read_text())
    kept = [entry for _, entry in first_per_class(split["test"], per_class)]
    (target / SPLIT_FILE).write_text(json.dumps({**split, "test": kept}))
    return target.parent
