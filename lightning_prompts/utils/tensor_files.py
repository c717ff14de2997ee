"""Reading and writing tensor files: never code, never half-written.

:func:`load_tensor_file` reads with ``torch.load(weights_only=True)`` (tensors, containers and plain
values only: a file cannot run code) and turns every failure into one clear error;
:func:`save_atomically` writes to a temporary name and renames, so no reader ever sees a partial file.
:func:`require_file` and :func:`load_weights_file` do the same for a backbone's local weights file, read by
its library's own loader.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lightning_prompts.errors import ConfigurationError


def load_tensor_file(path: Path, what: str) -> Any:
    """The content of ``path`` (a ``what``, for the messages), read with ``weights_only=True``."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # not a tensor file, or one holding objects other than tensors
        raise ValueError(
            f"{path} is not a {what} readable with weights_only=True: {load_failure_reason(error)}"
        ) from error


def save_atomically(content: Any, path: str | Path) -> Path:
    """``torch.save(content)`` to ``path`` through a temporary file (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(content, tmp)
    tmp.replace(path)
    return path


def require_file(path: str, owner: str) -> None:
    """Refuse a weights file that is not there before the model is built (a ViT-L takes seconds to build);
    ``owner`` names the backbone argument in the message."""
    if not Path(path).is_file():
        raise ConfigurationError(f"{owner}: weights file {path} does not exist (or is not a file).")


def load_failure_reason(error: BaseException) -> str:
    """Why a weights-only load failed, for a message: torch and timm advise retrying with ``weights_only=False``,
    which would let the file run code, so that advice is never passed on."""
    if "weights_only" in str(error):
        return "it holds objects other than tensors and plain values, or is not a PyTorch file"
    return " ".join(str(error).split())[:300] or "no detail"


def load_weights_file(path: str, load: Callable[[], Any], owner: str) -> None:
    """Run ``load``, a library's loader of the local weights file ``path`` (open_clip's or timm's, both reading
    with ``weights_only=True``), with every failure turned into one :class:`ConfigurationError` naming the file."""
    try:
        load()
    except Exception as error:  # noqa: BLE001 - truncated, not a tensor file, other keys: the file is at fault
        raise ConfigurationError(
            f"{owner}: {path} could not be loaded as a weights-only checkpoint of this model ({type(error).__name__}: "
            f"{load_failure_reason(error)}). Give a complete .pt, .pth, .bin or .safetensors file of this "
            f"architecture's weights."
        ) from error
