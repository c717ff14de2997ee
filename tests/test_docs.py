"""The documentation site builds with --strict (broken links and nav entries fail)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="the [docs] extra is not installed")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "methods" / "coop" / "index.html").is_file()


def test_every_method_has_a_docs_page():
    import lightning_prompts.methods as methods

    pages = {p.stem for p in (ROOT / "docs" / "methods").glob("*.md")}
    modules = {name for name in dir(methods) if not name.startswith("_")} - {"PromptModule", "base"}
    names = {
        getattr(methods, name).__module__.rsplit(".", 1)[-1]
        for name in modules
        if isinstance(getattr(methods, name), type)
    }
    names = {name for name in names if not name.startswith("_")}  # shared bases live in private modules
    assert names <= pages, f"methods without a docs page: {names - pages}"
