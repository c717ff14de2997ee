"""Resolve a callback's ``groups`` setting to a method's parameters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from lightning_prompts.errors import ConfigurationError


def group_parameters(module: Any, groups: Sequence[str], callback: str) -> list[nn.Parameter]:
    """The parameters of ``module``'s named parameter groups (``param_groups()``) listed in ``groups``;
    a :class:`ConfigurationError` naming the method, the callback and the method's groups otherwise."""
    available = {group["name"]: group["params"] for group in module.param_groups()}
    unknown = [name for name in groups if name not in available]
    if unknown:
        raise ConfigurationError(
            f"{callback} on {type(module).__name__}: no parameter group {unknown}; "
            f"{type(module).__name__} has {sorted(available)}."
        )
    return [param for name in groups for param in available[name]]
