"""``PromptModule``: the base of every prompt-tuning method.

A method subclasses :class:`PromptModule` and implements two things: :meth:`forward_batch`
(batch -> :class:`~lightning_prompts.outputs.PromptOutput`) and :meth:`batch_targets`. The base
does the rest, the same way for every method:

* **frozen backbone**: built from a :class:`~lightning_prompts.backbones.Backbone` (or its config
  dict), never trained, always in eval mode;
* **optimisation**: parameter groups with their own learning rates (:meth:`param_groups`,
  ``param_group_lr``), an optimizer and a scheduler given from YAML (``OptimizerCallable`` and
  ``LRSchedulerCallable``), stepped per epoch (Dassl, VPT) or per step;
* **loss terms**: every :class:`~lightning_prompts.callbacks.LossTerm` in ``trainer.callbacks``
  adds its term before the single backward; the fields they need are checked at ``setup``;
* **evaluation**: validation accuracy on the training classes; test accuracy on every test set
  the data module declares (``test_class_sets``), rebuilding the class prompts for each set's
  classes, and the base/novel harmonic mean;
* **checkpoints**: only the trainable state (prompts, heads) plus hyperparameters and the
  backbone's identity; loading rebuilds the backbone from its source and refuses a checkpoint of
  another backbone or one that lacks a trainable tensor; :meth:`export_prompt` writes the
  trainable state to ``safetensors``.
"""

from __future__ import annotations

import json
import math
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
from lightning_prompts.callbacks.loss_term import LossTerm
from lightning_prompts.errors import (
    BackboneMismatchError,
    ConfigurationError,
    MissingOutputFieldError,
    MissingTrainableStateError,
)
from lightning_prompts.metrics import SetwiseAccuracy
from lightning_prompts.outputs import PromptOutput
from lightning_prompts.utils.factories import as_factory, describe_factory

OptimizerCallable = Callable[[Iterable], Optimizer]
LRSchedulerCallable = Callable[[Optimizer], LRScheduler]

# Two Lightning warnings describe exactly what this design intends: the frozen backbone is in eval
# mode during training, and our checkpoints leave the backbone out (on_load_checkpoint guards the
# keys that matter). Silence only those, only for backbone keys.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
warnings.filterwarnings(
    "ignore", message=r"Found keys that are in the model state dict but not in the checkpoint: \['backbone\."
)

_CHECKPOINT_KEY = "lightning_prompts"
_METADATA_PREFIX = "lightning_prompts."


class PromptModule(LightningModule):
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
            tensors of the same names and shapes when ``fit`` starts, e.g. GRAM's meta-learned context
            (``prompt_init.safetensors``); tensors it lacks keep their own initialisation. A checkpoint
            being resumed overrides it.
    """

    #: Fields of :class:`PromptOutput` this method can fill (checked against callbacks' needs).
    output_fields: ClassVar[frozenset[str]] = frozenset({"logits"})
    #: Whether the method can evaluate classes it was not trained on (base-to-novel).
    supports_new_classes: ClassVar[bool] = False
    #: Optimizer used when none is configured (the method's official default).
    default_optimizer: ClassVar[dict[str, Any]] = {
        "class_path": "torch.optim.SGD",
        "init_args": {"lr": 0.002, "momentum": 0.9, "weight_decay": 5e-4},
    }

    def __init__(
        self,
        backbone: Backbone,
        classnames: Sequence[str] | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
        param_group_lr: dict[str, float] | None = None,
        prompt_init: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.backbone = build_backbone(backbone)
        self.save_hyperparameters(ignore=["backbone"])
        # what the checkpoint needs to rebuild the backbone and the optimisation, never objects
        self.hparams["backbone"] = self.backbone.config()
        for key, value in (("optimizer", optimizer), ("lr_scheduler", lr_scheduler)):
            if value is not None and not isinstance(self.hparams.get(key), Mapping):
                described = describe_factory(value)
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
        self.strict_loading = False  # the backbone is not in our checkpoints; see on_load_checkpoint
        self._requested_fields: frozenset[str] = frozenset()
        self.val_accuracy = SetwiseAccuracy(["val"])
        self.test_accuracy: SetwiseAccuracy | None = None
        self._test_set_names: list[str] = []
        self._test_class_sets: list[list[str]] = []
        self._active_test_set = -1

    # ------------------------------------------------------------------------------------------
    # What a method implements
    # ------------------------------------------------------------------------------------------
    def forward_batch(self, batch: Any, fields: frozenset[str] = frozenset()) -> PromptOutput:
        """Run the method on a batch; also fill the optional ``fields`` callbacks asked for."""
        raise NotImplementedError

    def batch_targets(self, batch: Any) -> Tensor:
        """Class indices ``(B,)`` the logits of :meth:`forward_batch` are scored against."""
        return batch["label"]

    def task_loss(self, output: PromptOutput, targets: Tensor) -> Tensor:
        """The method's own objective (cross-entropy by default)."""
        return F.cross_entropy(output.logits.float(), targets)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        """Switch the classes the method scores (rebuild class prompts). Methods whose classes are
        fixed by a trained head only accept their own classes."""
        if list(classnames) != list(self.classnames):
            raise ConfigurationError(
                f"{type(self).__name__} was trained for {len(self.classnames)} fixed classes and cannot "
                f"score other classes ({len(classnames)} given)."
            )

    def param_groups(self) -> list[dict[str, Any]]:
        """Named parameter groups (``{"name": ..., "params": [...]}``); all trainable parameters
        must appear exactly once. Override to give, e.g., a head its own learning rate."""
        return [{"name": "prompt", "params": [p for p in self.parameters() if p.requires_grad]}]

    # ------------------------------------------------------------------------------------------
    # Loss terms and the output contract
    # ------------------------------------------------------------------------------------------
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
        return frozenset(needed)

    def check_ready(self, stage: str, callbacks: Iterable[Any], datamodule: Any | None) -> None:
        """Fail now, before anything runs or is written, if this experiment cannot work: a callback
        needs an output field the method lacks, model and data disagree on the classes, or a fixed
        head is asked to score other classes. Methods extend it (``super().check_ready(...)``).

        Called from ``setup`` and, by the ``lightning-prompts`` command, before the Trainer starts
        (so not even a config file is written for a run that cannot work).
        """
        own = self.configure_callbacks()  # callbacks a method brings itself (CoPrompt's consistency term)
        own = list(own) if isinstance(own, Sequence) else [own]
        everything = [*callbacks, *own]
        terms = self.loss_terms(everything)
        self.check_output_fields(terms)
        for callback in everything:  # loss terms and other callbacks that can check themselves
            check = getattr(callback, "check_ready", None)
            if callable(check):
                check(self, datamodule, everything)
        if stage == "fit" and self._prompt_init is not None and not Path(self._prompt_init).is_file():
            raise ConfigurationError(f"prompt_init file {self._prompt_init} does not exist.")
        data_classes = getattr(datamodule, "classnames", None)
        if data_classes is not None and list(data_classes) != self.classnames_for_training:
            raise ConfigurationError(
                f"{type(self).__name__} was built for classes {_preview(self.classnames_for_training)} but the data "
                f"module provides {_preview(data_classes)}; pass the data module's classnames (the CLI links them)."
            )
        class_sets = dict(getattr(datamodule, "test_class_sets", None) or {})
        if class_sets and not self.supports_new_classes:
            foreign = [name for name, names in class_sets.items() if list(names) != list(self.classnames)]
            if foreign:
                raise ConfigurationError(
                    f"{type(self).__name__} scores a fixed set of classes and cannot be tested on the "
                    f"test set(s) {foreign} whose classes differ (base-to-novel needs a method that builds "
                    f"class prompts from names, such as CoOp)."
                )

    def setup(self, stage: str) -> None:
        callbacks = self.trainer.callbacks
        self.check_ready(stage, callbacks, getattr(self.trainer, "datamodule", None))
        self._requested_fields = self.check_output_fields(self.loss_terms(callbacks))
        if stage == "fit" and self._prompt_init is not None:
            self.init_prompt_from(self._prompt_init)

    # ------------------------------------------------------------------------------------------
    # Steps
    # ------------------------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        output = self.forward_batch(batch, self._requested_fields)
        targets = self.batch_targets(batch)
        batch_size = int(targets.shape[0])
        loss = self.task_loss(output, targets)
        self.log("train/task_loss", loss, batch_size=batch_size)
        for term in self.loss_terms():
            value = term(self, batch, output)
            self.log(f"train/{term.name}", value, batch_size=batch_size)
            loss = loss + value
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        output = self.forward_batch(batch)
        targets = self.batch_targets(batch)
        self.log("val/loss", self.task_loss(output, targets), batch_size=int(targets.shape[0]), sync_dist=True)
        self.val_accuracy.update(self.evaluation_scores(batch, output.logits.detach()), targets)

    def on_validation_epoch_end(self) -> None:
        accuracy = self.val_accuracy.compute().get("val")
        if accuracy is not None:  # None when the epoch had no validation batch
            self.log("val/acc", accuracy, prog_bar=True)
        self.val_accuracy.reset()

    def on_test_epoch_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        class_sets = dict(getattr(datamodule, "test_class_sets", None) or {})
        if not class_sets:
            class_sets = {"test": list(self.classnames)}
        self._test_set_names = list(class_sets)
        self._test_class_sets = [list(names) for names in class_sets.values()]
        self.test_accuracy = SetwiseAccuracy(self._test_set_names).to(self.device)
        self._active_test_set = -1

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx != self._active_test_set:  # sets are run one after the other
            self.set_classnames(self._test_class_sets[dataloader_idx])
            self._active_test_set = dataloader_idx
        scores = self.evaluation_scores(batch, self.forward_batch(batch).logits.detach())
        assert self.test_accuracy is not None
        self.test_accuracy.update(scores, self.batch_targets(batch), set_index=dataloader_idx)

    def on_test_epoch_end(self) -> None:
        assert self.test_accuracy is not None
        results = self.test_accuracy.compute()
        if list(results) == ["test"]:
            self.log("test/acc", results["test"])
        else:
            for name, value in results.items():
                self.log(f"test/{name}" if name == "hm" else f"test/acc_{name}", value, add_dataloader_idx=False)
        self.test_accuracy.reset()
        if self.classnames != self.classnames_for_training:  # back to the training classes
            self.set_classnames(self.classnames_for_training)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        logits = self.forward_batch(batch).logits
        return {"logits": logits, "preds": self.evaluation_scores(batch, logits).argmax(dim=-1)}

    def evaluation_scores(self, batch: Any, logits: Tensor) -> Tensor:
        """What accuracy and predictions are taken from: the logits, unless a callback ensembles them
        with another model (``ensemble_scores``, e.g. :class:`~lightning_prompts.callbacks.MomentumAccumulation`)."""
        for callback in self.trainer.callbacks if self._trainer is not None else ():
            ensemble = getattr(callback, "ensemble_scores", None)
            if callable(ensemble):
                logits = ensemble(self, batch, logits)
        return logits

    @property
    def classnames_for_training(self) -> list[str]:
        """The classes the method was configured (and trained) with."""
        return list(self.hparams.get("classnames") or self.classnames)

    # ------------------------------------------------------------------------------------------
    # Optimisation
    # ------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        groups = self.param_groups()
        self._check_param_groups(groups)
        unknown = set(self._param_group_lr) - {group["name"] for group in groups}
        if unknown:
            names = sorted(group["name"] for group in groups)
            raise ConfigurationError(
                f"param_group_lr names unknown groups {sorted(unknown)}; {type(self).__name__} has {names}."
            )
        for group in groups:
            if group["name"] in self._param_group_lr:
                group["lr"] = float(self._param_group_lr[group["name"]])
        optimizer = self._optimizer_factory(groups)
        if self._scheduler_factory is None:
            return optimizer
        scheduler = self._scheduler_factory(optimizer)
        if hasattr(scheduler, "set_max_epochs") and self._trainer is not None:
            trainer = self.trainer
            total = trainer.max_epochs if self._scheduler_interval == "epoch" else trainer.estimated_stepping_batches
            if total is not None and 0 < total < math.inf:
                scheduler.set_max_epochs(int(total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self._scheduler_interval}}

    def _check_param_groups(self, groups: list[dict[str, Any]]) -> None:
        seen: dict[int, str] = {}
        for group in groups:
            for param in group["params"]:
                if not param.requires_grad:
                    raise ConfigurationError(f"Parameter group {group['name']!r} holds a frozen parameter.")
                if id(param) in seen:
                    raise ConfigurationError(f"A parameter is in groups {seen[id(param)]!r} and {group['name']!r}.")
                seen[id(param)] = group["name"]
        missing = [name for name, p in self.named_parameters() if p.requires_grad and id(p) not in seen]
        if missing:
            raise ConfigurationError(f"Trainable parameters in no parameter group: {missing}.")

    # ------------------------------------------------------------------------------------------
    # Checkpoints and export
    # ------------------------------------------------------------------------------------------
    def trainable_state_keys(self) -> set[str]:
        """State-dict keys a checkpoint keeps: everything outside the backbone, plus backbone
        parameters a method unfroze (e.g. a text classifier head)."""
        keys = {key for key in self.state_dict() if not key.startswith("backbone.")}
        keys |= {f"backbone.{name}" for name, p in self.backbone.named_parameters() if p.requires_grad}
        return keys

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = self.trainable_state_keys()
        for key in ("state_dict", "current_model_state"):  # the second one: Lightning's weight averaging
            if key in checkpoint:
                checkpoint[key] = {k: v for k, v in checkpoint[key].items() if k in keep}
        checkpoint[_CHECKPOINT_KEY] = {"backbone": self.backbone.identity(), "state_keys": sorted(keep)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get(_CHECKPOINT_KEY) or {}
        self._check_loadable(checkpoint.get("state_dict", {}).keys(), meta.get("backbone"), "the checkpoint")

    def _check_backbone(self, identity: Mapping[str, str] | None, source: str) -> None:
        mine = self.backbone.identity()
        if identity is not None and (
            identity.get("class") != mine["class"] or identity.get("fingerprint") != mine["fingerprint"]
        ):
            raise BackboneMismatchError(
                f"{source} holds a prompt trained on backbone {identity.get('class')} {identity.get('name')!r} "
                f"(fingerprint {identity.get('fingerprint')}), but this {type(self).__name__} has "
                f"{mine['class']} {mine['name']!r} (fingerprint {mine['fingerprint']}). Load it into the "
                f"backbone it was trained on."
            )

    def _check_loadable(self, keys: Iterable[str], identity: Mapping[str, str] | None, source: str) -> None:
        self._check_backbone(identity, source)
        keys = set(keys)
        missing = sorted(self.trainable_state_keys() - keys)
        if missing:
            raise MissingTrainableStateError(
                f"{source} lacks trainable tensors of {type(self).__name__}: {missing}. It was saved by "
                f"another method or configuration."
            )
        own = set(self.state_dict())
        unexpected = sorted(k for k in keys if k not in own and not k.startswith("backbone."))
        if unexpected:
            raise MissingTrainableStateError(
                f"{source} holds tensors that {type(self).__name__} does not define: {unexpected}. It was "
                f"saved by another method or configuration."
            )

    def export_prompt(self, path: str | Path, prefix: str = "") -> Path:
        """Write the trainable state (prompts, heads) to a ``safetensors`` file.

        The file's metadata names the method, its hyperparameters and the backbone identity, so
        :meth:`load_prompt` can refuse it for another backbone. ``prefix`` keeps only the tensors whose
        names start with it (``"prompt."``: the prompt without a head).
        """
        from safetensors.torch import save_file

        keep = {key for key in self.trainable_state_keys() if key.startswith(prefix)}
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if k in keep}
        metadata = {
            f"{_METADATA_PREFIX}method": f"{type(self).__module__}.{type(self).__qualname__}",
            f"{_METADATA_PREFIX}backbone": json.dumps(self.backbone.identity()),
            f"{_METADATA_PREFIX}hparams": json.dumps(dict(self.hparams), default=str),
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=metadata)
        tmp.replace(path)  # atomic: no half-written file on failure
        return path

    def load_prompt(self, path: str | Path) -> None:
        """Load a file written by :meth:`export_prompt` into this module (same checks as checkpoints)."""
        tensors, identity = _read_prompt_file(path)
        self._check_loadable(tensors, identity, f"prompt file {path}")
        self.load_state_dict(tensors, strict=False)

    def init_prompt_from(self, path: str | Path) -> None:
        """Copy the tensors of a prompt file into the trainable tensors of the same names (see
        ``prompt_init``); the backbone must match and every tensor must fit a trainable one."""
        path = Path(path)
        if not path.is_file():
            raise ConfigurationError(f"prompt_init file {path} does not exist.")
        tensors, identity = _read_prompt_file(path)
        self._check_backbone(identity, f"prompt_init file {path}")
        own = self.state_dict()
        trainable = self.trainable_state_keys()
        for key, tensor in tensors.items():
            if key not in trainable:
                raise ConfigurationError(
                    f"prompt_init file {path} holds {key!r}, which is not a trainable tensor of "
                    f"{type(self).__name__} ({_preview(sorted(trainable))})."
                )
            if tuple(tensor.shape) != tuple(own[key].shape):
                raise ConfigurationError(
                    f"prompt_init file {path}: {key!r} has shape {tuple(tensor.shape)} but "
                    f"{type(self).__name__} needs {tuple(own[key].shape)} (e.g. another n_ctx)."
                )
        self.load_state_dict(tensors, strict=False)


def _read_prompt_file(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str] | None]:
    """The tensors of a file written by :meth:`PromptModule.export_prompt` and its backbone identity."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        identity = (handle.metadata() or {}).get(f"{_METADATA_PREFIX}backbone")
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    return tensors, json.loads(identity) if identity else None


def _preview(names: Sequence[str], limit: int = 5) -> str:
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{', …' if len(names) > limit else ''}] ({len(names)})"
