"""Dependencies point one way (DESIGN.md): read every import of the package from its source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_prompts"


def imports(path: Path) -> list[tuple[str, bool]]:
    """``(imported module, only under TYPE_CHECKING)`` for every import in ``path``, nested ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only |= {id(child) for statement in node.body for child in ast.walk(statement)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            found += [(name, id(node) in typing_only) for name in names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, id(node) in typing_only) for alias in node.names]
    return found


def modules_under(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py"))


def offending(folder: str, forbidden: tuple[str, ...], allow_typing: tuple[str, ...] = ()) -> list[str]:
    bad = []
    for path in modules_under(folder):
        for name, typing in imports(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                if typing and any(name == a or name.startswith(a + ".") for a in allow_typing):
                    continue
                bad.append(f"{path.relative_to(PACKAGE)} imports {name}")
    return bad


def test_backbones_import_nothing_from_prompts_or_methods():
    assert offending("backbones", ("lightning_prompts.prompts", "lightning_prompts.methods")) == []


@pytest.mark.parametrize("folder", ["data", "metrics"])
def test_data_and_metrics_import_no_method_or_callback(folder):
    assert offending(folder, ("lightning_prompts.methods", "lightning_prompts.callbacks")) == []


def test_callbacks_import_no_method_class():
    # the PromptModule base may appear in type hints; no method module may be imported at all
    allowed = ("lightning_prompts.methods.base",)
    assert offending("callbacks", ("lightning_prompts.methods",), allow_typing=allowed) == []


def test_prompts_import_no_method_or_callback():
    assert offending("prompts", ("lightning_prompts.methods", "lightning_prompts.callbacks")) == []


def test_the_top_level_package_and_the_command_import_neither_torch_nor_lightning():
    import subprocess
    import sys

    code = (
        "import sys, lightning_prompts, lightning_prompts.cli; lightning_prompts.list_methods();"
        "heavy = [m for m in ('torch', 'lightning', 'transformers', 'open_clip', 'timm') if m in sys.modules];"
        "print(heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_registering_every_class_imports_no_optional_model_library():
    """The command imports every registered module before parsing (short class names); PyG, timm, OpenCLIP, PEFT
    and scikit-learn load when a method uses them, not in every run's start-up (PyG alone took 2 s of it)."""
    import subprocess
    import sys

    code = (
        "import sys; from lightning_prompts import registry; registry.import_all();"
        "print([m for m in ('torch_geometric', 'timm', 'open_clip', 'peft', 'sklearn') if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_command_starts_without_the_families_libraries():
    """The home page's core install: with PyG, timm, OpenCLIP, PEFT, scikit-learn, Opacus, h5py and RDKit made
    unimportable, the package imports every registered module and ``lightning-prompts list methods`` answers.
    (transformers cannot be hidden this way: torchmetrics imports it whenever it is installed.)"""
    import subprocess
    import sys

    blocked = ("torch_geometric", "timm", "open_clip", "peft", "sklearn", "opacus", "h5py", "rdkit")
    code = (
        f"import sys; sys.modules.update(dict.fromkeys({blocked!r}));"
        "from lightning_prompts import registry; registry.import_all();"
        "from lightning_prompts.cli import main; main(['list', 'methods'])"
    )
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "CoOp" in result.stdout and "GPF" in result.stdout and "PromptTuning" in result.stdout
