"""``PseudoLabelRounds``: pseudolabel prompt tuning, GRIP and its siblings FPL and IFPL, for any CLIP method.

Menghini et al., "Enhancing CLIP with CLIP: Exploring Pseudolabeling for Limited-Label Prompt Tuning",
NeurIPS 2023 (official code: BatsResearch/menghini-enhanceCLIPwithCLIP-code). Training runs in rounds of
``epochs_per_round`` epochs (``trainer.max_epochs = rounds · epochs_per_round``):

1. before the first round, zero-shot CLIP (the frozen model on ``template``) scores the unlabelled images
   and the top-K per class by confidence become pseudolabels
   (:func:`~lightning_prompts.callbacks.pseudolabel_selection.leaderboard_top_k`);
2. with K ≥ 10, 20 % of the pseudolabels are held out (the official code validates on them; nothing is
   selected with it, so here they are simply not trained on);
3. the method trains on labelled + pseudolabelled images with ``γ · CE(labelled) + CE(pseudolabelled)``;
4. IFPL and GRIP then relabel with the *current* prompts (K fixed at 16 for IFPL, growing to all
   unlabelled data for GRIP), start a new optimizer and learning-rate schedule, and train the next round.
   The prompt itself continues from where it is: in the official code the "re-initialised" model wraps
   the same tensor as the initial prompt, which training updated in place.

FPL is one round on the zero-shot pseudolabels. The method can prompt the text side (CoOp), the image side
or both; pseudolabels of later rounds come from the method's own logits. Works with every image data
module given ``pseudolabels: {setting: ssl | ul | trzsl}``
(:class:`~lightning_prompts.data.pseudolabels.PseudoLabelSplit`).

Deviation from the official code, on purpose: its zero-shot prompt is ``f"{template}{name}"`` with
``template = "a photo of a {}"``, i.e. ``"a photo of a {}rose"``; here the template is filled in
(``"a photo of a rose"``). The pseudolabelling pass runs on every DDP rank over all unlabelled images (the
same result everywhere, no communication).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_prompts.batch import IMAGE, IMAGE_FEATURES, PSEUDO_LABELLED
from lightning_prompts.callbacks.feature_cache import FrozenFeatureCache
from lightning_prompts.callbacks.pseudolabel_selection import (
    Strategy,
    balance_weight,
    leaderboard_top_k,
    pseudolabel_loss,
    pseudolabels_per_class,
    restrict_to_classes,
)
from lightning_prompts.data.pseudolabels import official_subset
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.outputs import PromptOutput
from lightning_prompts.registry import register_callback
from lightning_prompts.utils.similarity import similarity_logits

_DEFAULT_ROUNDS = {"fpl": 1, "ifpl": 10, "grip": 10}


@register_callback(family="clip")
class PseudoLabelRounds(Callback):
    """Pseudolabel prompt tuning in rounds: GRIP (default), IFPL or FPL (see the module docstring).

    Args:
        strategy: ``"grip"`` (K grows each round), ``"ifpl"`` (K fixed, relabelled each round) or ``"fpl"``
            (one round on zero-shot pseudolabels).
        rounds: rounds of training (``None``: 10 for GRIP and IFPL, 1 for FPL).
        epochs_per_round: epochs of each round (the official 150); the Trainer's ``max_epochs`` must equal
            ``rounds · epochs_per_round``. A learning-rate schedule spans one round.
        pseudolabels_per_class: K of FPL and IFPL (16).
        template: the zero-shot prompt of the first pseudolabels (the official "a photo of a {}").
        holdout: share of the pseudolabels held out from training when K ≥ ``holdout_from_k``.
        holdout_from_k: the smallest K with a holdout (10).
        holdout_seed: seed of the holdout draw (the official ``validation_seed``, 0).
        gamma: weight of the labelled part of the loss; ``None`` uses the official ratio
            (:func:`~lightning_prompts.callbacks.pseudolabel_selection.balance_weight`).
        batch_size: images per pass while pseudolabelling.
    """

    #: the training set changes between rounds (read by ``FrozenFeatureCache`` to checkpoint its features)
    changes_training_set = True

    def __init__(
        self,
        strategy: Strategy = "grip",
        rounds: int | None = None,
        epochs_per_round: int = 150,
        pseudolabels_per_class: int = 16,
        template: str = "a photo of a {}",
        holdout: float = 0.2,
        holdout_from_k: int = 10,
        holdout_seed: int = 0,
        gamma: float | None = None,
        batch_size: int = 64,
    ) -> None:
        super().__init__()
        if strategy not in _DEFAULT_ROUNDS:
            raise ValueError(f"strategy must be 'grip', 'ifpl' or 'fpl', got {strategy!r}.")
        self.strategy: Strategy = strategy
        self.rounds = _DEFAULT_ROUNDS[strategy] if rounds is None else rounds
        if self.rounds < 1 or epochs_per_round < 1 or pseudolabels_per_class < 1:
            raise ValueError("rounds, epochs_per_round and pseudolabels_per_class must be >= 1.")
        if strategy == "fpl" and self.rounds != 1:
            raise ValueError(f"FPL trains one round on zero-shot pseudolabels; got rounds={self.rounds}.")
        if "{}" not in template:
            raise ValueError(f"template needs a '{{}}' for the class name, got {template!r}.")
        if not 0.0 <= holdout < 1.0:
            raise ValueError(f"holdout must be in [0, 1), got {holdout}.")
        self.epochs_per_round = epochs_per_round
        self.k, self.template = pseudolabels_per_class, template
        self.holdout, self.holdout_from_k, self.holdout_seed = holdout, holdout_from_k, holdout_seed
        self.gamma, self.batch_size = gamma, batch_size
        # the pseudolabels in use: the round they were made for, positions in the unlabelled set, labels
        self.labelled_round = -1
        self.indices: list[int] = []
        self.labels: list[int] = []
        self.history: list[dict[str, float]] = []
        self._applied_round = -1

    # -- what the schedule and the loss read --------------------------------------------------------
    @property
    def epochs_per_schedule(self) -> int:
        """A learning-rate schedule spans one round (read by the module's ``configure_optimizers``)."""
        return self.epochs_per_round

    def weighted_task_loss(self, module: Any, batch: Any, output: PromptOutput, targets: Tensor) -> Tensor:
        """The training loss ``γ · CE(labelled) + CE(pseudolabelled)`` (replaces the method's task loss)."""
        return pseudolabel_loss(output.logits, targets, batch[PSEUDO_LABELLED], self.current_gamma(module))

    def current_gamma(self, module: Any) -> float:
        if self.gamma is not None:
            return float(self.gamma)
        datamodule = module.datamodule
        labelled = len(datamodule.pseudolabel_partition.labelled) if datamodule is not None else 0
        return balance_weight(self.strategy, labelled, len(self.labels))

    # -- checks -------------------------------------------------------------------------------------
    def check_ready(self, module: Any, datamodule: Any | None, callbacks: Any = ()) -> None:
        is_clip = all(callable(getattr(module, name, None)) for name in ("encode_texts", "frozen_image_features"))
        if not is_clip:
            raise ConfigurationError(
                f"PseudoLabelRounds pseudolabels with CLIP's zero-shot classifier; {type(module).__name__} is not a "
                f"CLIP method."
            )
        if getattr(module, "has_own_objective", False):
            raise ConfigurationError(
                f"PseudoLabelRounds trains with γ-weighted cross-entropy; {type(module).__name__} has an objective of "
                f"its own (task_loss), which the two would not combine."
            )
        if module._scheduler_factory is not None and module._scheduler_interval != "epoch":
            raise ConfigurationError(
                "PseudoLabelRounds restarts the learning-rate schedule each round: use an epoch-wise schedule."
            )
        if datamodule is not None and getattr(datamodule, "pseudolabels", None) is None:
            raise ConfigurationError(
                "PseudoLabelRounds needs a data module that splits labelled and unlabelled images: set "
                "data.pseudolabels (setting: ssl, ul or trzsl) on an image data module."
            )

    # -- Lightning hooks ----------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        expected = self.rounds * self.epochs_per_round
        if trainer.max_epochs != expected and not trainer.fast_dev_run:
            raise ConfigurationError(
                f"PseudoLabelRounds runs {self.rounds} round(s) of {self.epochs_per_round} epochs: set "
                f"trainer.max_epochs to {expected} (got {trainer.max_epochs})."
            )
        # a fresh run starts from zero-shot pseudolabels (a resumed one gets its state back after setup)
        self.labelled_round, self.indices, self.labels, self.history, self._applied_round = -1, [], [], [], -1
        datamodule = trainer.datamodule
        datamodule.pseudolabel_refresh = lambda: self.refresh(trainer, pl_module)
        # the training set changes between rounds; rebuilding the loader every epoch keeps a resumed run exact
        trainer.reload_dataloaders_every_n_epochs = 1

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        if stage == "fit" and datamodule is not None and hasattr(datamodule, "pseudolabel_refresh"):
            datamodule.pseudolabel_refresh = None  # a later run of the same data module starts clean

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch > 0 and epoch % self.epochs_per_round == 0:  # a new round: a new optimizer and schedule
            trainer.strategy.setup_optimizers(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {
            "labelled_round": self.labelled_round,
            "indices": list(self.indices),
            "labels": list(self.labels),
            "history": [dict(entry) for entry in self.history],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.labelled_round = int(state_dict["labelled_round"])
        self.indices = [int(index) for index in state_dict["indices"]]
        self.labels = [int(label) for label in state_dict["labels"]]
        self.history = [dict(entry) for entry in state_dict.get("history", [])]
        self._applied_round = -1

    # -- pseudolabelling ----------------------------------------------------------------------------
    def refresh(self, trainer: Trainer, module: Any) -> None:
        """Put the current round's pseudolabels in the data module (making them when the round is new)."""
        round_index = min(trainer.current_epoch // self.epochs_per_round, self.rounds - 1)
        datamodule = trainer.datamodule
        if self.labelled_round != round_index:
            cache = next((c for c in trainer.callbacks if isinstance(c, FrozenFeatureCache)), None)
            self.indices, self.labels = self.pseudolabel(module, datamodule, round_index, cache)
            self.labelled_round = round_index
            self._report(trainer, datamodule, round_index)
        if self._applied_round != round_index:
            datamodule.set_pseudolabels(self.indices, self.labels)
            self._applied_round = round_index

    @torch.no_grad()
    def pseudolabel(
        self, module: Any, datamodule: Any, round_index: int, cache: FrozenFeatureCache | None = None
    ) -> tuple[list[int], list[int]]:
        """Pseudolabels of round ``round_index``: zero-shot CLIP for the first, the method after that. With a
        :class:`~lightning_prompts.callbacks.FrozenFeatureCache`, the unlabelled images are encoded once per fit."""
        partition = datamodule.pseudolabel_partition
        classes = partition.pseudolabel_classes
        dataset = datamodule.unlabelled_dataset()
        probabilities = self.class_probabilities(module, dataset, classes, round_index == 0, cache)
        num_unlabelled = len(partition.unlabelled)
        k = pseudolabels_per_class(self.strategy, round_index, num_unlabelled, len(classes), self.rounds, self.k)
        positions, local_labels = leaderboard_top_k(probabilities, k)
        labels = [classes[label] for label in local_labels]
        if k >= self.holdout_from_k and self.holdout > 0:
            kept, _ = official_subset(len(positions), 1.0 - self.holdout, self.holdout_seed)
            positions, labels = [positions[i] for i in kept], [labels[i] for i in kept]
        return positions, labels

    def class_probabilities(
        self, module: Any, dataset: Any, classes: list[int], zero_shot: bool, cache: FrozenFeatureCache | None = None
    ) -> Tensor:
        """``(N, |classes|)`` softmax over ``classes`` for every unlabelled image, in dataset order."""
        was_training = module.training
        module.eval()
        # the pass draws nothing the training would (a loader's iterator takes a seed from the global
        # generator), so the run's random stream, saved in checkpoints, is the same with or without a resume
        try:
            with torch.random.fork_rng(devices=[]):
                if cache is None:
                    loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=False)
                    inputs = ({IMAGE: batch[IMAGE].to(module.device)} for batch in loader)
                else:  # the cache's method has a frozen, unprompted image side: its features are the frozen model's
                    features = cache.features_of(module, dataset, ["eval"])[0].split(self.batch_size)
                    inputs = ({IMAGE_FEATURES: chunk.to(module.device)} for chunk in features)
                text = None
                if zero_shot:  # the frozen text encoder on the filled-in template (the module protocol of CLIP terms)
                    names = [module.classnames[label].replace("_", " ") for label in classes]
                    text = module.encode_texts([self.template.format(name) for name in names])
                return torch.cat([self._probabilities(module, batch, classes, text) for batch in inputs])
        finally:
            module.train(was_training)

    @staticmethod
    def _probabilities(module: Any, batch: dict[str, Tensor], classes: list[int], text: Tensor | None) -> Tensor:
        """The method's probabilities over ``classes``, or zero-shot CLIP's against the template features ``text``."""
        if text is None:
            return restrict_to_classes(module.forward_batch(batch).logits, classes).cpu()
        image = batch[IMAGE_FEATURES] if IMAGE_FEATURES in batch else module.frozen_image_features(batch[IMAGE])
        logits = similarity_logits(module.logit_scale, image, text)
        return logits.softmax(dim=-1).cpu()

    def _report(self, trainer: Trainer, datamodule: Any, round_index: int) -> None:
        truth = [int(datamodule.pseudolabel_partition.unlabelled[i].label) for i in self.indices]
        correct = sum(int(label == true) for label, true in zip(self.labels, truth, strict=True))
        entry = {
            "round": float(round_index),
            "count": float(len(self.labels)),
            "accuracy": correct / max(1, len(self.labels)),
        }
        self.history.append(entry)
        rank_zero_info(
            f"PseudoLabelRounds ({self.strategy}): round {round_index + 1}/{self.rounds}, {len(self.labels)} "
            f"pseudolabels, {entry['accuracy']:.1%} correct."
        )
        if trainer.logger is not None:
            metrics = {"pseudolabels/count": entry["count"], "pseudolabels/accuracy": entry["accuracy"]}
            trainer.logger.log_metrics(metrics, step=trainer.global_step)
