"""The documentation site builds with --strict (broken links and nav entries fail)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mkdocs_build_strict(tmp_path, monkeypatch):
    pytest.importorskip("mkdocs", reason="the [docs] extra is not installed")
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    # in this process, as `mkdocs build --strict` would run it: a subprocess would import torch and
    # lightning again for the hooks and the API reference (about 10 s on a 2-core machine)
    monkeypatch.chdir(ROOT)  # the snippets' base path is the working folder
    monkeypatch.setenv("NO_MKDOCS_2_WARNING", "1")
    build(load_config(str(ROOT / "mkdocs.yml"), strict=True, site_dir=str(tmp_path / "site")))  # raises on a warning
    site = tmp_path / "site"
    assert (site / "methods" / "coop" / "index.html").is_file()
    api = (site / "api" / "methods" / "index.html").read_text()
    assert 'id="lightning_prompts.methods.coop.CoOp"' in api and ":class:" not in api  # roles shown as names
    coop = (site / "methods" / "coop" / "index.html").read_text()
    assert "api/methods/#lightning_prompts.methods.coop.CoOp" in coop  # the method page links its API entry
    assert 'class="arithmatex"' in coop  # formulas are math, not code
    tutorial = (site / "tutorials" / "coop_export_new_classes" / "index.html").read_text()
    assert "test/acc_novel: 0." in tutorial and '<span class="nf">main</span>' in tutorial  # script and output

    if shutil.which("chromium") is None:
        return  # the screenshots need the Debian package (apt-get install chromium)
    shots = subprocess.run(
        [sys.executable, "docs/screenshots.py", "--site", str(site), "--out", str(tmp_path / "shots")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert shots.returncode == 0, shots.stdout + shots.stderr
    sizes = {path.stem: path.stat().st_size for path in (tmp_path / "shots").glob("*.png")}
    assert set(sizes) == {"home", "tutorial_coop", "api_coop", "gallery"}
    assert min(sizes.values()) > 50_000, sizes  # a blank page is about 9 KB


def test_every_registered_method_and_callback_has_its_docs_page():
    from lightning_prompts import registry

    for entry in [*registry.entries("method"), *registry.entries("callback"), *registry.entries("pretraining")]:
        assert (ROOT / "docs" / entry.docs).is_file(), f"{entry.name} has no docs page at docs/{entry.docs}"


def test_readme_table_covers_every_registered_backbone_and_family():
    from lightning_prompts import registry

    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| family | backbone | library |") :].split("\n\n", 1)[0]
    families = {"clip": "vision-language", "vit": "vision", "text": "text", "graph": "graph", "points": "point clouds"}
    families["hetero"] = "heterogeneous graph"
    for entry in registry.entries("backbone"):
        assert f"`{entry.name}`" in table, f"README's table lacks the backbone {entry.name}"
        assert f"| {families[entry.family]} |" in table
    for entry in registry.list_methods():
        assert f"| {families[entry.family]} |" in table, f"README's table lacks the family of {entry.name}"


def test_docs_tables_and_nav_come_from_the_registry():
    """The hook's tables list every registered method, callback and recipe folder."""
    import importlib.util

    from lightning_prompts import registry

    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    methods, callbacks, recipes = hooks.methods_table(), hooks.callbacks_table(), hooks.recipes_table()
    for entry in registry.entries("method"):
        assert f"[`{entry.name}`]({entry.docs})" in methods
    for entry in registry.entries("callback"):
        assert f"[`{entry.name}`]({entry.docs})" in callbacks
    for folder in ("coop/", "coop/base_to_novel/", "lae/", "testbed/"):
        assert f"| `{folder}` |" in recipes
    config = hooks.on_config({"nav": [{"Home": "index.md"}, {"Offline testbed": "testbed.md"}, {"Benchmarks": "b.md"}]})
    sections = {key: value for item in config["nav"] for key, value in item.items()}
    assert {entry.docs for entry in registry.entries("method")} <= {next(iter(i.values())) for i in sections["Methods"]}
    assert [next(iter(i)) for i in sections["Callbacks"]] == [e.name for e in registry.entries("callback")]


def test_every_test_file_the_docs_and_docstrings_name_exists():
    """A page or docstring that says which test pins a method names a file that is there (twelve once pointed at
    ``tests/test_<method>.py`` after the tests moved into ``tests/methods/`` and ``tests/pretraining/``), and a
    ``file.py::name`` reference names a test of that file."""
    import re

    sources = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "lightning_prompts").rglob("*.py")]
    sources += [*(ROOT / "recipes").rglob("*.yaml"), *(ROOT / "benchmarks").rglob("*.py")]
    named = {}
    for source in sources:
        for match in re.finditer(r"\btests/[\w/]+\.py(?:::(\w+))?", source.read_text()):
            named.setdefault(match.group(0), source.relative_to(ROOT))
    assert len(named) > 20  # the pages do name their tests
    for reference, source in sorted(named.items()):
        path, _, test = reference.partition("::")
        assert (ROOT / path).is_file(), f"{source} names {path}, which does not exist"
        assert not test or f"def {test}(" in (ROOT / path).read_text(), f"{source} names {reference}, not a test"
