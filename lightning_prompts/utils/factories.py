"""Optimizer and scheduler factories that survive a checkpoint round trip.

From YAML, LightningCLI hands a module a *callable* (``OptimizerCallable``) for its optimizer.
A checkpoint must not pickle that callable (``torch.load(weights_only=True)`` refuses it), and
``load_from_checkpoint`` hands the module back the plain ``{"class_path", "init_args"}`` dict
that the CLI stored. These helpers turn either form into a factory, and any factory back into a
dict for the hyperparameters.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from lightning_prompts.backbones.base import import_class


def as_factory(value: Any) -> Callable[..., Any] | None:
    """A callable from ``None``, a callable, a class, or a ``{"class_path", "init_args"}`` dict."""
    if value is None or callable(value):
        return value
    if isinstance(value, Mapping) and "class_path" in value:
        return functools.partial(import_class(str(value["class_path"])), **dict(value.get("init_args") or {}))
    raise TypeError(f"Expected a callable or a mapping with 'class_path', got {value!r}.")


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
