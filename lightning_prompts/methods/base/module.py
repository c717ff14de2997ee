"""``PromptModule``: the base of every prompt-tuning method.

A method subclasses :class:`PromptModule` (or a family base: :class:`~lightning_prompts.methods.CLIPPromptModule`,
:class:`~lightning_prompts.methods.ViTPromptModule`, :class:`~lightning_prompts.methods.TextPromptModule`,
:class:`~lightning_prompts.methods.GraphPromptModule`) and implements :meth:`PromptModule.forward_batch`
(batch -> :class:`~lightning_prompts.outputs.PromptOutput`); the rest is shared, each job in its own place:

* **frozen backbone**: built from a :class:`~lightning_prompts.backbones.Backbone` (or its stored
  config), never trained, always in eval mode (the backbone's own promise);
* **optimisation**: named parameter groups with their own learning rates
  (:mod:`~lightning_prompts.methods.base.optimization`);
* **output fields and loss terms**: the fields a method can fill (``produced_fields`` plus
  ``@provides`` providers, :mod:`~lightning_prompts.methods.base.fields`); every
  :class:`~lightning_prompts.callbacks.LossTerm` among the trainer's callbacks adds its term before the
  single backward, after :meth:`PromptModule.check_ready` made sure the method can feed it;
* **evaluation**: an :class:`~lightning_prompts.evaluation.Evaluator` chosen by the recipe or the
  data module (:mod:`lightning_prompts.evaluation`);
* **checkpoints and prompt files**: only the trainable state, refusing another backbone
  (:mod:`~lightning_prompts.methods.base.checkpointing`).

What a loss term or callback may use of a method, besides its output (the *module protocol*):
``classnames``, ``batch_targets(batch)``, ``param_groups()``, ``current_epoch``, ``log``, and on CLIP
methods ``encode_texts(texts)`` (the frozen text encoder), ``logit_scale`` and ``gradcam_target()``.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from lightning_prompts.backbones.base import Backbone, build_backbone
from lightning_prompts.batch import LABEL
from lightning_prompts.callbacks.loss_term import LossTerm
from lightning_prompts.data.protocols import ClassNames, DefaultEvaluator, provided
from lightning_prompts.errors import ConfigurationError, MissingOutputFieldError
from lightning_prompts.evaluation.base import Evaluator
from lightning_prompts.methods.base.checkpointing import TrainableStateMixin, preview
from lightning_prompts.methods.base.fields import collect_providers
from lightning_prompts.methods.base.optimization import OptimizationMixin
from lightning_prompts.metrics.validation_means import log_validation_mean
from lightning_prompts.outputs import PromptOutput
from lightning_prompts.utils.distributed import share_batchnorm_statistics
from lightning_prompts.utils.factories import as_factory, describe_factory

OptimizerCallable = Callable[[Iterable], Optimizer]
LRSchedulerCallable = Callable[[Optimizer], LRScheduler]

# Lightning warnings that describe exactly what this design intends: the frozen backbone is in eval
# mode during training; our checkpoints leave the backbone out (on_load_checkpoint guards the keys
# that matter); a method without trainable parameters has no optimizer and no training step.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
warnings.filterwarnings(
    "ignore", message=r"Found keys that are in the model state dict but not in the checkpoint: \['backbone\."
)
warnings.filterwarnings("ignore", message=r"`LightningModule.configure_optimizers` returned `None`")
warnings.filterwarnings("ignore", message=r"`training_step` returned `None`")


class PromptModule(TrainableStateMixin, OptimizationMixin, LightningModule):
    """Base class of prompt-tuning methods.

    Args:
        backbone: the frozen pre-trained model (or its ``{"class_path", "init_args"}`` config).
        classnames: the training classes, in label order. The CLI links them from the data module.
        optimizer: optimizer factory, e.g. from YAML
            ``{class_path: torch.optim.SGD, init_args: {lr: 0.002, momentum: 0.9}}``;
            ``None`` uses the method's :attr:`default_optimizer`.
        lr_scheduler: scheduler factory (e.g. :class:`~lightning_prompts.optim.WarmupCosineLR`), or ``None``.
        lr_scheduler_interval: step the scheduler every ``"epoch"`` (Dassl, VPT) or ``"step"``.
        param_group_lr: learning rates for named parameter groups (see :meth:`param_groups`),
            overriding the optimizer's ``lr`` for those groups.
        prompt_init: a ``safetensors`` file (:meth:`export_prompt`) whose tensors initialise trainable
            tensors of the same names and shapes when the module is first set up — by ``fit``, or by
            ``validate``/``test``/``predict`` run without training (a source prompt evaluated as it is, TPT from
            a trained context) — e.g. GRAM's meta-learned context (``prompt_init.safetensors``); tensors it
            lacks keep their own initialisation. A checkpoint (``ckpt_path``) overrides it, and a module
            trained in this process is not reset by a later ``test``.
        evaluator: the evaluation protocol (:mod:`lightning_prompts.evaluation`); ``None`` takes the data
            module's ``default_evaluator()``, else accuracy (base-to-novel when the data declares test sets).
    """

    #: Fields of :class:`PromptOutput` the method's forward always fills.
    produced_fields: ClassVar[frozenset[str]] = frozenset({"logits"})
    #: Every field the method can fill: ``produced_fields`` plus its providers' (computed per class).
    output_fields: ClassVar[frozenset[str]] = frozenset({"logits"})
    #: Whether loss-term callbacks can add to the method's objective (``False`` for methods whose training
    #: step is their own: several optimizer steps per batch, per-example private gradients).
    accepts_loss_terms: ClassVar[bool] = True
    #: Whether the method can evaluate classes it was not trained on (base-to-novel).
    supports_new_classes: ClassVar[bool] = False
    #: The metric and mode the command's default ``best.ckpt`` is chosen by.
    checkpoint_monitor: ClassVar[tuple[str, str]] = ("val/acc", "max")
    #: Arguments that only shape training, or that a test may set anew (more negative labels to score), so a
    #: checkpoint is evaluated under other values of them without the CLI refusing it as another model.
    test_time_hparams: ClassVar[frozenset[str]] = frozenset()
    #: Arguments that, left ``None``, the method resolves from the data at ``fit`` and stores resolved in its
    #: hyperparameters (RELIEF's ``max_nodes``): a command given a checkpoint and a config leaving them out rebuilds
    #: the model with the checkpoint's values.
    data_resolved_hparams: ClassVar[frozenset[str]] = frozenset()
    #: Optimizer used when none is configured (the method's official default).
    default_optimizer: ClassVar[dict[str, Any]] = {
        "class_path": "torch.optim.SGD",
        "init_args": {"lr": 0.002, "momentum": 0.9, "weight_decay": 5e-4},
    }
    _field_providers: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = vars(cls)
        if "output_fields" in own and "produced_fields" not in own:  # a subclass written before providers
            cls.produced_fields = frozenset(own["output_fields"])
        cls._field_providers = collect_providers(cls)
        cls.output_fields = frozenset(cls.produced_fields) | frozenset(cls._field_providers)
        if "configure_callbacks" in own:  # so check_ready tells the method's callbacks from a user's
            cls.configure_callbacks = _marking_attached(own["configure_callbacks"])  # type: ignore[method-assign]

    def __init__(
        self,
        backbone: Backbone,
        classnames: Sequence[str] | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
        param_group_lr: dict[str, float] | None = None,
        prompt_init: str | Path | None = None,
        evaluator: Evaluator | None = None,
    ) -> None:
        super().__init__()
        self.backbone = build_backbone(backbone)
        self.save_hyperparameters(ignore=["backbone", "evaluator"])
        # what the checkpoint needs to rebuild the backbone and the optimisation, never objects
        self.hparams["backbone"] = self.backbone.config()
        for key, value in (("optimizer", optimizer), ("lr_scheduler", lr_scheduler), ("evaluator", evaluator)):
            if value is not None and not isinstance(self.hparams.get(key), Mapping):
                described = describe_factory(type(value) if key == "evaluator" else value)
                if described is None:
                    rank_zero_warn(f"The {key} is not stored in checkpoints (not a class with keyword arguments).")
                self.hparams[key] = described
        if lr_scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"lr_scheduler_interval must be 'epoch' or 'step', got {lr_scheduler_interval!r}.")
        self.classnames: list[str] = list(classnames) if classnames else []
        self._optimizer_factory = as_factory(optimizer) or as_factory(self.default_optimizer)
        self._scheduler_factory = as_factory(lr_scheduler)
        self._scheduler_interval = lr_scheduler_interval
        self._param_group_lr = dict(param_group_lr or {})
        self._prompt_init = prompt_init
        self._prompt_init_applied = False
        self._evaluator_choice = _build_evaluator(evaluator)
        self.evaluator: Evaluator | None = None
        self._evaluator_state: dict[str, Any] | None = None
        self.strict_loading = False  # the backbone is not in our checkpoints; see on_load_checkpoint
        self._requested_fields: frozenset[str] = frozenset()

    # ------------------------------------------------------------------------------------------
    # What a method implements
    # ------------------------------------------------------------------------------------------
    def forward_batch(self, batch: Any, fields: frozenset[str] = frozenset()) -> PromptOutput:
        """Run the method on a batch. ``fields`` are the optional output fields requested for this step;
        a method may fill those it gets for free, the others come from its providers."""
        raise NotImplementedError

    def batch_targets(self, batch: Any) -> Tensor:
        """Class indices ``(B,)`` (or multi-hot ``(B, C)``) the logits of :meth:`forward_batch` are scored against."""
        return batch[LABEL]

    def task_loss(self, output: PromptOutput, targets: Tensor) -> Tensor:
        """The method's own objective: cross-entropy; for multi-hot ``(B, C)`` targets, cross-entropy against the
        uniform distribution over each example's classes (MVLPT's objective for multi-label data, in its MVLPT and
        CoOp trainers; an example without a class contributes 0, where the official code would give NaN)."""
        if targets.dim() == 2:
            targets = targets.float()
            return F.cross_entropy(output.logits.float(), targets / targets.sum(dim=1, keepdim=True).clamp_min(1.0))
        return F.cross_entropy(output.logits.float(), targets)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        """Switch the classes the method scores (rebuild class prompts). Methods whose classes are
        fixed by a trained head only accept their own classes."""
        if list(classnames) != list(self.classnames):
            raise ConfigurationError(
                f"{type(self).__name__} was trained for {len(self.classnames)} fixed classes and cannot "
                f"score other classes ({len(classnames)} given)."
            )

    # ------------------------------------------------------------------------------------------
    # Output fields and loss terms
    # ------------------------------------------------------------------------------------------
    def compute_output(self, batch: Any, fields: Iterable[str] = ()) -> PromptOutput:
        """:meth:`forward_batch` with the requested optional ``fields`` filled (by the forward pass when it
        computed them anyway, else by the method's providers, in a fixed order)."""
        fields = frozenset(fields)
        output = self.forward_batch(batch, fields)
        for field in sorted(fields):
            if output.get(field) is not None:
                continue
            provider = self._field_providers.get(field)
            if provider is None:
                raise MissingOutputFieldError(type(self).__name__, "the caller", field, tuple(self.output_fields))
            setattr(output, field, getattr(self, provider)(batch, output))
        return output

    def loss_terms(self, callbacks: Iterable[Any] | None = None) -> list[LossTerm]:
        """The loss-term callbacks among ``callbacks`` (default: the trainer's)."""
        if callbacks is None:
            callbacks = self._trainer.callbacks if self._trainer is not None else []
        return [callback for callback in callbacks if isinstance(callback, LossTerm)]

    def check_output_fields(self, terms: Iterable[LossTerm]) -> frozenset[str]:
        """Raise :class:`MissingOutputFieldError` if a term needs a field this method cannot fill;
        return the union of the fields needed."""
        needed: set[str] = set()
        for term in terms:
            for field in term.required_fields:
                if field not in self.output_fields:
                    raise MissingOutputFieldError(
                        type(self).__name__, type(term).__name__, field, tuple(self.output_fields)
                    )
                needed.add(field)
            needed |= {field for field in term.optional_fields if field in self.output_fields}
        return frozenset(needed)

    def scale_loss(self, loss: Tensor) -> Tensor:
        """``loss`` times the factor of a float16 gradient scaler (precision ``16-mixed``), as ``manual_backward``
        scales it; unchanged without one. For a method that takes gradients with ``torch.autograd.grad``: the
        scaler's step divides every gradient by :meth:`gradient_scale` before the optimizer runs."""
        scaler = self._gradient_scaler()
        return scaler.scale(loss) if scaler is not None else loss

    def gradient_scale(self) -> float:
        """The factor a float16 gradient scaler (precision ``16-mixed``) multiplies this step's loss by, 1 without
        one. A method that steps its optimizers itself needs it where it makes or clips gradients outside
        ``manual_backward``: the scaler's step divides every gradient by it (and skips a step whose gradients are
        not finite, then lowers the factor)."""
        scaler = self._gradient_scaler()
        return float(scaler.get_scale()) if scaler is not None else 1.0

    def _gradient_scaler(self, trainer: Any | None = None) -> Any:
        """The float16 gradient scaler (``16-mixed``) of ``trainer`` (default: the module's), or ``None``."""
        return getattr((trainer or self.trainer).precision_plugin, "scaler", None)

    #: for a method that steps its optimizers itself (``automatic_optimization = False``): how, in a few words, for
    #: the refusal of the Trainer's gradient accumulation and clipping, which such a step bypasses
    manual_steps: ClassVar[str] = ""

    def check_trainer(self, stage: str, trainer: Any) -> None:
        """Fail now if the Trainer's settings cannot run this method (a process count, a run length it needs).
        The command calls it with its Trainer before anything runs or is written; :meth:`setup` calls it too, for
        runs from Python. Methods extend it (``super().check_trainer(...)``); the base refuses the Trainer's
        gradient accumulation and clipping for a method that steps its optimizers itself."""
        if stage != "fit" or self.automatic_optimization:
            return
        asked = [
            f"trainer.{name} ({value})"
            for name, value, inert in (
                ("accumulate_grad_batches", trainer.accumulate_grad_batches, (1,)),
                ("gradient_clip_val", trainer.gradient_clip_val, (None, 0)),
            )
            if value not in inert
        ]
        if asked:
            # Lightning's own refusal says to switch to automatic optimization, which a user of the method cannot
            raise ConfigurationError(
                f"{type(self).__name__} steps its optimizers itself ({self.manual_steps}), so the Trainer can neither "
                f"accumulate nor clip its gradients: remove {' and '.join(asked)}."
            )

    def check_ready(self, stage: str, callbacks: Iterable[Any], datamodule: Any | None) -> None:
        """Fail now, before anything runs or is written, if this experiment cannot work: a callback
        needs an output field the method lacks, the prompt_init file does not fit, model and data
        disagree on the classes, or the evaluation protocol cannot evaluate this method on this data.
        Methods extend it (``super().check_ready(...)``).

        Called from ``setup`` and, by the ``lightning-prompts`` command, before the Trainer starts
        (so not even a config file is written for a run that cannot work).
        """
        own = self.configure_callbacks()  # callbacks a method brings itself (CoPrompt's consistency term)
        own = list(own) if isinstance(own, Sequence) else [own]
        _refuse_given_twice(self, callbacks, own)
        everything = [*callbacks, *own]
        terms = self.loss_terms(everything)
        self.check_output_fields(terms)
        if terms and not self.accepts_loss_terms:
            names = sorted(type(term).__name__ for term in terms)
            raise ConfigurationError(
                f"{type(self).__name__} trains with its own training step, which loss-term callbacks cannot join "
                f"({', '.join(names)})."
            )
        for callback in everything:  # loss terms and other callbacks that can check themselves
            check = getattr(callback, "check_ready", None)
            if callable(check):
                check(self, datamodule, everything)
        if self._prompt_init is not None and not self._prompt_init_applied:
            self.check_prompt_init(self._prompt_init)
        ranges = getattr(datamodule, "task_class_ranges", None) if datamodule is not None else None
        if isinstance(ranges, dict) and ranges:  # a merged label space: names may repeat across tasks
            names = self.classnames_for_training
            for task, (start, end) in ranges.items():
                check_class_list(f"{type(self).__name__} (task {task})", names[start:end], stage)
        else:
            check_class_list(type(self).__name__, self.classnames_for_training, stage)
        source = provided(datamodule, ClassNames)
        data_classes = source.classnames if source is not None else None
        if data_classes is not None and list(data_classes) != self.classnames_for_training:
            raise ConfigurationError(
                f"{type(self).__name__} was built for classes {preview(self.classnames_for_training)} but the data "
                f"module provides {preview(data_classes)}; pass the data module's classnames (the CLI links them)."
            )
        self.resolve_evaluator(datamodule).check_ready(self, datamodule, stage)

    def setup(self, stage: str) -> None:
        callbacks = self.trainer.callbacks
        datamodule = self.datamodule
        check_precision_for_backbone(self, self.trainer.precision)
        self.check_trainer(stage, self.trainer)
        self.check_ready(stage, callbacks, datamodule)
        self._requested_fields = self.check_output_fields(self.loss_terms(callbacks))
        evaluator = self.resolve_evaluator(datamodule)
        if evaluator is not self.evaluator:
            self.evaluator = evaluator
        self.evaluator.setup(self, datamodule, stage)
        if self._evaluator_state is not None:
            self.evaluator.load_state_dict(self._evaluator_state)
            self._evaluator_state = None
        if self._prompt_init is not None and not self._prompt_init_applied:
            # once per module: Lightning restores a ckpt_path after setup, so a checkpoint still wins, and a
            # `test` after `fit` in one process must not reset the trained prompt
            self.init_prompt_from(self._prompt_init)
            self._prompt_init_applied = True

    # ------------------------------------------------------------------------------------------
    # Evaluation protocol
    # ------------------------------------------------------------------------------------------
    @property
    def datamodule(self) -> Any | None:
        """The trainer's data module, if any."""
        return getattr(self._trainer, "datamodule", None) if self._trainer is not None else None

    def resolve_evaluator(self, datamodule: Any | None) -> Evaluator:
        """The evaluator of this run: the configured one, else the data module's default, else accuracy.
        An evaluator already in use for the same protocol is kept (its state belongs to this run)."""
        if self._evaluator_choice is not None:
            return self._evaluator_choice
        source = provided(datamodule, DefaultEvaluator)
        if source is not None:
            wanted = source.default_evaluator()
        else:
            from lightning_prompts.evaluation.classification import ClassificationEvaluator

            wanted = ClassificationEvaluator()
        if self.evaluator is not None and type(self.evaluator) is type(wanted):
            return self.evaluator
        return wanted

    def restore_evaluator_state(self, state: dict[str, Any]) -> None:
        """Evaluator state from a checkpoint (applied at ``setup`` if the evaluator is not chosen yet)."""
        if self.evaluator is not None:
            self.evaluator.load_state_dict(state)
        else:
            self._evaluator_state = dict(state)

    def evaluation_scores(self, batch: Any, logits: Tensor) -> Tensor:
        """What accuracy and predictions are taken from: the logits, unless a callback ensembles them
        with another model (``ensemble_scores``, e.g. :class:`~lightning_prompts.callbacks.MomentumAccumulation`)."""
        for callback in self.trainer.callbacks if self._trainer is not None else ():
            ensemble = getattr(callback, "ensemble_scores", None)
            if callable(ensemble):
                logits = ensemble(self, batch, logits)
        return logits

    def _evaluator(self) -> Evaluator:
        if self.evaluator is None:  # evaluated outside a Trainer's setup (e.g. a bare validation loop)
            self.evaluator = self.resolve_evaluator(self.datamodule)
            self.evaluator.setup(self, self.datamodule, "validate")
        return self.evaluator

    def _log_metrics(self, metrics: Mapping[str, Tensor]) -> None:
        # the evaluators' values are already the same on every process (their metrics sum their states over the
        # processes before computing); "max" over identical values keeps them exactly and spares every DDP run
        # Lightning's advice to synchronise them
        for name, value in metrics.items():
            self.log(name, value, prog_bar=name == "val/acc", add_dataloader_idx=False, sync_dist=True, reduce_fx="max")

    @property
    def classnames_for_training(self) -> list[str]:
        """The classes the method was configured (and trained) with."""
        return list(self.hparams.get("classnames") or self.classnames)

    def accepts_trained_classes(self, trained: Sequence[str]) -> bool:
        """Whether a checkpoint trained on the classes ``trained`` can be evaluated with this module's classes:
        the same classes in the same order (a classifier's rows are its classes)."""
        return list(trained) == self.classnames_for_training

    # ------------------------------------------------------------------------------------------
    # Steps
    # ------------------------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        if not self.has_trainable_parameters:
            return None  # nothing to train (zero-shot): fit only validates
        output = self.compute_output(batch, self._requested_fields)
        targets = self.batch_targets(batch)
        batch_size = int(targets.shape[0])
        loss = self.training_task_loss(batch, output, targets)
        self.log("train/task_loss", loss, batch_size=batch_size)
        for term in self.loss_terms():
            value = term(self, batch, output)
            self.log(f"train/{term.name}", value, batch_size=batch_size)
            loss = loss + value
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        return loss

    @property
    def has_own_objective(self) -> bool:
        """Whether the method replaces the default cross-entropy :meth:`task_loss` (callbacks that reweigh or
        mask the cross-entropy refuse such methods)."""
        return type(self).task_loss is not PromptModule.task_loss

    def training_task_loss(self, batch: Any, output: PromptOutput, targets: Tensor) -> Tensor:
        """The task loss of a training step: :meth:`task_loss`, unless a callback weighs the batch's parts
        itself (``weighted_task_loss``, e.g. :class:`~lightning_prompts.callbacks.PseudoLabelRounds`)."""
        for callback in self.trainer.callbacks if self._trainer is not None else ():
            weighted = getattr(callback, "weighted_task_loss", None)
            if callable(weighted):
                return weighted(self, batch, output, targets)
        return self.task_loss(output, targets)

    def on_validation_epoch_start(self) -> None:
        share_batchnorm_statistics(self)
        self._evaluator().start(self, "val")

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        evaluator = self._evaluator()
        evaluator.prepare(self, "val", dataloader_idx)
        output = self.forward_batch(batch)
        targets = self.batch_targets(batch)
        log_validation_mean(self, "loss", self.task_loss(output, targets), int(targets.shape[0]), dataloader_idx)
        scores = self.evaluation_scores(batch, output.logits.detach())
        evaluator.update(self, batch, scores, targets, "val", dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self._evaluator().finish(self, "val"))

    def on_test_epoch_start(self) -> None:
        share_batchnorm_statistics(self)
        self._evaluator().start(self, "test")

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        evaluator = self._evaluator()
        evaluator.prepare(self, "test", dataloader_idx)
        scores = evaluator.score(self, batch, "test", dataloader_idx)
        evaluator.update(self, batch, scores, self.batch_targets(batch), "test", dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self._evaluator().finish(self, "test"))

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        logits = self.forward_batch(batch).logits
        return {"logits": logits, "preds": self.evaluation_scores(batch, logits).argmax(dim=-1)}


#: set on every callback a method's ``configure_callbacks`` returns: Lightning adds them to ``trainer.callbacks``
#: before ``setup``, where :meth:`PromptModule.check_ready` must not take them for callbacks a user gave
ATTACHED_BY_METHOD = "_attached_by_method"


def _marking_attached(configure_callbacks: Callable[..., Any]) -> Callable[..., Any]:
    """``configure_callbacks`` of a method class, marking what it returns as the method's (any subclass,
    also a user's, gets this from ``PromptModule.__init_subclass__``)."""
    if getattr(configure_callbacks, ATTACHED_BY_METHOD, False):
        return configure_callbacks

    @functools.wraps(configure_callbacks)
    def marked(self: Any) -> Any:
        returned = configure_callbacks(self)
        own = list(returned) if isinstance(returned, Sequence) else [returned]
        for callback in own:
            setattr(callback, ATTACHED_BY_METHOD, True)
        trainer = getattr(self, "_trainer", None)
        if trainer is not None:  # Lightning asks just before it replaces the Trainer's callbacks of these types
            _refuse_given_twice(self, trainer.callbacks, own)
        return returned

    setattr(marked, ATTACHED_BY_METHOD, True)
    return marked


def _refuse_given_twice(method: Any, callbacks: Sequence[Any], own: Sequence[Any]) -> None:
    """Lightning replaces a Trainer callback of the same type as one the method brings, dropping its settings
    with an info line; a user who gave one meant those settings."""
    given = {type(c).__name__ for c in callbacks if not getattr(c, ATTACHED_BY_METHOD, False)}
    replaced = sorted(given & {type(c).__name__ for c in own})
    if replaced:
        raise ConfigurationError(
            f"{type(method).__name__} attaches {', '.join(replaced)} itself, with the settings of its own arguments "
            f"(see its docs), and Lightning would drop the one given to the Trainer: remove it from "
            f"trainer.callbacks and set those options on the model."
        )


def check_precision_for_backbone(method: Any, precision: str) -> None:
    """A backbone that keeps its frozen weights in 16 bits (``dtype``) runs under a precision whose autocast (or
    cast) meets them and the float32 tensors the method trains in one dtype; without it the first product of the
    two stops on mixed dtypes (an adapter or head on the features, a LayerNorm of a float32 token on the CPU)."""
    from lightning_prompts.backbones.base import HALF_WEIGHT_PRECISIONS

    backbone = getattr(method, "backbone", None)
    if getattr(backbone, "half_weights", False) and str(precision) not in HALF_WEIGHT_PRECISIONS:
        raise ConfigurationError(
            f"{type(method).__name__}'s backbone keeps its weights in {next(backbone.parameters()).dtype} (dtype) "
            f"but the trainer's precision is {precision!r}: use precision 'bf16-mixed' (or '16-mixed'), or leave "
            f"the backbone's dtype at float32."
        )


def check_class_list(method: str, classnames: Sequence[str], stage: str) -> None:
    """Class lists that would train silently wrong: one class (the cross-entropy is exactly 0 and
    accuracy 1), empty names, names that become the same prompt (``_``/case/space differences)."""
    if not classnames:
        return
    if stage == "fit" and len(classnames) < 2:
        raise ConfigurationError(
            f"{method} got one class ({classnames[0]!r}): classification needs at least two (the loss would be 0)."
        )
    empty = [index for index, name in enumerate(classnames) if not str(name).strip()]
    if empty:
        raise ConfigurationError(f"{method}: class names at positions {empty} are empty.")
    seen: dict[str, str] = {}
    for name in classnames:
        key = " ".join(str(name).replace("_", " ").lower().split())
        if key in seen:
            raise ConfigurationError(
                f"{method}: classes {seen[key]!r} and {name!r} are the same name (their prompts would be identical)."
            )
        seen[key] = str(name)


def _build_evaluator(value: Evaluator | Mapping[str, Any] | None) -> Evaluator | None:
    """An evaluator from an instance, or from the ``{"class_path", "init_args"}`` a checkpoint stored
    (registered evaluators only)."""
    if value is None or isinstance(value, Evaluator):
        return value
    if isinstance(value, Mapping) and "class_path" in value:
        from lightning_prompts.registry import resolve_class

        return resolve_class(str(value["class_path"]), "evaluator")(**dict(value.get("init_args") or {}))
    raise TypeError(f"evaluator must be an Evaluator or a class_path mapping, got {type(value).__name__}.")
