"""The ending every testbed benchmark's report shares: the table as ``results.md``, the chart as ``results.png``."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_report(out: Path, lines: list[str], figure: Any) -> None:
    """Write ``lines`` to ``out/results.md`` and ``figure`` to ``out/results.png``, and print the table."""
    (out / "results.md").write_text("\n".join(lines) + "\n")
    figure.tight_layout()
    figure.savefig(out / "results.png", dpi=110)
    print((out / "results.md").read_text())
