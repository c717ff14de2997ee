"""Which images were already decoded: a small per-dataset record that makes re-verification a ``stat``.

The record lives outside the data folder (users share data folders, and they may be read-only): in
``$LIGHTNING_PROMPTS_CACHE`` or ``~/.cache/lightning_prompts``, one JSON file per dataset folder, mapping
each verified image (relative path) to its size and modification time in nanoseconds. A file that
changes in any way that matters changes one of them, so a recorded image is trusted only if both still
match; anything else is decoded again. Failing to write the record never fails a run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def cache_folder() -> Path:
    return Path(os.environ.get("LIGHTNING_PROMPTS_CACHE", Path.home() / ".cache" / "lightning_prompts")) / "verified"


class VerifiedImages:
    """The decoded images under one folder (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.abspath(root))  # abspath, not resolve: a symlink loop fails later, named
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
        self.file = cache_folder() / f"{digest}.json"
        self.entries: dict[str, list[int]] = {}
        self.changed = False
        try:
            content = json.loads(self.file.read_text())
            if content.get("root") == str(self.root) and isinstance(content.get("images"), dict):
                self.entries = content["images"]
        except (OSError, ValueError):
            pass

    @classmethod
    def for_items(cls, items: Sequence[Any]) -> VerifiedImages:
        """The record of the folder that holds all ``items`` (their common parent)."""
        paths = [os.path.dirname(os.path.abspath(item.path)) for item in items]
        root = Path(os.path.commonpath(paths)) if paths else Path(".")
        return cls(root)

    def _key(self, path: Path) -> str:
        absolute = Path(os.path.abspath(path))
        try:
            return str(absolute.relative_to(self.root))
        except ValueError:
            return str(absolute)

    def known(self, path: Path, stat: os.stat_result) -> bool:
        return self.entries.get(self._key(path)) == [stat.st_size, stat.st_mtime_ns]

    def add(self, path: Path, stat: os.stat_result) -> None:
        self.entries[self._key(path)] = [stat.st_size, stat.st_mtime_ns]
        self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.file.with_suffix(f".{os.getpid()}.tmp")  # DDP processes verify and save at once
            tmp.write_text(json.dumps({"root": str(self.root), "images": self.entries}))
            tmp.replace(self.file)
            self.changed = False
        except OSError:
            pass
