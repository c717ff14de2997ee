"""Reading the JSON files users give (split files, description and paraphrase files, manifests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning_prompts.errors import DatasetError


def read_json(path: Path, what: str) -> Any:
    """The content of the UTF-8 JSON file ``path`` (a ``what``, for the messages): a missing file, another encoding
    or invalid JSON is one :class:`DatasetError` naming the file, not a raw decoding error."""
    if not path.is_file():
        raise DatasetError(f"{what} {path} does not exist.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DatasetError(
            f"{what} {path} is not UTF-8 text ({error.reason} at byte {error.start}); re-save it as UTF-8."
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DatasetError(f"{what} {path} is not valid JSON: {error}.") from None
