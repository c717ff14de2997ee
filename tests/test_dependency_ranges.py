"""The extras' torch floors keep up with what their libraries need: transformers 5 declares its torch floor only
in its own ``torch`` extra and, below it, imports without models ("PyTorch was not found"), so every text method
would fail far from the cause. Read from the installed libraries' metadata and our pyproject."""

from __future__ import annotations

from importlib.metadata import requires, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def floor(specifier: SpecifierSet) -> Version:
    """The lowest version a ``>=`` clause admits (0 when there is none)."""
    floors = [Version(clause.version) for clause in specifier if clause.operator in (">=", "==", "~=")]
    return max(floors, default=Version("0"))


def torch_floor(requirements: list[str], extra: str | None = None) -> Version:
    """The torch floor among ``requirements``: unconditional ones, plus those of ``extra`` when given."""
    found = Version("0")
    for line in requirements:
        requirement = Requirement(line)
        if requirement.name != "torch":
            continue
        marker = requirement.marker
        if marker is None or (extra is not None and marker.evaluate({"extra": extra})):
            found = max(found, floor(requirement.specifier))
    return found


def test_the_text_extra_asks_for_the_torch_that_installed_transformers_needs():
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    ours = max(torch_floor(project["dependencies"]), torch_floor(project["optional-dependencies"]["text"]))
    needed = torch_floor(requires("transformers") or [], extra="torch")
    assert needed > Version("0"), "transformers no longer states a torch floor in its torch extra: update this test"
    assert ours >= needed, f"transformers {version('transformers')} needs torch>={needed}; the text extra admits {ours}"


def test_torch_floor_reads_plain_and_extra_requirements():
    lines = ['torch>=2.6; extra == "torch"', "torch<3,>=2.1", 'torch==2.8.0; extra == "dev"', "numpy>=1"]
    assert torch_floor(lines) == Version("2.1")
    assert torch_floor(lines, extra="torch") == Version("2.6")
    assert torch_floor(lines, extra="dev") == Version("2.8.0")
