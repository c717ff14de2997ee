"""The one rule for a ``shots`` argument, shared by the image and text data modules."""

from __future__ import annotations


def check_shots(shots: int) -> None:
    """``shots`` is a number of training examples per class, or -1 for all of them: 0 or another negative number
    read as "all" before, so a typo trained on the whole set without a word."""
    if shots == 0 or shots < -1:
        raise ValueError(f"shots must be a positive number of examples per class, or -1 for all; got {shots}.")
