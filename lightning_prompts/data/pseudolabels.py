"""The labelled/unlabelled splits of pseudolabel prompt tuning (GRIP, FPL, IFPL; Menghini et al., NeurIPS 2023).

Any image data module splits its training images for one of the three settings of the paper when given
``pseudolabels: {setting: ...}`` (see :class:`PseudoLabelSplit`):

* ``ssl`` (semi-supervised): ``labelled_per_class`` images of every class are labelled (2 in the paper),
  the rest of the training split is unlabelled;
* ``ul`` (unsupervised): every training image is unlabelled;
* ``trzsl`` (transductive zero-shot): the training images of the *seen* classes are labelled, those of
  the *unseen* classes unlabelled, and pseudolabels range over the unseen classes only. The seen classes
  are given, or drawn as in the official code: ``numpy.random.seed(split_seed)`` then ``choice(C,
  int(0.62 C), replace=False)`` (split seeds 500, 0 and 200 in the paper).

The labelled images are split ``labelled_fraction`` (0.8) for training and the rest for validation, by
the official draw (``numpy.random.seed(seed)``, ``choice(n, int(0.8 n), replace=False)``); the few shots of
``ssl`` are drawn per class with the seed reset before every class, as the official code does. Without
labelled images (``ul``) validation uses the dataset's own validation split, for monitoring only (the
official code returns the last epoch's prompt, so validation selects nothing).

The training set of each epoch is the labelled training images plus the pseudolabelled images that
:class:`~lightning_prompts.callbacks.PseudoLabelRounds` chose; each sample carries ``"pseudo_labelled"``
so the loss can weigh the two parts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from lightning_prompts.batch import PSEUDO_LABELLED
from lightning_prompts.data.images import ImageItem, ImageListDataset
from lightning_prompts.errors import ConfigurationError, DatasetError

Setting = Literal["ssl", "ul", "trzsl"]


@dataclass
class PseudoLabelSplit:
    """Which training images are labelled (see the module docstring).

    Attributes:
        setting: ``"ssl"``, ``"ul"`` or ``"trzsl"``.
        labelled_per_class: labelled images per class in ``ssl`` (the paper: 2).
        labelled_fraction: share of the labelled images used for training; the rest validate.
        seen_classes: ``trzsl``: the seen classes by name; ``None`` draws them with ``split_seed``.
        seen_fraction: ``trzsl``: share of the classes that are seen when drawn (the official 0.62).
        split_seed: ``trzsl``: seed of the seen/unseen class draw.
        seed: seed of the labelled-shot and train/validation draws (the official ``validation_seed``, 0).
    """

    setting: Setting = "ssl"
    labelled_per_class: int = 2
    labelled_fraction: float = 0.8
    seen_classes: list[str] | None = None
    seen_fraction: float = 0.62
    split_seed: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        if self.setting not in ("ssl", "ul", "trzsl"):
            raise ValueError(f"pseudolabels.setting must be 'ssl', 'ul' or 'trzsl', got {self.setting!r}.")
        if self.labelled_per_class < 1:
            raise ValueError(f"pseudolabels.labelled_per_class must be >= 1, got {self.labelled_per_class}.")
        if not 0.0 < self.labelled_fraction <= 1.0:
            raise ValueError(f"pseudolabels.labelled_fraction must be in (0, 1], got {self.labelled_fraction}.")
        if not 0.0 < self.seen_fraction < 1.0:
            raise ValueError(f"pseudolabels.seen_fraction must be in (0, 1), got {self.seen_fraction}.")


@dataclass
class PseudoLabelPartition:
    """The training split divided for a setting: labelled training and validation images, the unlabelled
    images, and the class indices pseudolabels range over."""

    labelled: list[ImageItem]
    labelled_val: list[ImageItem]
    unlabelled: list[ImageItem]
    pseudolabel_classes: list[int] = field(default_factory=list)


def seen_class_split(num_classes: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """The official seen/unseen class draw: seen = ``choice(C, int(fraction C), replace=False)`` after
    ``numpy.random.seed(seed)`` (in draw order); unseen = the rest, ascending."""
    return official_subset(num_classes, fraction, seed)


def official_subset(count: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """``numpy.random.seed(seed); choice(range(count), int(count * fraction), replace=False)`` (kept, in
    draw order) and the rest (ascending): the official train/validation splits of labelled images and of
    pseudolabels."""
    kept = np.random.RandomState(seed).choice(range(count), size=int(count * fraction), replace=False)
    kept_list = [int(index) for index in kept]
    return kept_list, sorted(set(range(count)) - set(kept_list))


def partition_for_pseudolabels(
    train: Sequence[ImageItem], classnames: Sequence[str], spec: PseudoLabelSplit, where: str
) -> PseudoLabelPartition:
    """Divide a labelled training split for ``spec.setting`` (see the module docstring)."""
    labels = np.array([item.label for item in train])
    num_classes = len(classnames)
    if spec.setting == "ul":
        return PseudoLabelPartition([], [], list(train), list(range(num_classes)))
    if spec.setting == "ssl":
        chosen: list[int] = []
        for label in range(num_classes):
            members = np.where(labels == label)[0]
            if len(members) <= spec.labelled_per_class:
                raise DatasetError(
                    f"{where}: class {classnames[label]!r} has {len(members)} training images; the ssl setting "
                    f"labels {spec.labelled_per_class} and needs more to leave some unlabelled."
                )
            draw = np.random.RandomState(spec.seed).choice(members, size=spec.labelled_per_class, replace=False)
            chosen.extend(int(index) for index in draw)
        taken = set(chosen)
        labelled = [train[index] for index in chosen]
        unlabelled = [item for index, item in enumerate(train) if index not in taken]
        pseudo_classes = list(range(num_classes))
    else:
        seen, unseen = seen_and_unseen_classes(classnames, spec, where)
        seen_set = set(seen)
        labelled = [item for item in train if item.label in seen_set]
        unlabelled = [item for item in train if item.label not in seen_set]
        pseudo_classes = unseen
    kept, held = official_subset(len(labelled), spec.labelled_fraction, spec.seed)
    return PseudoLabelPartition(
        [labelled[index] for index in kept], [labelled[index] for index in held], unlabelled, pseudo_classes
    )


def seen_and_unseen_classes(
    classnames: Sequence[str], spec: PseudoLabelSplit, where: str
) -> tuple[list[int], list[int]]:
    """The seen and unseen class indices of the ``trzsl`` setting (given by name, or drawn)."""
    if spec.seen_classes is None:
        return seen_class_split(len(classnames), spec.seen_fraction, spec.split_seed)
    index = {name: position for position, name in enumerate(classnames)}
    unknown = [name for name in spec.seen_classes if name not in index]
    if unknown:
        raise ConfigurationError(f"{where}: pseudolabels.seen_classes {unknown} are not among the classes.")
    seen = [index[name] for name in spec.seen_classes]
    unseen = [position for position in range(len(classnames)) if position not in set(seen)]
    if not seen or not unseen:
        raise ConfigurationError(f"{where}: the trzsl setting needs both seen and unseen classes.")
    return seen, unseen


class PseudoLabelledDataset(ImageListDataset):
    """Labelled images followed by pseudolabelled ones; each sample carries ``"pseudo_labelled"``.

    Args:
        labelled: the labelled training images.
        unlabelled: every unlabelled image (pseudolabels index into it).
        indices: positions in ``unlabelled`` of the pseudolabelled images.
        labels: their pseudolabels (class indices).
        transform, views, mask_path: as :class:`~lightning_prompts.data.images.ImageListDataset`.
    """

    def __init__(
        self,
        labelled: Sequence[ImageItem],
        unlabelled: Sequence[ImageItem],
        indices: Sequence[int],
        labels: Sequence[int],
        classnames: Sequence[str],
        transform: Callable[..., Any] | None = None,
        views: int = 1,
        mask_path: Callable[[ImageItem], Path] | None = None,
    ) -> None:
        if len(indices) != len(labels):
            raise ValueError(f"{len(indices)} pseudolabelled indices but {len(labels)} labels.")
        pseudo = [
            ImageItem(unlabelled[int(index)].path, int(label), classnames[int(label)])
            for index, label in zip(indices, labels, strict=True)
        ]
        super().__init__([*labelled, *pseudo], transform, views, mask_path)
        self.num_labelled, self.num_pseudo = len(labelled), len(pseudo)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = super().__getitem__(index)
        sample[PSEUDO_LABELLED] = torch.tensor(index >= self.num_labelled)
        return sample
