"""Optimizer and scheduler factories that survive a checkpoint round trip.

From YAML, LightningCLI hands a module a *callable* (``OptimizerCallable``) for its optimizer.
A checkpoint must not pickle that callable (``torch.load(weights_only=True)`` refuses it), and
``load_from_checkpoint`` hands the module back the plain ``{"class_path", "init_args"}`` dict
that the CLI stored. These helpers turn either form into a factory, and any factory back into a
dict for the hyperparameters.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from lightning_prompts.errors import ConfigurationError

#: Modules whose optimizers and schedulers a stored ``{"class_path", "init_args"}`` may name.
_TRUSTED_MODULES = ("torch.optim", "lightning_prompts.optim")


def as_factory(value: Any) -> Callable[..., Any] | None:
    """A callable from ``None``, a callable, a class, or a ``{"class_path", "init_args"}`` dict.

    A dict comes from a file (a checkpoint's hyperparameters) or a method's default, so it may only
    name an optimizer or scheduler class of ``torch.optim`` or ``lightning_prompts.optim``; nothing
    else is imported or called.
    """
    if value is None or callable(value):
        return value
    if isinstance(value, Mapping) and "class_path" in value:
        return functools.partial(optimization_class(str(value["class_path"])), **dict(value.get("init_args") or {}))
    raise TypeError(f"Expected a callable or a mapping with 'class_path', got {value!r}.")


def optimization_class(class_path: str) -> type:
    """The optimizer or scheduler class ``class_path`` names, if it lives in a trusted module."""
    from torch.optim import Optimizer
    from torch.optim.lr_scheduler import LRScheduler

    module, _, name = class_path.rpartition(".")
    trusted = any(module == root or module.startswith(root + ".") for root in _TRUSTED_MODULES)
    cls = getattr(importlib.import_module(module), name, None) if trusted else None
    if not (isinstance(cls, type) and issubclass(cls, (Optimizer, LRScheduler))):
        raise ConfigurationError(
            f"optimizer/scheduler {class_path!r} is not a class of torch.optim or lightning_prompts.optim; a stored "
            f"configuration may not name anything else (pass your own class as a callable in Python or in your config)."
        )
    return cls


def describe_factory(value: Any) -> dict[str, Any] | None:
    """``{"class_path", "init_args"}`` for a factory made of a class and keyword arguments, else ``None``.

    Handles ``functools.partial(Class, **kwargs)``, a bare class, a mapping (returned as is), and
    the partials jsonargparse builds for ``OptimizerCallable``/``LRSchedulerCallable``.
    """
    if value is None:
        return None
    if isinstance(value, Mapping):
        return dict(value)
    if inspect.isclass(value):
        return {"class_path": f"{value.__module__}.{value.__qualname__}", "init_args": {}}
    if isinstance(value, functools.partial):
        # plain partial(Class, **kw), or jsonargparse's partial(helper, instantiator, Class, **kw)
        classes = [item for item in (value.func, *value.args) if inspect.isclass(item)]
        if classes:
            cls = classes[-1]
            return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(value.keywords)}
    return None
