"""Fine-grained benchmarks (CUB-200-2011 & co.) in VPT's json format.

``<root>/images/…`` plus ``train.json``, ``val.json``, ``test.json``, each mapping an image path
(relative to ``images/``) to a class id. Ids are relabelled ``0..C-1`` in sorted order, as VPT's
loader does (``sorted(set(anno.values()))``: strings such as CUB's zero-padded ``"001"``..``"200"`` in string
order, JSON integers in numeric order); class names come from the folder names (``"001.Black_footed_Albatross"``
-> ``"Black footed Albatross"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_prompts.data.image_datamodule import ImageClassificationDataModule, LoadedSplits, Synthetic
from lightning_prompts.data.images import ImageItem, check_known_classes
from lightning_prompts.data.synthetic import write_json_map_layout
from lightning_prompts.data.transforms import Augmentation
from lightning_prompts.errors import DatasetError
from lightning_prompts.registry import register_datamodule
from lightning_prompts.utils.json_files import read_json


def _readable(folder: str) -> str:
    _, _, name = folder.partition(".")
    return (name or folder).replace("_", " ")


@register_datamodule()
class FGVCDataModule(ImageClassificationDataModule):
    """A VPT-format fine-grained dataset (CUB, NABirds, Oxford Flowers, Stanford Dogs/Cars).

    Args:
        root: the dataset folder (``CUB_200_2011`` with ``images/`` and the three json files).
        batch_size, eval_batch_size, augmentation, normalization: as in VPT's FGVC runs.
        **kwargs: other settings of :class:`ImageClassificationDataModule`.
    """

    def __init__(
        self,
        root: str = "data/CUB_200_2011",
        batch_size: int = 128,
        eval_batch_size: int = 256,
        augmentation: Augmentation = "fgvc",
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

    def write_synthetic(self, root: Path, spec: Synthetic) -> None:
        write_json_map_layout(root, spec.num_classes, spec.images_per_class, spec.image_size, spec.seed)

    def _read(self, split: str) -> dict[str, Any]:
        """The split's file as written: image path -> class id (a JSON string or integer)."""
        path = self.root / f"{split}.json"
        if not path.is_file():
            raise DatasetError(f"{path} does not exist (VPT's FGVC split: image path -> class id).")
        content = read_json(path, "FGVC split")
        if not isinstance(content, dict):
            raise DatasetError(
                f"{path} holds a JSON {type(content).__name__}; VPT's FGVC split is one object mapping each image "
                f'path to its class id ({{"001.Black_footed_Albatross/x.jpg": "001", …}}).'
            )
        return {str(k): v for k, v in content.items()}

    def load_splits(self) -> LoadedSplits:
        written = {split: self._read(split) for split in ("train", "val", "test")}
        # ordered as VPT's sorted(set(anno.values())) orders the train ids: JSON integers numerically (10 after 9)
        train_ids = written["train"].values()
        numeric = all(isinstance(value, int) and not isinstance(value, bool) for value in train_ids)
        ids = [str(value) for value in (sorted(set(train_ids)) if numeric else sorted({str(v) for v in train_ids}))]
        label_of = {class_id: label for label, class_id in enumerate(ids)}
        raw = {split: {path: str(value) for path, value in mapping.items()} for split, mapping in written.items()}
        folder_of: dict[str, str] = {}
        for path, class_id in raw["train"].items():
            folder_of.setdefault(class_id, path.split("/")[0] if "/" in path else class_id)
        classnames = [_readable(folder_of[class_id]) for class_id in ids]
        splits: dict[str, list[ImageItem]] = {}
        for split, mapping in raw.items():
            items = []
            for index, (path, class_id) in enumerate(mapping.items()):
                if class_id not in label_of:
                    raise DatasetError(
                        f"{self.root / (split + '.json')}: entry {index} ({path}) has class id {class_id!r}, which the "
                        f"train split does not have."
                    )
                items.append(ImageItem(self.root / "images" / path, label_of[class_id], classnames[label_of[class_id]]))
            splits[split] = items
        check_known_classes(splits["val"], classnames, "val.json")
        return LoadedSplits(classnames, splits["train"], splits["val"], {"test": (classnames, splits["test"])})
