"""``FrozenFeatureCache``: train a text-side prompt on precomputed image features (opt-in, not exact).

When a method leaves the image encoder unprompted and frozen (CoOp, KgCoOp-style recipes, zero-shot
CLIP), every training and validation step encodes images whose features could be
computed once. This callback computes the frozen image features of ``passes`` passes over the training
set when training starts (each pass with the training preprocessing, so random crops and flips give
``passes`` augmented copies) and hands epoch ``e``'s batches the features of pass ``e mod passes`` for
their images (``batch["image_features"]``); the method then skips its image encoder. A training set that
changes between epochs (pseudolabel rounds) encodes only the images it has not seen in this fit, and
:class:`~lightning_prompts.callbacks.PseudoLabelRounds` reads its unlabelled images' features from here too.
Validation images (deterministic evaluation preprocessing) are encoded once, at the first validation, and
reused every epoch: that part is exact.

Resuming is exact. Without pseudolabel rounds a resumed run encodes the training set as the first epoch
did (same batches, same seeded draws). With rounds the training features are also written into checkpoints
(``passes`` × the training images seen so far × the feature width, as float32), because a resumed run
would otherwise encode a later round's images in other batches with other augmentation draws than the
uninterrupted run, which encoded only the images each round added. ``checkpoint_features=False`` keeps such
checkpoints small, and the resumed run then ends close to, not equal to, the uninterrupted one.

Training on cached features is **not exact** to per-step augmentation: with random augmentation each
image is seen in ``passes`` augmented versions instead of a fresh one every epoch. With deterministic
preprocessing (resize and center crop) one pass reproduces the uncached run's features, and the run
equals the uncached one (the cache draws its augmentations from its own seeded generator, so the
training's shuffling and dropout draws are unchanged). The docs' testbed page shows the accuracy and
the time with and without.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from lightning_prompts.batch import IMAGE, IMAGE_FEATURES, INDEX
from lightning_prompts.data.protocols import TrainingSet, provided
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.registry import register_callback


@register_callback(family="clip")
class FrozenFeatureCache(Callback):
    """Precompute the frozen image features of ``passes`` augmented passes over the training set.

    Args:
        passes: augmented passes computed (epoch ``e`` uses pass ``e mod passes``); 1 for deterministic
            preprocessing.
        batch_size: images per encoder pass while filling the cache.
        checkpoint_features: write the cached training features into checkpoints when a callback changes the
            training set during the fit (:class:`~lightning_prompts.callbacks.PseudoLabelRounds`), so a resumed
            run equals the uninterrupted one (see the module docstring).
    """

    provides_batch_keys = (IMAGE_FEATURES,)

    def __init__(self, passes: int = 10, batch_size: int = 64, checkpoint_features: bool = True) -> None:
        super().__init__()
        if passes < 1:
            raise ValueError(f"passes must be at least 1, got {passes}.")
        self.passes, self.batch_size, self.checkpoint_features = passes, batch_size, checkpoint_features
        self.features: Tensor | None = None  # (passes, N, D): the current training set's
        self._train_dataset: Any = None
        self._stored: dict[tuple[int | str, str], Tensor] = {}  # (pass or preprocessing, image file) -> feature
        self._restored = False  # _stored came from this run's checkpoint (reset at setup, before any restore)
        self._training_set_changes = False  # a callback of the fit changes the training set (pseudolabel rounds)
        self._check_restored = False  # warn once if the restored features are of other files than the training set
        # validation features per data loader, keyed by the loader's dataset (a new dataset is re-encoded)
        self._eval_features: dict[int, tuple[Any, Tensor | None]] = {}
        self._current_eval: list[Tensor | None] = []

    def check_ready(self, module: Any, datamodule: Any | None, callbacks: Any = ()) -> None:
        if not getattr(module, "image_side_frozen", False):
            raise ConfigurationError(
                f"FrozenFeatureCache needs a method whose image encoder is frozen and unprompted; "
                f"{type(module).__name__} trains or prompts its image side."
            )
        if datamodule is not None and provided(datamodule, TrainingSet) is None:
            raise ConfigurationError("FrozenFeatureCache needs a data module that exposes train_dataset().")

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # before any restore, whatever the stage and strategy: features a validate/test checkpoint brought back
        # are not kept for a later fit
        self._restored = self._check_restored = False

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.features, self._train_dataset = None, None
        if not self._restored:  # a checkpoint's features restored by now are kept (FSDP and DeepSpeed restore later)
            self._stored = {}
        self._training_set_changes = any(getattr(c, "changes_training_set", False) for c in trainer.callbacks)

    def state_dict(self) -> dict[str, Any]:
        """The training passes' features by image file, when the training set may change during the fit: a resumed
        run reads them instead of encoding a later round's images otherwise than the uninterrupted run did."""
        if not (self.checkpoint_features and self._training_set_changes):
            return {}
        entries = [(version, key) for version, key in self._stored if isinstance(version, int)]
        if not entries:
            return {}
        return {
            "entries": [[version, key] for version, key in entries],
            "features": torch.stack([self._stored[entry] for entry in entries]),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        entries, features = state_dict.get("entries"), state_dict.get("features")
        valid = (
            isinstance(entries, list)
            and all(
                isinstance(e, (list, tuple)) and len(e) == 2 and type(e[0]) is int and isinstance(e[1], str)
                for e in entries
            )
            and isinstance(features, Tensor)
            and features.is_floating_point()
            and features.dim() == 2
            and features.shape[0] == len(entries)
        )
        if not valid:
            raise ConfigurationError(
                "FrozenFeatureCache: the checkpoint's cached features are malformed (expected 'entries', a list of "
                "[pass, image file] pairs, and 'features', one float row per entry); resume from another checkpoint "
                "or without the cache."
            )
        if not torch.isfinite(features).all():  # callbacks import no method module, so not the methods' check_finite
            raise ConfigurationError(
                "FrozenFeatureCache: the checkpoint's cached features hold NaN or infinite values."
            )
        self._stored = {(int(version), str(key)): row for (version, key), row in zip(entries, features.float())}
        self._restored = self._check_restored = True

    @torch.no_grad()
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dataset = trainer.datamodule.train_dataset()
        if self._check_restored:
            self._check_restored = False
            keys = _image_keys(dataset)
            if keys and not any((version, key) in self._stored for version in range(self.passes) for key in keys):
                rank_zero_warn(
                    "FrozenFeatureCache: the checkpoint's cached features are of other image files than this training "
                    "set's (a dataset moved to another folder?); its images are encoded again, so this run will end "
                    "close to, not equal to, the uninterrupted run."
                )
                self._stored = {}  # of no use, and checkpoints would carry them on
        if dataset is not self._train_dataset:  # the first epoch, or a training set that changed (pseudolabels)
            self.features = self.features_of(pl_module, dataset, list(range(self.passes)))
            self._train_dataset = dataset

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self.features is not None:
            chosen = self.features[trainer.current_epoch % self.passes, batch[INDEX].cpu()]
            batch[IMAGE_FEATURES] = chosen.to(pl_module.device, non_blocking=True)

    @torch.no_grad()
    def features_of(self, module: LightningModule, dataset: Any, versions: list[int | str]) -> Tensor:
        """Frozen image features ``(len(versions), N, D)`` of ``dataset`` in its order, one row per version: the
        training passes (ints) or another preprocessing of the same images (a name: ``"eval"`` for the
        pseudolabelling pass of :class:`~lightning_prompts.callbacks.PseudoLabelRounds`).

        Images of a dataset that lists them (``items`` with a ``path``) are kept by file for the whole fit, so a
        training set that changes between epochs encodes only the images it has not seen; other datasets are
        encoded whole. Versions are encoded in order from a generator of the cache's own, seeded from the run's
        seed: the training's random stream (shuffling, dropout) is the one it would be without the cache.
        """
        keys = _image_keys(dataset)
        missing = list(range(len(dataset)))
        if keys is not None:
            missing = [i for i, key in enumerate(keys) if any((v, key) not in self._stored for v in versions)]
        encoded: list[Tensor] = []
        if missing:
            part = dataset if len(missing) == len(dataset) else Subset(dataset, missing)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(torch.initial_seed() % 2**31)
                encoded = [self._encode(module, part, self.batch_size) for _ in versions]
        if keys is None:
            return torch.stack(encoded)
        for version, features in zip(versions, encoded):
            self._stored.update({(version, keys[i]): row for i, row in zip(missing, features)})
        return torch.stack([torch.stack([self._stored[(v, key)] for key in keys]) for v in versions])

    @torch.no_grad()
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        loaders = trainer.val_dataloaders
        loaders = list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
        self._current_eval = []
        for loader in loaders:
            dataset = getattr(loader, "dataset", None)
            cached = self._eval_features.get(id(dataset))
            if cached is None or cached[0] is not dataset:
                features = None
                if dataset is not None and hasattr(dataset, "__len__") and self._has_index(dataset):
                    with torch.random.fork_rng(devices=[]):
                        features = self._encode(pl_module, dataset, getattr(loader, "batch_size", None) or 64)
                cached = self._eval_features[id(dataset)] = (dataset, features)
            self._current_eval.append(cached[1])

    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        features = self._current_eval[dataloader_idx] if dataloader_idx < len(self._current_eval) else None
        if features is not None and isinstance(batch, dict) and INDEX in batch:
            batch[IMAGE_FEATURES] = features[batch[INDEX].cpu()].to(pl_module.device, non_blocking=True)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_features.clear()  # validation features are the fit's; a later validate re-encodes

    @staticmethod
    def _has_index(dataset: Any) -> bool:
        sample = dataset[0]
        return isinstance(sample, dict) and INDEX in sample and IMAGE in sample

    @staticmethod
    def _encode(module: LightningModule, dataset: Any, batch_size: int) -> Tensor:
        """Frozen image features ``(N, D)`` of every sample of ``dataset``, in dataset order."""
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator())
        return torch.cat([module.image_features(batch[IMAGE].to(module.device)).float().cpu() for batch in loader])


def _image_keys(dataset: Any) -> list[str] | None:
    """The image files of a dataset that lists them (``ImageListDataset`` and its subclasses), else ``None``."""
    items = getattr(dataset, "items", None)
    if not isinstance(items, (list, tuple)) or not all(hasattr(item, "path") for item in items):
        return None
    return [str(item.path) for item in items]
