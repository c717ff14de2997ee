"""The Dassl/CoOp few-shot benchmark format, read as-is.

Everything here follows the official CoOp dataset code (``datasets/*.py`` in KaiyangZhou/CoOp
and Dassl's ``base_dataset.py``), so users reuse the split files and caches they already have:

* ``<root>/<dataset_dir>/split_zhou_<Name>.json``: ``{"train"|"val"|"test": [[path, label, classname], …]}``
  with paths relative to the image directory (the dataset directory for Stanford Cars);
* ImageNet: ``classnames.txt`` (``<wnid> <name>``) and ``images/{train,val}/<wnid>/``; the official val
  set is the test set (and, as in CoOp, also the validation set);
* FGVC-Aircraft: ``variants.txt`` and ``images_variant_{train,val,test}.txt``;
* few-shot subsets: per class in order of first appearance, ``random.sample(items, K)`` with a
  ``random.Random(seed)`` used first for train (K shots) then for val (``min(K, 4)`` shots); with
  Python's identical seeding this picks what Dassl's globally seeded ``random`` picks. An existing
  ``split_fewshot/shot_{K}-seed_{S}.pkl`` cache (pickled Dassl ``Datum`` objects) is used verbatim,
  read with an allow-list of exactly what a ``Datum`` needs (the file cannot run code);
* base/novel: labels of the train split sorted, the first ``ceil(n/2)`` are base, the rest novel,
  each relabelled from 0.

Unlike Dassl, a class with fewer than K images is an error, not a silent smaller class.
"""

from __future__ import annotations

import math
import random
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lightning_prompts.data.images import ImageItem
from lightning_prompts.errors import DatasetError
from lightning_prompts.utils.json_files import read_json
from lightning_prompts.utils.safe_pickle import load_dassl_fewshot_cache

Subsample = Literal["all", "base", "new"]


@dataclass(frozen=True)
class DasslDataset:
    """Where one benchmark dataset lives under the Dassl root.

    Attributes:
        name: Dassl's registry name (``"Caltech101"``).
        dataset_dir: folder under the root.
        image_dir: folder of the images, relative to ``dataset_dir`` (``""``: the dataset folder).
        split_file: the ``split_zhou_*.json`` file name, or ``None`` for the special readers.
        layout: ``"split_json"``, ``"imagenet"`` or ``"fgvc_aircraft"``.
    """

    name: str
    dataset_dir: str
    image_dir: str
    split_file: str | None
    layout: str = "split_json"


#: The 11 datasets of the CoOp benchmark (and the testbed's Fashion-MNIST and digits), by the short names recipes use.
DASSL_DATASETS: dict[str, DasslDataset] = {
    "imagenet": DasslDataset("ImageNet", "imagenet", "images", None, "imagenet"),
    "caltech101": DasslDataset("Caltech101", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"),
    "oxford_pets": DasslDataset("OxfordPets", "oxford_pets", "images", "split_zhou_OxfordPets.json"),
    "stanford_cars": DasslDataset("StanfordCars", "stanford_cars", "", "split_zhou_StanfordCars.json"),
    "oxford_flowers": DasslDataset("OxfordFlowers", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
    "food101": DasslDataset("Food101", "food-101", "images", "split_zhou_Food101.json"),
    "fgvc_aircraft": DasslDataset("FGVCAircraft", "fgvc_aircraft", "images", None, "fgvc_aircraft"),
    "sun397": DasslDataset("SUN397", "sun397", "SUN397", "split_zhou_SUN397.json"),
    "dtd": DasslDataset("DescribableTextures", "dtd", "images", "split_zhou_DescribableTextures.json"),
    "eurosat": DasslDataset("EuroSAT", "eurosat", "2750", "split_zhou_EuroSAT.json"),
    "ucf101": DasslDataset("UCF101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
    # not a CoOp dataset: the offline testbed's Fashion-MNIST (python -m lightning_prompts.testbed prepare)
    "fashion_mnist": DasslDataset("FashionMNIST", "fashion_mnist", "images", "split_zhou_FashionMNIST.json"),
    # nor these: the testbed's digit sets, MVLPT's source tasks (python -m lightning_prompts.testbed prepare-digits)
    "mnist": DasslDataset("MNIST", "mnist", "images", "split_zhou_MNIST.json"),
    "digits": DasslDataset("Digits", "digits", "images", "split_zhou_Digits.json"),
}


def dataset_spec(name: str) -> DasslDataset:
    """Look a dataset up by short name (``"caltech101"``) or Dassl name (``"Caltech101"``)."""
    key = name.lower()
    for short, spec in DASSL_DATASETS.items():
        if key in (short, spec.name.lower()):
            return spec
    raise DatasetError(f"Unknown Dassl dataset {name!r}; known: {sorted(DASSL_DATASETS)}.")


# -- readers --------------------------------------------------------------------------------------
def read_split_json(split_path: Path, image_root: Path) -> dict[str, list[ImageItem]]:
    """Read a ``split_zhou_*.json`` file (paths relative to ``image_root``)."""
    if not split_path.is_file():
        raise DatasetError(f"Split file {split_path} does not exist (expected the CoOp split_zhou_*.json file).")
    content = read_json(split_path, "Split file")
    splits: dict[str, list[ImageItem]] = {}
    for split in ("train", "val", "test"):
        if split not in content:
            raise DatasetError(f"Split file {split_path} has no {split!r} list.")
        items = []
        for index, entry in enumerate(content[split]):
            if not (isinstance(entry, list) and len(entry) == 3):
                raise DatasetError(
                    f"{split_path}: {split} entry {index} is {entry!r}; expected [relative_path, label, classname]."
                )
            path, label, classname = entry
            # int() would turn 1.7 into 1 and "3" into 3, and a bool is an int to Python: take whole numbers only
            if type(label) is not int or label < 0:
                raise DatasetError(
                    f"{split_path}: {split} entry {index} ({path}) has label {label!r}; labels are whole numbers "
                    f"from 0 (the class index), as in CoOp's split files."
                )
            items.append(ImageItem(image_root / path, label, str(classname)))
        repeated = [path for path, count in Counter(item.path for item in items).items() if count > 1]
        if repeated:  # warned, not refused (a published split file may hold some): each copy is drawn and scored
            warnings.warn(
                f"{split_path}: the {split} list gives {len(repeated)} image(s) more than once, e.g. "
                f"{repeated[0].relative_to(image_root)}; each copy is drawn and scored as its own image.",
                UserWarning,
                stacklevel=2,
            )
        splits[split] = items
    seen = {item.path for item in splits["train"]}
    leaked = [item.path for item in splits["test"] if item.path in seen]
    if leaked:  # kept (the file is the user's protocol), but test accuracy would be inflated
        warnings.warn(
            f"{split_path}: {len(leaked)} test image(s) are also training images, e.g. "
            f"{leaked[0].relative_to(image_root)}; test accuracy counts images the prompt was trained on.",
            UserWarning,
            stacklevel=2,
        )
    return splits


def read_imagenet_classnames(dataset_root: Path) -> dict[str, str]:
    """CoOp's ImageNet ``classnames.txt``: ``{wnid: class name}``."""
    names_file = dataset_root / "classnames.txt"
    if not names_file.is_file():
        raise DatasetError(f"{names_file} does not exist (expected CoOp's ImageNet classnames.txt: '<wnid> <name>').")
    classnames: dict[str, str] = {}
    for number, line in enumerate(names_file.read_text().splitlines(), 1):
        if line.strip():
            wnid, _, name = line.strip().partition(" ")
            if not name:
                raise DatasetError(f"{names_file}:{number}: expected '<wnid> <class name>', got {line!r}.")
            classnames[wnid] = name
    return classnames


def read_imagenet_variant(folder: Path, classnames: dict[str, str]) -> tuple[list[str], list[ImageItem]]:
    """An ImageNet test variant as TPT and CoOp's domain-generalisation protocol read it: class folders named
    by wnid (ImageNet-A and -R: 200 classes; ImageNet-Sketch: 1,000) or by class index in ImageNet's sorted-wnid
    order (ImageNetV2's ``0`` … ``999``). Returns the variant's classes in ImageNet's order and its images
    labelled within them, so a method scores only the classes the variant has (the 200-class mask of -A/-R)."""
    if not folder.is_dir():
        raise DatasetError(f"ImageNet variant folder {folder} does not exist.")
    ordered = sorted(classnames)
    class_dirs = [p for p in folder.iterdir() if p.is_dir()]
    if not class_dirs:
        raise DatasetError(f"ImageNet variant folder {folder} has no class folders.")
    by_wnid: dict[str, Path] = {}
    for class_dir in class_dirs:
        if class_dir.name.isdigit():  # ImageNetV2: the class index
            index = int(class_dir.name)
            if index >= len(ordered):
                raise DatasetError(f"{class_dir}: class index {index}, but ImageNet has {len(ordered)} classes.")
            by_wnid[ordered[index]] = class_dir
        elif class_dir.name in classnames:
            by_wnid[class_dir.name] = class_dir
        else:
            raise DatasetError(f"{class_dir}: {class_dir.name!r} is neither an ImageNet wnid nor a class index.")
    present = [wnid for wnid in ordered if wnid in by_wnid]
    items = [
        ImageItem(path, label, classnames[wnid])
        for label, wnid in enumerate(present)
        for path in sorted(by_wnid[wnid].iterdir())
        if path.is_file() and not path.name.startswith(".")
    ]
    return [classnames[wnid] for wnid in present], items


def read_imagenet(dataset_root: Path) -> dict[str, list[ImageItem]]:
    """Read CoOp's ImageNet layout: the official val set is both validation and test set."""
    names_file = dataset_root / "classnames.txt"
    classnames = read_imagenet_classnames(dataset_root)
    splits: dict[str, list[ImageItem]] = {}
    for split, folder in (("train", "train"), ("test", "val")):
        image_root = dataset_root / "images" / folder
        if not image_root.is_dir():
            raise DatasetError(f"ImageNet image folder {image_root} does not exist.")
        items = []
        for label, class_dir in enumerate(sorted(p for p in image_root.iterdir() if p.is_dir())):
            if class_dir.name not in classnames:
                raise DatasetError(f"{class_dir}: folder {class_dir.name!r} is not a class of {names_file}.")
            name = classnames[class_dir.name]
            items.extend(
                ImageItem(path, label, name)
                for path in sorted(class_dir.iterdir())
                if path.is_file() and not path.name.startswith(".")
            )
        splits[split] = items
    splits["val"] = splits["test"]
    return splits


def read_fgvc_aircraft(dataset_root: Path) -> dict[str, list[ImageItem]]:
    """Read FGVC-Aircraft's official variant lists (``variants.txt``, ``images_variant_*.txt``)."""
    variants_file = dataset_root / "variants.txt"
    if not variants_file.is_file():
        raise DatasetError(f"{variants_file} does not exist (FGVC-Aircraft's list of variants).")
    names = [line.strip() for line in variants_file.read_text().splitlines() if line.strip()]
    labels = {name: index for index, name in enumerate(names)}
    splits = {}
    for split in ("train", "val", "test"):
        list_file = dataset_root / f"images_variant_{split}.txt"
        if not list_file.is_file():
            raise DatasetError(f"{list_file} does not exist (FGVC-Aircraft's '<image id> <variant>' list).")
        items = []
        for number, line in enumerate(list_file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            image_id, _, variant = line.strip().partition(" ")
            if variant not in labels:
                raise DatasetError(f"{list_file}:{number}: variant {variant!r} is not in {variants_file}.")
            items.append(ImageItem(dataset_root / "images" / f"{image_id}.jpg", labels[variant], variant))
        splits[split] = items
    return splits


def read_dataset(root: Path, spec: DasslDataset) -> dict[str, list[ImageItem]]:
    """Read ``train``/``val``/``test`` of a Dassl dataset under ``root``."""
    dataset_root = root / spec.dataset_dir
    if not dataset_root.is_dir():
        raise DatasetError(
            f"{spec.name}: folder {dataset_root} does not exist (expected {spec.dataset_dir!r} under the root {root})."
        )
    if spec.layout == "imagenet":
        return read_imagenet(dataset_root)
    if spec.layout == "fgvc_aircraft":
        return read_fgvc_aircraft(dataset_root)
    assert spec.split_file is not None
    return read_split_json(dataset_root / spec.split_file, dataset_root / spec.image_dir)


# -- few-shot sampling ------------------------------------------------------------------------------
def group_by_label(items: Sequence[ImageItem]) -> dict[int, list[ImageItem]]:
    """Items per label, labels in order of first appearance (Dassl's ``split_dataset_by_label``)."""
    groups: dict[int, list[ImageItem]] = {}
    for item in items:
        groups.setdefault(item.label, []).append(item)
    return groups


def sample_few_shot(items: Sequence[ImageItem], shots: int, rng: random.Random, where: str) -> list[ImageItem]:
    """``shots`` items per class with ``rng.sample``; ``shots < 1`` keeps everything."""
    if shots < 1:
        return list(items)
    chosen: list[ImageItem] = []
    for label, group in group_by_label(items).items():
        if len(group) < shots:
            raise DatasetError(
                f"{where}: class {group[0].classname!r} (label {label}) has {len(group)} images, fewer than the "
                f"{shots} shots requested."
            )
        chosen.extend(rng.sample(group, shots))
    return chosen


def few_shot_splits(
    train: Sequence[ImageItem], val: Sequence[ImageItem], shots: int, seed: int, where: str
) -> tuple[list[ImageItem], list[ImageItem]]:
    """Dassl's few-shot train (``shots``) and val (``min(shots, 4)``) subsets for ``seed``.

    Deterministic and independent of any global random state, so every DDP rank draws the same.
    """
    rng = random.Random(seed)
    few_train = sample_few_shot(train, shots, rng, f"{where} train split")
    few_val = sample_few_shot(val, min(shots, 4), rng, f"{where} val split") if val else []
    return few_train, few_val


def subsample_classes(
    subsample: Subsample, train: Sequence[ImageItem], *others: Sequence[ImageItem]
) -> list[list[ImageItem]]:
    """CoOp's ``subsample_classes``: keep the base (first ``ceil(n/2)`` sorted train labels) or new
    classes, relabelled from 0, in ``train`` and every other list."""
    lists = [list(train), *(list(o) for o in others)]
    if subsample == "all":
        return lists
    if subsample not in ("base", "new"):
        raise ValueError(f"subsample must be 'all', 'base' or 'new', got {subsample!r}.")
    labels = sorted({item.label for item in train})
    half = math.ceil(len(labels) / 2)
    selected = labels[:half] if subsample == "base" else labels[half:]
    relabel = {old: new for new, old in enumerate(selected)}
    return [[ImageItem(i.path, relabel[i.label], i.classname) for i in items if i.label in relabel] for items in lists]


# -- Dassl's few-shot cache -----------------------------------------------------------------------
def fewshot_cache_path(root: Path, spec: DasslDataset, shots: int, seed: int) -> Path:
    return root / spec.dataset_dir / "split_fewshot" / f"shot_{shots}-seed_{seed}.pkl"


def read_fewshot_cache(path: Path, known: Sequence[ImageItem]) -> dict[str, list[ImageItem]]:
    """Read Dassl's ``shot_K-seed_S.pkl`` (an allow-list of exactly what a Dassl ``Datum`` needs, so the
    file cannot run code); its absolute paths are matched to the split's images by their path relative
    to the image folder, so a moved data root still works."""
    content = load_dassl_fewshot_cache(path)
    by_suffix = {item.path.as_posix(): item for item in known}
    suffixes = _suffix_index(by_suffix)
    result = {}
    for split, data in content.items():
        items = []
        for datum in data:
            stored = Path(str(getattr(datum, "_impath", ""))).as_posix()
            match = _match_suffix(stored, suffixes)
            if match is None:
                raise DatasetError(f"Few-shot cache {path}: image {stored} is not in the dataset's split.")
            items.append(match)
        result[split] = items
    return result


_SUFFIX_DEPTH = 4  # class folder + file name is enough for every dataset; keep the index small


def _suffix_index(items: dict[str, ImageItem]) -> dict[str, ImageItem]:
    index: dict[str, ImageItem] = {}
    for posix, item in items.items():
        parts = posix.split("/")
        for depth in range(1, min(len(parts), _SUFFIX_DEPTH) + 1):
            index.setdefault("/".join(parts[-depth:]), item)
    return index


def _match_suffix(stored: str, index: dict[str, ImageItem]) -> ImageItem | None:
    parts = stored.split("/")
    for depth in range(min(len(parts), _SUFFIX_DEPTH), 0, -1):  # longest suffix first
        found = index.get("/".join(parts[-depth:]))
        if found is not None:
            return found
    return None


def layout_writer(spec: DasslDataset) -> Callable[..., None]:
    """The synthetic-data writer for ``spec``'s layout (see :mod:`lightning_prompts.data.synthetic`)."""
    from lightning_prompts.data import synthetic

    return {
        "split_json": synthetic.write_split_json_layout,
        "imagenet": synthetic.write_imagenet_layout,
        "fgvc_aircraft": synthetic.write_fgvc_aircraft_layout,
    }[spec.layout]
