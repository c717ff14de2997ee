"""The frozen pre-trained model behind every method.

A backbone loads a pre-trained model by the upstream library's own name and tag (or a local
checkpoint), freezes it, and exposes only the seams that prompt methods need. Three promises
hold for every backbone:

* **frozen**: no parameter requires a gradient, and the module is always in ``eval`` mode, so
  dropout and BatchNorm statistics never change while prompts train. Several official
  implementations call ``model.train()`` on the whole network and so train with the backbone's
  dropout on and its BatchNorm statistics drifting; we do not.
* **rebuildable**: :meth:`config` returns ``{"class_path", "init_args"}``, which is all a
  checkpoint stores about the backbone; loading rebuilds it from its source.
* **identifiable**: :meth:`identity` fingerprints the weights, so a prompt checkpoint refuses to
  load into a different backbone.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from lightning_prompts.backbones.hooks import expand_to_batch  # noqa: F401  (shared helper, re-exported)
from lightning_prompts.errors import ConfigurationError

#: what the vision backbones' ``dtype`` argument accepts: the dtype their frozen weights are kept and run in
WEIGHT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: Trainer precisions under which a backbone with half-precision weights runs: autocast puts the float32 prompts,
#: adapters and heads in the products with its weights in one dtype; a '-true' precision casts everything
HALF_WEIGHT_PRECISIONS = ("bf16-mixed", "16-mixed", "bf16-true", "16-true")


def weight_dtype(name: str, owner: str) -> torch.dtype:
    """The torch dtype of a ``dtype`` argument, or a clear refusal."""
    if name not in WEIGHT_DTYPES:
        raise ConfigurationError(f"{owner} dtype must be one of {', '.join(WEIGHT_DTYPES)}, got {name!r}.")
    return WEIGHT_DTYPES[name]


class Backbone(nn.Module):
    """Base class of frozen backbones. Subclasses build ``self.model`` and call :meth:`freeze`."""

    #: Which family of methods the backbone serves ("clip", "vit", "text", "graph").
    family: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Record the arguments of the outermost constructor call, so that `config()` can rebuild
        # the backbone without every subclass repeating its own arguments.
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self: Backbone, *args: Any, **kw: Any) -> None:
            if "_init_args" not in self.__dict__:
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                recorded = {k: v for k, v in bound.arguments.items() if k != "self"}
                object.__setattr__(self, "_init_args", recorded)
            init(self, *args, **kw)

        cls.__init__ = recording_init  # type: ignore[method-assign]

    # -- frozen -------------------------------------------------------------------------------
    def freeze(self) -> None:
        """Stop gradients into every parameter, switch to eval mode, and fingerprint the weights."""
        self.requires_grad_(False)
        self.eval()
        self._fingerprints = _fingerprints(self)

    #: whether the frozen weights are kept in 16 bits (a vision backbone's ``dtype``): such a backbone runs under
    #: one of :data:`HALF_WEIGHT_PRECISIONS`, which methods check before their first step
    half_weights: bool = False

    def keep_weights_in(self, dtype: torch.dtype) -> None:
        """Keep the frozen weights in ``dtype``; after :meth:`freeze`, so the fingerprint is the loaded weights'
        (a prompt trained on the bfloat16 copy loads into the float32 one and back)."""
        if dtype != torch.float32:
            self.model.to(dtype)
            self.half_weights = True

    def train(self, mode: bool = True) -> Backbone:
        """Stay in eval mode whatever is asked: the backbone is frozen, dropout and BN included."""
        return super().train(False)

    # -- rebuildable --------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """``{"class_path": ..., "init_args": ...}`` from which :func:`build_backbone` rebuilds this."""
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(self._init_args)}

    @classmethod
    def check_stored_config(cls, init_args: Mapping[str, Any]) -> None:
        """Refuse arguments that a *file* (a checkpoint's hyperparameters) must not set, because they would
        run code or reach outside what the user configured. Only the user's own config or code may pass
        them; subclasses with such arguments override this (:class:`~lightning_prompts.backbones.HFText`
        refuses ``trust_remote_code``)."""

    # -- identifiable -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """A human-readable name of the pre-trained model (used in messages)."""
        return type(self).__name__

    def identity(self) -> dict[str, str]:
        """What a prompt checkpoint remembers about the backbone it was trained on: the weights' fingerprint, and
        the fingerprints of the weights rounded to bfloat16 and to float16, which a model loaded in float32 and the
        same model loaded in 16 bits (``HFText(model_kwargs={"dtype": "bfloat16"})``) share."""
        return {"class": type(self).__name__, "name": self.name, **self._fingerprints}

    def is_identified_by(self, identity: Mapping[str, str]) -> bool:
        """Whether ``identity`` (a checkpoint's record, :meth:`identity`) names these weights: the same class and
        one fingerprint in common (the float32 one, or a 16-bit one when one side was loaded in 16 bits).
        Checkpoints written before the 16-bit fingerprints existed compare by the first."""
        if identity.get("class") != type(self).__name__:
            return False
        return any(identity.get(key) == value for key, value in self._fingerprints.items())

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


#: the 16-bit types a model may be loaded in, whose rounding of the float32 weights :meth:`Backbone.identity` records
_HALF_TYPES = {"fingerprint_bfloat16": torch.bfloat16, "fingerprint_float16": torch.float16}


def _fingerprints(module: nn.Module) -> dict[str, str]:
    """``{"fingerprint": ..., "fingerprint_bfloat16": ..., "fingerprint_float16": ...}``: hashes of parameter names,
    shapes and per-tensor sums (rounded, so summation order does not change them while a different checkpoint
    almost surely does), of the weights as they are and rounded to each 16-bit type; one pass over the weights."""
    digests = {key: hashlib.sha256() for key in ("fingerprint", *_HALF_TYPES)}
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not torch.is_tensor(tensor) or not tensor.is_floating_point():
                continue
            tensor = tensor.detach().to("cpu")
            for key, digest in digests.items():
                rounded = tensor.to(_HALF_TYPES[key]) if key in _HALF_TYPES else tensor
                total = rounded.to(torch.float64).sum().item()
                digest.update(f"{name}:{tuple(tensor.shape)}:{total:.5g};".encode())
    return {key: digest.hexdigest()[:16] for key, digest in digests.items()}


def build_backbone(config: Backbone | Mapping[str, Any]) -> Backbone:
    """Return ``config`` if it is a backbone, otherwise build one from ``{"class_path", "init_args"}``.

    Checkpoints hand their stored backbone config to a module's constructor as a plain dict; this is
    where it becomes a backbone again. Such a dict comes from a file, so only a *registered* backbone
    class is built (nothing is imported before that check) and its arguments pass
    :meth:`Backbone.check_stored_config`.
    """
    if isinstance(config, Backbone):
        return config
    if not isinstance(config, Mapping) or "class_path" not in config:
        raise TypeError(
            f"Expected a Backbone or a mapping with 'class_path' (and 'init_args'), got {type(config).__name__}."
        )
    from lightning_prompts.registry import resolve_class

    cls = resolve_class(str(config["class_path"]), "backbone")
    init_args = dict(config.get("init_args") or {})
    cls.check_stored_config(init_args)
    return cls(**init_args)
