"""Shared machinery of the image classification data modules.

A subclass reads its on-disk format in :meth:`ImageClassificationDataModule.load_splits`; this
base class validates what was read (known classes, readable images) *before* training starts,
applies the benchmark's transforms and builds the loaders.

Protocol with the methods (data knows nothing of models; methods read these attributes):

* ``classnames``: the training classes in label order (the CLI links them to ``model.classnames``);
* ``test_class_sets``: ``{set name: class names}`` in the order of ``test_dataloader()``; each test
  set is labelled from 0 in its own classes (base-to-novel: ``{"base": …, "novel": …}``);
* ``ood_test_sets``: the names of the OOD test sets (``ood_sets``), whose loaders follow the ID test
  set's; their images are unlabelled (label ``-1``) and the default evaluator becomes
  :class:`~lightning_prompts.evaluation.OODEvaluator`.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from lightning_prompts.batch import INDEX, MASK, PSEUDO_LABELLED, image_view
from lightning_prompts.data.arguments import check_at_least
from lightning_prompts.data.images import (
    ImageItem,
    ImageListDataset,
    read_unlabelled_images,
    verify_images,
    verify_masks,
)
from lightning_prompts.data.processes import drops_last, evaluation_loader, training_shard
from lightning_prompts.data.pseudolabels import (
    PseudoLabelledDataset,
    PseudoLabelPartition,
    PseudoLabelSplit,
    partition_for_pseudolabels,
    seen_and_unseen_classes,
)
from lightning_prompts.data.synthetic import write_unlabelled_images
from lightning_prompts.data.transforms import (
    Augmentation,
    TestViewAugmentation,
    build_test_view_transform,
    build_transform,
)
from lightning_prompts.errors import ConfigurationError, DatasetError


@dataclass
class Synthetic:
    """Generate a tiny dataset in the data module's own on-disk layout instead of reading ``root``.

    Used by the ``recipes/_tiny`` overlays and the tests: the real reader runs on kilobytes of
    generated images, so any recipe runs offline in seconds.

    Attributes:
        num_classes: classes to generate.
        images_per_class: images per class and split.
        image_size: side of the generated images.
        seed: seed of the generated pixels.
    """

    num_classes: int = 4
    images_per_class: int = 8
    image_size: int = 32
    seed: int = 0


@dataclass
class LoadedSplits:
    """What :meth:`ImageClassificationDataModule.load_splits` returns."""

    classnames: list[str]
    train: list[ImageItem]
    val: list[ImageItem]
    test_sets: dict[str, tuple[list[str], list[ImageItem]]] = field(default_factory=dict)


class ImageClassificationDataModule(LightningDataModule):
    """Base of the image data modules (see the module docstring).

    Args:
        root: the dataset root on disk.
        batch_size: training batch size (per process).
        eval_batch_size: validation/test batch size.
        num_workers: data-loading worker processes.
        image_size: side of the network input.
        augmentation: preprocessing preset (``"clip"``, ``"fgvc"``, ``"vtab"``; see ``transforms.py``).
        normalization: ``"clip"``, ``"imagenet"`` or ``"inception"`` mean/std.
        shuffle: shuffle the training set each epoch.
        verify_images: open every image header at ``setup`` so unreadable files fail before training.
        synthetic: generate a tiny dataset in this module's layout instead of reading ``root``.
        views: training views per image: 2 adds ``"image_view2"`` to each batch, a second independently
            augmented view (CoPrompt feeds it to the frozen teacher).
        masks: add each training image's foreground mask (``"mask"``, transformed with the image), read
            from a folder that mirrors the image tree (see :meth:`mask_path`).
        ood_sets: out-of-distribution test sets, ``{name: folder}``: every image under the folder, at
            any depth, in the layouts the OOD benchmarks ship (``iNaturalist/images/*.jpg``,
            ``dtd/images/<class>/*.jpg``); tested after the ID test set (see ``ood_test_sets``).
        test_views: N > 0 adds ``"image_views"`` ``(B, N, 3, H, W)`` to every test batch: N random views
            of each test image for test-time adaptation (TPT: 63), made as ``test_view_augmentation``
            says (``"crops"`` or ``"augmix"``; see
            :func:`~lightning_prompts.data.transforms.build_test_view_transform`).
        generated_views: K > 0 adds ``"generated_views"`` ``(B, K, 3, H, W)`` to every test batch: K images
            generated beforehand from each test image (DiffTPT: 63 Stable Diffusion image variations), read
            from ``generated_views_root`` in DiffTPT's layout, ``<root>/<image's folder>/<image stem>_<k><ext>``,
            resized and centre-cropped like the test image. Every file is checked at ``setup``.
        generated_views_root: the folder of the generated views.
        generated_views_listed: test only on the images listed in ``<generated_views_root>/selected_data_list.txt``,
            as DiffTPT's evaluation does (its ``image_generator_R.py`` picks 5 random images per class folder, writes
            their views and lists them there); otherwise every test image needs its views.
        pseudolabels: split the training images into labelled and unlabelled ones for pseudolabel prompt
            tuning (``{setting: ssl | ul | trzsl, ...}``, see
            :class:`~lightning_prompts.data.pseudolabels.PseudoLabelSplit`); the
            :class:`~lightning_prompts.callbacks.PseudoLabelRounds` callback then chooses the pseudolabels.
    """

    def __init__(
        self,
        root: str = "data",
        batch_size: int = 32,
        eval_batch_size: int = 100,
        num_workers: int = 4,
        image_size: int = 224,
        augmentation: Augmentation = "clip",
        normalization: str = "clip",
        shuffle: bool = True,
        verify_images: bool = True,
        synthetic: Synthetic | dict[str, Any] | None = None,
        views: int = 1,
        masks: bool = False,
        ood_sets: dict[str, str] | None = None,
        test_views: int = 0,
        test_view_augmentation: TestViewAugmentation = "crops",
        generated_views: int = 0,
        generated_views_root: str | None = None,
        generated_views_listed: bool = False,
        pseudolabels: PseudoLabelSplit | dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}.")
        check_at_least(
            batch_size=(batch_size, 1), eval_batch_size=(eval_batch_size, 1), image_size=(image_size, 1),
            num_workers=(num_workers, 0),
        )  # fmt: skip
        self.root = Path(root).expanduser()
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.image_size, self.augmentation, self.normalization = image_size, augmentation, normalization
        self.shuffle, self.verify = shuffle, verify_images
        self.synthetic = Synthetic(**synthetic) if isinstance(synthetic, dict) else synthetic  # from Python too
        if masks and augmentation == "randaugment":
            raise ValueError(
                "masks=True needs an augmentation whose geometric steps move the mask too; RandAugment (Dassl's) "
                "rotates, shears and translates the image alone. Use augmentation 'clip', 'fgvc' or 'vtab'."
            )
        self.views, self.masks = views, masks
        self.ood_sets = {str(name): Path(folder).expanduser() for name, folder in (ood_sets or {}).items()}
        if test_views < 0:
            raise ValueError(f"test_views must be >= 0, got {test_views}.")
        self.test_views, self.test_view_augmentation = test_views, test_view_augmentation
        if generated_views < 0 or (generated_views > 0) != (generated_views_root is not None):
            raise ValueError("generated_views (a count > 0) and generated_views_root come together.")
        self.generated_views = generated_views
        self.generated_views_root = Path(generated_views_root).expanduser() if generated_views_root else None
        if generated_views_listed and not generated_views:
            raise ValueError("generated_views_listed selects the test images by DiffTPT's list: set generated_views.")
        self.generated_views_listed = generated_views_listed
        self.pseudolabels = PseudoLabelSplit(**pseudolabels) if isinstance(pseudolabels, dict) else pseudolabels
        #: called before each epoch's training loader is built, so the pseudolabels of that epoch are in place
        #: (set by :class:`~lightning_prompts.callbacks.PseudoLabelRounds`)
        self.pseudolabel_refresh: Callable[[], None] | None = None
        self._partition: PseudoLabelPartition | None = None
        self._loaded: LoadedSplits | None = None
        self._datasets: dict[str, Any] = {}

    # -- what a subclass implements -------------------------------------------------------------
    def load_splits(self) -> LoadedSplits:
        """Read the on-disk split into labelled items (no image is opened here)."""
        raise NotImplementedError

    def write_synthetic(self, root: Path, spec: Synthetic) -> None:
        """Write a tiny dataset in this module's layout under ``root``."""
        raise NotImplementedError

    def mask_path(self, item: ImageItem) -> Path:
        """Where ``item``'s foreground mask is (layouts that have masks override this)."""
        raise NotImplementedError(f"{type(self).__name__} does not read foreground masks (masks=True).")

    @property
    def description(self) -> str:
        """How to name this dataset in messages."""
        return f"{type(self).__name__}(root={self.root})"

    # -- protocol with the methods ------------------------------------------------------------------
    @property
    def classnames(self) -> list[str]:
        return list(self._splits().classnames)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def test_class_sets(self) -> dict[str, list[str]]:
        return {name: list(names) for name, (names, _) in self._splits().test_sets.items()}

    @property
    def class_groups(self) -> dict[str, list[str]]:
        """``{"seen": …, "unseen": …}`` in the transductive zero-shot setting (``pseudolabels.setting: trzsl``):
        the test set is scored over all classes and reported per group and as their harmonic mean."""
        if self.pseudolabels is None or self.pseudolabels.setting != "trzsl":
            return {}
        names = self.classnames
        seen, unseen = seen_and_unseen_classes(names, self.pseudolabels, self.description)
        return {"seen": [names[i] for i in seen], "unseen": [names[i] for i in unseen]}

    @property
    def ood_test_sets(self) -> list[str]:
        """The OOD test sets, in the order their loaders follow the ID test set's."""
        return list(self.ood_sets)

    def default_evaluator(self) -> Any:
        """OOD detection when OOD sets are given, else accuracy (base-to-novel with several test sets)."""
        from lightning_prompts.evaluation import ClassificationEvaluator, OODEvaluator

        return OODEvaluator() if self.ood_sets else ClassificationEvaluator()

    @property
    def batch_keys(self) -> frozenset[str]:
        """Keys every training batch carries besides image and label (see :mod:`lightning_prompts.batch`)."""
        keys = {INDEX, *(image_view(view) for view in range(2, self.views + 1))}
        keys |= {PSEUDO_LABELLED} if self.pseudolabels is not None else set()
        return frozenset(keys | ({MASK} if self.masks else set()))

    def train_dataset(self) -> Any:
        """The training dataset (after ``setup("fit")``), for per-sample passes such as Grad-CAM masks."""
        if "train" not in self._datasets:
            self.setup("fit")
        return self._datasets["train"]

    def _splits(self) -> LoadedSplits:
        if self._loaded is None:
            if self.synthetic is not None and not (self.root / ".synthetic").exists():
                if self.root != Path("data"):  # the overlay's generated data replaces a root the user gave
                    rank_zero_warn(f"{type(self).__name__}: synthetic data is generated; root {self.root} is not read.")
                self.root = _synthetic_root()
                self.write_synthetic(self.root, self.synthetic)
                for index, name in enumerate(self.ood_sets):  # noise images stand in for each OOD folder
                    write_unlabelled_images(self.root / "ood" / name, self.synthetic.images_per_class, 16, seed=index)
                (self.root / ".synthetic").touch()
            if self.synthetic is not None:
                self.ood_sets = {name: self.root / "ood" / name for name in self.ood_sets}
            if not self.root.is_dir():
                raise DatasetError(f"{self.description}: dataset root {self.root} does not exist.")
            loaded = self.load_splits()
            if not loaded.train:
                raise DatasetError(f"{self.description}: the training split is empty.")
            self._loaded = loaded
        return self._loaded

    # -- Lightning hooks ----------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        splits = self._splits()
        train_tf = build_transform(self.augmentation, self.image_size, self.normalization, train=True)
        eval_tf = build_transform(self.augmentation, self.image_size, self.normalization, train=False)
        if stage in ("fit", "validate") and "train" not in self._datasets:
            mask_path = self.mask_path if self.masks else None
            if self.verify:
                verify_images(splits.train, f"{self.description} train split")
                verify_images(splits.val, f"{self.description} val split")
                if mask_path is not None:
                    verify_masks(splits.train, mask_path, f"{self.description} train split")
            if self.pseudolabels is None:
                self._datasets["train"] = ImageListDataset(splits.train, train_tf, self.views, mask_path)
                if not splits.val:
                    self._warn_validation_on_training_images()
                self._datasets["val"] = ImageListDataset(splits.val or splits.train, eval_tf)
            else:
                self._setup_pseudolabel_split(splits, train_tf, eval_tf, mask_path)
        if stage in ("test", "predict") and "test" not in self._datasets:
            if not splits.test_sets:
                raise DatasetError(f"{self.description}: there is no test split.")
            empty = [name for name, (_, items) in splits.test_sets.items() if not items]
            if empty:  # it would test 0 batches and report nothing
                raise DatasetError(
                    f"{self.description}: test split {empty[0]!r} holds no images; list the test images in the "
                    f"dataset's test split."
                )
            if self.verify:
                for name, (_, items) in splits.test_sets.items():
                    verify_images(items, f"{self.description} test split {name!r}")
            views: dict[str, Any] = {}
            if self.test_views:
                view_tf = build_test_view_transform(self.test_view_augmentation, self.image_size, self.normalization)
                views = {
                    "test_views": self.test_views,
                    "view_transform": view_tf,
                    "view_seed": getattr(self, "seed", 0),
                }
            generated: dict[str, Any] = {}
            if self.generated_views_listed:
                assert self.generated_views_root is not None
                splits.test_sets = {
                    name: (names, listed_images(items, self.generated_views_root, self.description))
                    for name, (names, items) in splits.test_sets.items()
                }
            if self.generated_views:
                for _, items in splits.test_sets.values():
                    check_generated_views(items, self.generated_view_path, self.generated_views, self.description)
                generated = {"generated_views": (self.generated_views, self.generated_view_path)}
            self._datasets["test"] = [
                ImageListDataset(items, eval_tf, **views, **generated) for _, items in splits.test_sets.values()
            ]
            for name, folder in self.ood_sets.items():
                items = read_unlabelled_images(folder, f"{self.description} OOD set {name!r}")
                if self.verify:
                    verify_images(items, f"{self.description} OOD set {name!r}")
                self._datasets["test"].append(ImageListDataset(items, eval_tf, **views))

    # -- pseudolabel prompt tuning ------------------------------------------------------------------
    def _setup_pseudolabel_split(self, splits: LoadedSplits, train_tf: Any, eval_tf: Any, mask_path: Any) -> None:
        assert self.pseudolabels is not None
        partition = partition_for_pseudolabels(splits.train, splits.classnames, self.pseudolabels, self.description)
        if not partition.unlabelled:
            setting = self.pseudolabels.setting
            raise DatasetError(f"{self.description}: the {setting} split leaves no unlabelled images.")
        self._partition = partition
        self._train_parts = (train_tf, mask_path)
        self._datasets["unlabelled"] = ImageListDataset(partition.unlabelled, eval_tf)
        self.set_pseudolabels([], [])
        if not (partition.labelled_val or splits.val):
            self._warn_validation_on_training_images()
        self._datasets["val"] = ImageListDataset(partition.labelled_val or splits.val or splits.train, eval_tf)

    def _warn_validation_on_training_images(self) -> None:
        # kept (recipes without a val split rely on it), but the `best` checkpoint is then chosen on training data
        rank_zero_warn(
            f"{self.description}: there is no validation split, so validation runs on the training images and "
            f"best-checkpoint selection is made on training data. Give the dataset a val split (a val/ folder, a "
            f"'val' list in the split file) to validate on held-out images."
        )

    @property
    def pseudolabel_partition(self) -> PseudoLabelPartition:
        """The labelled/unlabelled division of the training split (after ``setup("fit")``)."""
        if self._partition is None:
            raise ConfigurationError(f"{self.description}: pseudolabels are not configured (pseudolabels: ...).")
        return self._partition

    def unlabelled_dataset(self) -> Any:
        """The unlabelled training images with the evaluation preprocessing; their ``"label"`` is the true
        class, which pseudolabelling never reads (it is only reported as the pseudolabels' accuracy)."""
        self.pseudolabel_partition  # noqa: B018 - raises if pseudolabels are not configured
        return self._datasets["unlabelled"]

    def set_pseudolabels(self, indices: Sequence[int], labels: Sequence[int]) -> None:
        """Train on the labelled images plus ``unlabelled[indices]`` labelled ``labels`` from now on."""
        partition = self.pseudolabel_partition
        train_tf, mask_path = self._train_parts
        self._datasets["train"] = PseudoLabelledDataset(
            partition.labelled, partition.unlabelled, indices, labels, self.classnames, train_tf, self.views, mask_path
        )

    def generated_view_path(self, item: ImageItem, index: int) -> Path:
        """DiffTPT's layout: ``<generated_views_root>/<image's folder>/<image stem>_<index><ext>``."""
        assert self.generated_views_root is not None
        return self.generated_views_root / item.path.parent.name / f"{item.path.stem}_{index}{item.path.suffix}"

    def train_dataloader(self) -> DataLoader:
        if self.pseudolabel_refresh is not None:
            self.pseudolabel_refresh()
        dataset = self._datasets["train"]
        # Dassl drops the last partial batch only when there is more than one batch
        drop_last = drops_last(len(dataset), self.batch_size, self.trainer)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            sampler=None if self.shuffle else training_shard(dataset),
            drop_last=drop_last,
            num_workers=self.num_workers,
            # workers are re-created (and seeded from the main generator) every epoch, so a run resumed
            # from a checkpoint draws the same augmentations as the uninterrupted run
            persistent_workers=False,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self._datasets["val"])

    def test_dataloader(self) -> list[DataLoader]:
        return [self._eval_loader(dataset) for dataset in self._datasets["test"]]

    def predict_dataloader(self) -> list[DataLoader]:
        return self.test_dataloader()

    def _eval_loader(self, dataset: Any) -> DataLoader:
        return evaluation_loader(dataset, self.eval_batch_size, self.num_workers)


def _synthetic_root() -> Path:
    path = Path(tempfile.mkdtemp(prefix="lightning_prompts_synthetic_"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def listed_images(items: list[ImageItem], root: Path, where: str) -> list[ImageItem]:
    """The test images DiffTPT's ``<root>/selected_data_list.txt`` names (one path per line, as its generator
    writes them: ``<save folder>/<class folder>/<file>``), matched by class folder and file name."""
    listing = root / "selected_data_list.txt"
    if not listing.is_file():
        raise DatasetError(
            f"{where}: {listing} does not exist; DiffTPT's image_generator_R.py writes it beside the views it "
            f"generates (or set generated_views_listed: false to test on every test image)."
        )
    wanted = {tuple(Path(line.strip()).parts[-2:]) for line in listing.read_text().splitlines() if line.strip()}
    chosen = [item for item in items if (item.path.parent.name, item.path.name) in wanted]
    missing = sorted(wanted - {(item.path.parent.name, item.path.name) for item in chosen})
    if missing:
        raise DatasetError(
            f"{where}: {len(missing)} image(s) of {listing} are not in the test split (first: {'/'.join(missing[0])}); "
            f"generate the views from the test split's images."
        )
    return chosen


def check_generated_views(items: Any, path_of: Any, count: int, where: str) -> None:
    """Every test image has its ``count`` generated views (fail at ``setup``, naming the first missing one)."""
    for item in items:
        for index in range(count):
            path = path_of(item, index)
            if not path.is_file():
                raise DatasetError(
                    f"{where}: generated view {index} of {item.path.name} does not exist (expected {path})."
                )
