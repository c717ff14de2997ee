"""Few-shot image classification on the CoOp benchmark datasets (Dassl layout, read as-is)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Literal

from lightning_prompts.data.arguments import check_shots
from lightning_prompts.data.dassl import (
    dataset_spec,
    few_shot_splits,
    fewshot_cache_path,
    layout_writer,
    read_dataset,
    read_fewshot_cache,
    read_imagenet_classnames,
    read_imagenet_variant,
    subsample_classes,
)
from lightning_prompts.data.image_datamodule import ImageClassificationDataModule, LoadedSplits, Synthetic
from lightning_prompts.data.images import ImageItem, check_known_classes, classnames_by_label
from lightning_prompts.errors import DatasetError
from lightning_prompts.registry import register_datamodule

SubsampleClasses = Literal["all", "base", "new", "base_to_novel"]


@register_datamodule()
class FewShotImageDataModule(ImageClassificationDataModule):
    """K-shot training on one of the 11 CoOp datasets, with CoOp's base/novel class splits.

    Args:
        root: the Dassl data root (the folder holding ``caltech-101/``, ``oxford_pets/``, …).
        dataset: ``"imagenet"``, ``"caltech101"``, ``"oxford_pets"``, ``"stanford_cars"``,
            ``"oxford_flowers"``, ``"food101"``, ``"fgvc_aircraft"``, ``"sun397"``, ``"dtd"``,
            ``"eurosat"`` or ``"ucf101"`` (Dassl names such as ``"Caltech101"`` work too).
        shots: images per class for training (``min(shots, 4)`` for validation); ``-1`` uses all.
        seed: the few-shot sampling seed (CoOp runs seeds 1, 2, 3).
        subsample_classes: ``"all"``; ``"base"``/``"new"`` (train and test on that half, CoOp's
            ``SUBSAMPLE_CLASSES``); or ``"base_to_novel"``: train on base, test on base *and* novel
            in one run (test sets ``"base"`` and ``"novel"``, each labelled from 0).
        use_fewshot_cache: use Dassl's ``split_fewshot/shot_K-seed_S.pkl`` when it exists.
        imagenet_variants: ImageNet only: extra test sets ``{name: folder}`` (relative to ``root`` or absolute)
            in TPT's layouts — ``imagenet-a``, ``imagenet-r`` (200 wnid folders), ``imagenet-sketch`` (1,000),
            ``imagenetv2`` (folders ``0`` … ``999``); each is scored on its own classes (the 200-class mask),
            after ImageNet's own test set (CoOp's domain-generalisation and TPT's protocols).
        **kwargs: loader and preprocessing settings of :class:`ImageClassificationDataModule`, whose
            defaults are CoOp's (batch 32, test batch 100, 224 px, CLIP preprocessing).
    """

    def __init__(
        self,
        root: str = "data",
        dataset: str = "caltech101",
        shots: int = 16,
        seed: int = 1,
        subsample_classes: SubsampleClasses = "all",
        use_fewshot_cache: bool = True,
        imagenet_variants: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        check_shots(shots)
        super().__init__(root, **kwargs)
        self.spec = dataset_spec(dataset)
        if imagenet_variants and (self.spec.layout != "imagenet" or subsample_classes != "all"):
            raise ValueError("imagenet_variants are test sets of ImageNet with subsample_classes='all'.")
        self.imagenet_variants = dict(imagenet_variants or {})
        if subsample_classes not in ("all", "base", "new", "base_to_novel"):
            raise ValueError(f"subsample_classes must be all/base/new/base_to_novel, got {subsample_classes!r}.")
        self.shots, self.seed, self.subsample = shots, seed, subsample_classes
        self.use_fewshot_cache = use_fewshot_cache

    @property
    def description(self) -> str:
        return f"{self.spec.name} ({self.root / self.spec.dataset_dir})"

    def write_synthetic(self, root: Path, spec: Synthetic) -> None:
        target = root / self.spec.dataset_dir
        writer = layout_writer(self.spec)
        per_class = max(spec.images_per_class, self.shots)  # enough images for the shots asked for
        sizes = (spec.num_classes, per_class, spec.image_size, spec.seed)
        if self.spec.layout == "split_json":
            assert self.spec.split_file is not None
            writer(target, self.spec.image_dir, self.spec.split_file, *sizes)
        else:
            writer(target, *sizes)
        for index, folder in enumerate(self.imagenet_variants.values()):  # a variant with every other class
            variant = root / folder
            for class_dir in sorted((target / "images" / "val").iterdir())[index % 2 :: 2]:
                shutil.copytree(class_dir, variant / class_dir.name, dirs_exist_ok=True)

    def mask_path(self, item: ImageItem) -> Path:
        """DAPT-S layout: ``<dataset folder>/mask/<path under the image folder>``, with the image's own
        file name (as DAPT's released masks) or as PNG; DAPT's flat ``mask/<file name>`` (its layout for
        Pets, Flowers, Aircraft and Cars) is read too. The first candidate is named when none exists."""
        dataset_root = self.root / self.spec.dataset_dir
        relative = item.path.relative_to(dataset_root / self.spec.image_dir)
        mirrored = dataset_root / "mask" / relative
        candidates = (mirrored.with_suffix(".png"), mirrored, dataset_root / "mask" / relative.name)
        return next((path for path in candidates if path.is_file()), candidates[0])

    def load_splits(self) -> LoadedSplits:
        splits = read_dataset(self.root, self.spec)
        where = self.description
        classnames = classnames_by_label(splits["train"], f"{where} train split")
        for split in ("val", "test"):
            check_known_classes(splits[split], classnames, f"{where} {split} split")
        train, val = self._few_shot(splits["train"], splits["val"])
        test = splits["test"]
        if self.subsample == "base_to_novel":
            base_train, base_val, base_test = subsample_classes("base", train, val, test)
            novel_train, novel_test = subsample_classes("new", train, test)
            base_names = classnames_by_label(base_train, where)
            novel_names = classnames_by_label(novel_train, where)
            for half, names in (("base", base_names), ("novel", novel_names)):
                if len(names) < 2:  # a one-class test scores 100 % whatever the model does
                    raise DatasetError(
                        f"{where}: base-to-novel splits {len(classnames)} classes into halves, and the {half} half "
                        f"has {len(names)} ({names}); each half needs at least two classes to be scored."
                    )
            test_sets = {"base": (base_names, base_test), "novel": (novel_names, novel_test)}
            return LoadedSplits(base_names, base_train, base_val, test_sets)
        train, val, test = subsample_classes(self.subsample, train, val, test)
        names = classnames_by_label(train, where)
        if not self.imagenet_variants:
            return LoadedSplits(names, train, val, {"test": (names, test)})
        wnids = read_imagenet_classnames(self.root / self.spec.dataset_dir)
        test_sets = {"imagenet": (names, test)}
        for name, folder in self.imagenet_variants.items():
            path = Path(folder).expanduser()
            test_sets[name] = read_imagenet_variant(path if path.is_absolute() else self.root / path, wnids)
        return LoadedSplits(names, train, val, test_sets)

    def _few_shot(self, train: list, val: list) -> tuple[list, list]:
        if self.shots < 1:
            return train, val
        cache = fewshot_cache_path(self.root, self.spec, self.shots, self.seed)
        few_train, few_val = few_shot_splits(train, val, self.shots, self.seed, self.description)
        if self.use_fewshot_cache and cache.is_file():
            cached = read_fewshot_cache(cache, [*train, *val])
            if "train" not in cached:
                raise DatasetError(f"Few-shot cache {cache} has no 'train' list.")
            # ImageNet caches hold no val list (CoOp validates on the test set); keep our val subset
            few_train, few_val = cached["train"], cached.get("val", few_val)
        return few_train, few_val
