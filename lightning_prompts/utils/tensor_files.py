"""Reading and writing tensor files: never code, never half-written.

:func:`load_tensor_file` reads with ``torch.load(weights_only=True)`` (tensors, containers and plain
values only: a file cannot run code) and turns every failure into one clear error;
:func:`save_atomically` writes to a temporary name and renames, so no reader ever sees a partial file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def load_tensor_file(path: Path, what: str) -> Any:
    """The content of ``path`` (a ``what``, for the messages), read with ``weights_only=True``."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # not a tensor file, or one holding objects other than tensors
        raise ValueError(f"{path} is not a {what} readable with weights_only=True: {error}") from error


def save_atomically(content: Any, path: str | Path) -> Path:
    """``torch.save(content)`` to ``path`` through a temporary file (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(content, tmp)
    tmp.replace(path)
    return path
