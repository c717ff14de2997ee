"""VTAB-1k from local folders, in the layout NOAH and PETL-ViT share (VPT's own loader uses TFDS).

``<root>/<task>/{train800,val200,train800val200,test}.txt``, one ``images/<split>/<file> <label>``
line per image, labels from 0. Final runs train on ``train800val200`` and test on ``test``;
tuning runs train on ``train800`` and validate on ``val200``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_prompts.data.image_datamodule import ImageClassificationDataModule, LoadedSplits, Synthetic
from lightning_prompts.data.images import ImageItem, check_known_classes
from lightning_prompts.data.synthetic import write_list_layout
from lightning_prompts.data.transforms import Augmentation
from lightning_prompts.errors import DatasetError
from lightning_prompts.registry import register_datamodule

#: The 19 VTAB-1k tasks (folder name -> number of classes) and their groups.
VTAB_TASKS: dict[str, int] = {
    "caltech101": 102,
    "cifar": 100,
    "dtd": 47,
    "oxford_flowers102": 102,
    "oxford_iiit_pet": 37,
    "svhn": 10,
    "sun397": 397,
    "patch_camelyon": 2,
    "eurosat": 10,
    "resisc45": 45,
    "diabetic_retinopathy": 5,
    "clevr_count": 8,
    "clevr_dist": 6,
    "dmlab": 6,
    "kitti": 4,
    "dsprites_loc": 16,
    "dsprites_ori": 16,
    "smallnorb_azi": 18,
    "smallnorb_ele": 9,
}
VTAB_GROUPS: dict[str, list[str]] = {
    "natural": ["caltech101", "cifar", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn", "sun397"],
    "specialized": ["patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"],
    "structured": [
        "clevr_count",
        "clevr_dist",
        "dmlab",
        "kitti",
        "dsprites_loc",
        "dsprites_ori",
        "smallnorb_azi",
        "smallnorb_ele",
    ],
}


def read_list_file(path: Path, task_root: Path) -> list[tuple[Path, int]]:
    """``(image path, label)`` pairs of a ``<relative path> <label>`` list file."""
    if not path.is_file():
        raise DatasetError(f"VTAB-1k list {path} does not exist.")
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        relative, _, label = line.strip().rpartition(" ")
        if not relative or not label.lstrip("-").isdigit():
            raise DatasetError(f"{path}:{number}: expected '<relative path> <label>', got {line!r}.")
        if int(label) < 0:  # cross_entropy would fail on it mid-epoch (an unlabelled -1 has no place in VTAB-1k)
            raise DatasetError(f"{path}:{number}: label {label} is negative; VTAB-1k labels run from 0 to C-1.")
        pairs.append((task_root / relative, int(label)))
    return pairs


@register_datamodule()
class VTAB1kDataModule(ImageClassificationDataModule):
    """One VTAB-1k task from local folders.

    Args:
        root: the ``vtab-1k`` folder.
        task: one of :data:`VTAB_TASKS`.
        mode: ``"final"`` (train800val200 -> test) or ``"tune"`` (train800 -> val200, which is also the test set).
        batch_size, eval_batch_size, augmentation, normalization: as in VPT's VTAB runs (224 px
            resize, no augmentation, ImageNet mean/std).
        **kwargs: other settings of :class:`ImageClassificationDataModule`.
    """

    def __init__(
        self,
        root: str = "data/vtab-1k",
        task: str = "cifar",
        mode: str = "final",
        batch_size: int = 64,
        eval_batch_size: int = 256,
        augmentation: Augmentation = "vtab",
        normalization: str = "imagenet",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            root,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            augmentation=augmentation,
            normalization=normalization,
            **kwargs,
        )
        if task not in VTAB_TASKS:
            raise ValueError(f"Unknown VTAB-1k task {task!r}; known: {sorted(VTAB_TASKS)}.")
        if mode not in ("final", "tune"):
            raise ValueError(f"mode must be 'final' or 'tune', got {mode!r}.")
        self.task, self.mode = task, mode

    @property
    def _lists(self) -> dict[str, str]:
        if self.mode == "final":
            return {"train": "train800val200.txt", "val": "val200.txt", "test": "test.txt"}
        return {"train": "train800.txt", "val": "val200.txt", "test": "val200.txt"}

    def write_synthetic(self, root: Path, spec: Synthetic) -> None:
        task_root = root / self.task
        names = {
            "train800val200": "train800val200.txt",
            "train800": "train800.txt",
            "val200": "val200.txt",
            "test": "test.txt",
        }
        write_list_layout(task_root, names, spec.num_classes, spec.images_per_class, spec.image_size, spec.seed)

    def load_splits(self) -> LoadedSplits:
        task_root = self.root / self.task
        if not task_root.is_dir():
            raise DatasetError(f"VTAB-1k task folder {task_root} does not exist.")
        pairs = {split: read_list_file(task_root / name, task_root) for split, name in self._lists.items()}
        if not pairs["train"]:
            raise DatasetError(
                f"VTAB-1k list {task_root / self._lists['train']} lists no images; expected one "
                f"'<relative path> <label>' line per training image."
            )
        count = max(label for _, label in pairs["train"]) + 1
        # VTAB's class names are not in the lists; tasks are benchmarks for heads trained on label ids
        classnames = [f"class {i}" for i in range(count)]
        splits = {
            split: [ImageItem(path, label, f"class {label}") for path, label in items] for split, items in pairs.items()
        }
        for split in ("val", "test"):
            check_known_classes(splits[split], classnames, f"VTAB-1k {self.task} {self._lists[split]}")
        return LoadedSplits(classnames, splits["train"], splits["val"], {"test": (classnames, splits["test"])})
