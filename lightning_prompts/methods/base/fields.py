"""Output fields with providers: how a method declares what it can put into its :class:`PromptOutput`.

A method's forward fills the fields it always computes (its ``produced_fields``). Fields that cost
extra work (a frozen forward pass, a masked view) are filled on request by *providers*: methods marked
``@provides("field")`` that take the batch and the output so far. A loss term lists the fields it
needs; before training the module checks it can fill them all (``output_fields``), and in each step it
computes exactly the requested ones. A subclass overrides a provider by defining one for the same field.

    class MyMethod(CLIPPromptModule):
        @provides("frozen_text_features")
        def teacher_text(self, batch, output):
            return ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_MARK = "__provides_field__"


def provides(field: str) -> Callable[[F], F]:
    """Mark a method ``(self, batch, output) -> Tensor`` as the provider of ``field``."""
    from lightning_prompts.outputs import OUTPUT_FIELDS

    if field not in OUTPUT_FIELDS:
        raise ValueError(f"{field!r} is not a PromptOutput field ({sorted(OUTPUT_FIELDS)}).")

    def mark(function: F) -> F:
        setattr(function, _MARK, field)
        return function

    return mark


def collect_providers(cls: type) -> dict[str, str]:
    """``{field: method name}`` over ``cls``'s MRO, the most derived definition winning."""
    providers: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            field = getattr(value, _MARK, None)
            if field is not None:
                providers[field] = name
    # a subclass that sets a provider's name to None (or to an unmarked method) no longer provides the field
    return {field: name for field, name in providers.items() if getattr(getattr(cls, name, None), _MARK, None) == field}
