"""Checkpoints and prompt files hold the trainable state only, and refuse another backbone.

Mixed into :class:`~lightning_prompts.methods.PromptModule`. The trainable state is every tensor
outside the frozen backbone plus backbone parameters a method unfroze (a text classifier head), and,
for methods whose trainable state is text (discrete prompt optimisers), the strings of
:meth:`TrainableStateMixin.text_state`. A checkpoint or a ``safetensors`` prompt file records the
backbone's identity; loading refuses a file of another backbone, one that lacks a trainable tensor,
and one with tensors the module does not define, and tensors of another shape, not floating point, or holding
NaN or infinite values, each with a message naming the file and what differs. A
Lightning checkpoint also holds the random generators' states, restored when ``fit`` resumes from it
(:mod:`~lightning_prompts.methods.base.reproducibility`), so a resumed run equals the uninterrupted one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from lightning_prompts.errors import BackboneMismatchError, ConfigurationError, MissingTrainableStateError
from lightning_prompts.methods.base.reproducibility import restore_rng_state, rng_state

CHECKPOINT_KEY = "lightning_prompts"
METADATA_PREFIX = "lightning_prompts."
#: Added to the in-memory copy that :meth:`TrainableStateMixin.load_from_checkpoint` hands to Lightning (never
#: saved), so that the checks of ``on_load_checkpoint``, which Lightning gives the content only, name the file.
SOURCE_KEY = "lightning_prompts.source"


class TrainableStateMixin:
    """Trainable-state checkpoints, export and import (see the module docstring)."""

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None, **kwargs: Any) -> Any:
        """Lightning's ``load_from_checkpoint``, with the checkpoint's own class-building instructions
        (``_instantiator``, ``_class_path``) dropped first: they would build the nested classes the file
        names (importing their modules). The module is built by its constructor from the stored
        hyperparameters instead, which accept only registered classes. A file that is missing, unreadable or
        written by another method is refused with a :class:`ConfigurationError` naming it."""
        import io

        import torch

        if isinstance(checkpoint_path, (str, Path)) and kwargs.get("hparams_file") is None:
            checkpoint = read_checkpoint(checkpoint_path, map_location or "cpu")
            meta = checkpoint.get(CHECKPOINT_KEY)
            method = meta.get("method") if isinstance(meta, dict) else None
            # the constructor would fail on the other method's hyperparameters with a TypeError naming neither
            # class; a subclass may load its parent's checkpoint
            if method and method not in {klass.__name__ for klass in cls.__mro__}:
                raise ConfigurationError(
                    f"checkpoint {checkpoint_path} was written by {method}, not {cls.__name__}: load it with "
                    f"{method}.load_from_checkpoint."
                )
            stored = checkpoint.get("hyper_parameters")
            if isinstance(stored, dict):
                for key in ("_instantiator", "_class_path"):
                    stored.pop(key, None)
            checkpoint[SOURCE_KEY] = str(checkpoint_path)
            buffer = io.BytesIO()
            torch.save(checkpoint, buffer)
            buffer.seek(0)
            checkpoint_path = buffer
        return super().load_from_checkpoint(checkpoint_path, map_location=map_location, **kwargs)

    # -- what is trainable -------------------------------------------------------------------------
    def trainable_state_keys(self) -> set[str]:
        """State-dict keys a checkpoint keeps: everything outside the backbone (and outside any other frozen
        backbone the method holds, such as POST's source model), plus backbone parameters a method unfroze
        (e.g. a text classifier head)."""
        from lightning_prompts.backbones.base import Backbone

        frozen = [name for name, child in self.named_children() if isinstance(child, Backbone)]
        keys = {key for key in self.state_dict() if not any(key.startswith(f"{name}.") for name in frozen)}
        for name in frozen:
            child = getattr(self, name)
            keys |= {f"{name}.{param}" for param, p in child.named_parameters() if p.requires_grad}
        return keys

    def text_state(self) -> dict[str, str]:
        """Trainable state that is text (a discrete prompt); saved in checkpoints and prompt files."""
        return {}

    def load_text_state(self, state: Mapping[str, str]) -> None:
        """Restore :meth:`text_state`."""
        if state:
            raise MissingTrainableStateError(
                f"{type(self).__name__} has no text state, but the file holds {sorted(state)}."
            )

    # -- Lightning checkpoints ---------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = self.trainable_state_keys()
        for key in ("state_dict", "current_model_state"):  # the second one: Lightning's weight averaging
            if key in checkpoint:
                checkpoint[key] = {k: v for k, v in checkpoint[key].items() if k in keep}
        checkpoint[CHECKPOINT_KEY] = {
            "method": type(self).__name__,
            "backbone": self.backbone.identity(),
            "state_keys": sorted(keep),
            "text_state": self.text_state(),
            "evaluator": self.evaluator.state_dict() if self.evaluator is not None else {},
            "rng": rng_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get(CHECKPOINT_KEY) or {}
        source = self._checkpoint_source(checkpoint)
        self._check_loadable(checkpoint.get("state_dict", {}).keys(), meta.get("backbone"), source)
        for key in ("state_dict", "current_model_state"):  # the second one: Lightning's weight averaging
            tensors = checkpoint.get(key) or {}
            self._check_shapes(tensors, source)
            check_finite(tensors, source)
        self.load_text_state(meta.get("text_state") or {})
        if meta.get("evaluator"):
            self.restore_evaluator_state(meta["evaluator"])
        trainer = getattr(self, "_trainer", None)
        if meta.get("rng") and trainer is not None and trainer.state.fn == "fit":  # resuming: continue exactly
            restore_rng_state(meta["rng"])

    def _checkpoint_source(self, checkpoint: Mapping[str, Any]) -> str:
        """``checkpoint <path>`` for messages: the file :meth:`load_from_checkpoint` or the Trainer read."""
        trainer = getattr(self, "_trainer", None)
        path = checkpoint.get(SOURCE_KEY) or (trainer.ckpt_path if trainer is not None else None)
        return f"checkpoint {path}" if path else "the checkpoint"

    def _check_backbone(self, identity: Mapping[str, str] | None, source: str) -> None:
        mine = self.backbone.identity()
        if identity is not None and not self.backbone.is_identified_by(identity):
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

    def _check_shapes(self, tensors: Mapping[str, Tensor], source: str) -> None:
        """Every tensor of this module fits: same shape, and floating point where the module's is."""
        own = self.state_dict()
        for key, tensor in tensors.items():
            if key not in own:
                continue
            if tuple(tensor.shape) != tuple(own[key].shape):
                raise ConfigurationError(
                    f"{source}: {key!r} has shape {tuple(tensor.shape)} but {type(self).__name__} needs "
                    f"{tuple(own[key].shape)} (another n_ctx, width or number of classes?)."
                )
            # load_state_dict would cast integers to floats without a word: such a file was not written by us
            if own[key].is_floating_point() and not tensor.is_floating_point():
                raise ConfigurationError(
                    f"{source}: {key!r} is a {tensor.dtype} tensor but {type(self).__name__} needs floating point "
                    f"({own[key].dtype}); write it with export_prompt (prompt files) or fit (checkpoints)."
                )

    # -- prompt files ------------------------------------------------------------------------------
    def export_prompt(self, path: str | Path, prefix: str = "") -> Path:
        """Write the trainable state (prompts, heads; text state as metadata) to a ``safetensors`` file.

        The file's metadata names the method, its hyperparameters and the backbone identity, so
        :meth:`load_prompt` can refuse it for another backbone. ``prefix`` keeps only the tensors whose
        names start with it (``"prompt."``: the prompt without a head).
        """
        from safetensors.torch import save_file

        keep = {key for key in self.trainable_state_keys() if key.startswith(prefix)}
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if k in keep}
        metadata = {
            f"{METADATA_PREFIX}method": f"{type(self).__module__}.{type(self).__qualname__}",
            f"{METADATA_PREFIX}backbone": json.dumps(self.backbone.identity()),
            f"{METADATA_PREFIX}hparams": json.dumps(dict(self.hparams), default=str),
            f"{METADATA_PREFIX}text_state": json.dumps(self.text_state()),
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=metadata)
        tmp.chmod(0o644)  # safetensors writes owner-only files; a prompt file is meant to be shared
        tmp.replace(path)  # atomic: no half-written file on failure
        return path

    def load_prompt(self, path: str | Path) -> None:
        """Load a file written by :meth:`export_prompt` into this module (same checks as checkpoints)."""
        tensors, metadata = read_prompt_file(path)
        self._check_loadable(tensors, metadata.get("backbone"), f"prompt file {path}")
        self._check_shapes(tensors, f"prompt file {path}")
        self.load_state_dict(tensors, strict=False)
        self.load_text_state(metadata.get("text_state") or {})

    def check_prompt_init(self, path: str | Path) -> dict[str, Tensor]:
        """Read ``prompt_init`` and check it fits: the backbone, and every tensor a trainable one of the
        same shape. Raises :class:`ConfigurationError`; returns the tensors."""
        path = Path(path)
        if not path.is_file():
            raise ConfigurationError(f"prompt_init file {path} does not exist.")
        tensors, metadata = read_prompt_file(path)
        self._check_backbone(metadata.get("backbone"), f"prompt_init file {path}")
        trainable = self.trainable_state_keys()
        for key in tensors:
            if key not in trainable:
                raise ConfigurationError(
                    f"prompt_init file {path} holds {key!r}, which is not a trainable tensor of "
                    f"{type(self).__name__} ({preview(sorted(trainable))})."
                )
        self._check_shapes(tensors, f"prompt_init file {path}")
        return tensors

    def init_prompt_from(self, path: str | Path) -> None:
        """Copy the tensors of a prompt file into the trainable tensors of the same names (see
        ``prompt_init``); the backbone must match and every tensor must fit a trainable one."""
        self.load_state_dict(self.check_prompt_init(path), strict=False)


def read_soft_prompt(path: str | Path, width: int, model: str) -> Tensor:
    """The ``(m, width)`` soft prompt (``prompt.embedding``) of a file that ``PromptTuning.export_prompt`` wrote
    on a model of embedding width ``width`` (``model`` names it in the error)."""
    tensors, _ = read_prompt_file(path)
    prompt = tensors.get("prompt.embedding")
    if prompt is None or prompt.dim() != 2 or prompt.shape[1] != width:
        raise ConfigurationError(
            f"prompt file {path} holds no prompt.embedding of width {width} (write it with "
            f"PromptTuning.export_prompt on {model})."
        )
    return prompt


def read_prompt_file(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors of a file written by :meth:`TrainableStateMixin.export_prompt` and its metadata
    (``backbone`` identity, ``text_state``); a clear :class:`ConfigurationError` for anything else."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise ConfigurationError(f"prompt file {path} is not a safetensors file ({error}).") from error
    metadata: dict[str, Any] = {}
    for name in ("backbone", "text_state"):
        value = raw.get(f"{METADATA_PREFIX}{name}")
        if value:
            try:
                metadata[name] = json.loads(value)
            except json.JSONDecodeError as error:
                raise ConfigurationError(f"prompt file {path}: its {name} metadata is not JSON.") from error
            if not isinstance(metadata[name], dict):  # export_prompt writes objects; anything else was edited
                raise ConfigurationError(
                    f"prompt file {path}: its {name} metadata is not a JSON object (it is {value[:60]!r}); write "
                    f"the file with export_prompt."
                )
    check_finite(tensors, f"prompt file {path}")
    return tensors, metadata


def check_finite(tensors: Mapping[str, Tensor], source: str) -> None:
    """Refuse NaN or infinite values: a prompt holding them gives NaN logits, and a test run would report an
    accuracy for them without a word."""
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            raise ConfigurationError(
                f"{source}: tensor {key!r} holds NaN or infinite values (the run that wrote it diverged; use an "
                f"earlier checkpoint, or train again with a lower learning rate)."
            )


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """The content of a Lightning checkpoint, read with ``weights_only=True`` (tensors and plain values: the
    file cannot run code); a :class:`ConfigurationError` naming the file when it is missing or unreadable."""
    import torch

    from lightning_prompts.utils.tensor_files import load_failure_reason

    if not Path(path).is_file():
        raise ConfigurationError(f"checkpoint {path} does not exist (or is not a file).")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure means it is not a checkpoint we can use
        raise ConfigurationError(
            f"checkpoint {path} could not be read as a weights-only Lightning checkpoint ({type(error).__name__}: "
            f"{load_failure_reason(error)}). Is it truncated (a copy or save that did not finish)? Use a complete "
            f".ckpt written by fit."
        ) from error
    if not isinstance(checkpoint, dict):
        raise ConfigurationError(
            f"checkpoint {path} holds a {type(checkpoint).__name__}, not a Lightning checkpoint (a dict with a "
            f"state_dict); use a .ckpt written by fit."
        )
    if "state_dict" not in checkpoint:  # torch reads a safetensors prompt file too, as a flat dict of tensors
        raise ConfigurationError(
            f"checkpoint {path} has no state_dict, so it is not a Lightning checkpoint"
            + (
                ": it is a prompt file (lightning-prompts export writes those); load it with "
                "--model.init_args.prompt_init instead."
                if str(path).endswith(".safetensors")
                else "; use a .ckpt written by fit."
            )
        )
    return checkpoint


def preview(names: Sequence[str], limit: int = 5) -> str:
    """``['a', 'b', …] (n)`` for messages."""
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{', …' if len(names) > limit else ''}] ({len(names)})"
