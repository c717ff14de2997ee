"""Exceptions raised on bad input.

Every error that the library raises on purpose says *what was expected* and *where* (which
file, which split, which method or callback), and is raised before training starts, so that a
mistake in a recipe costs seconds, not an epoch.
"""

from __future__ import annotations


class LightningPromptsError(Exception):
    """Base class of every error raised on purpose by lightning_prompts."""


class DatasetError(LightningPromptsError, ValueError):
    """A dataset on disk does not match the layout or content the data module expects."""


class BackboneMismatchError(LightningPromptsError, ValueError):
    """A prompt checkpoint was trained on another backbone than the one it is loaded into."""


class MissingTrainableStateError(LightningPromptsError, KeyError):
    """A checkpoint lacks a trainable tensor that the module needs (a prompt, a head)."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class MissingOutputFieldError(LightningPromptsError, ValueError):
    """A callback needs an output field that the method it is attached to does not produce."""

    def __init__(self, method: str, callback: str, field: str, available: tuple[str, ...] = ()) -> None:
        self.method, self.callback, self.field = method, callback, field
        have = ", ".join(sorted(available)) or "none"
        super().__init__(
            f"Callback {callback} needs the output field {field!r}, but method {method} does not "
            f"produce it (it produces: {have}). Remove the callback or use a method that provides "
            f"{field!r}."
        )


class ConfigurationError(LightningPromptsError, ValueError):
    """Parts of an experiment that cannot work together (model and data classes, task levels…)."""


class ContextLengthError(LightningPromptsError, ValueError):
    """A prompt plus its text does not fit into the model's context window."""
