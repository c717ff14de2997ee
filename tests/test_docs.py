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


def test_every_registered_method_and_callback_has_its_docs_page():
    from lightning_prompts import registry

    for entry in [*registry.entries("method"), *registry.entries("callback"), *registry.entries("pretraining")]:
        assert (ROOT / "docs" / entry.docs).is_file(), f"{entry.name} has no docs page at docs/{entry.docs}"
