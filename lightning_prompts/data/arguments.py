"""Argument rules the image and text data modules share: checked at construction, before any run folder exists."""

from __future__ import annotations


def check_shots(shots: int) -> None:
    """``shots`` is a number of training examples per class, or -1 for all of them: 0 or another negative number
    read as "all" before, so a typo trained on the whole set without a word."""
    if shots == 0 or shots < -1:
        raise ValueError(f"shots must be a positive number of examples per class, or -1 for all; got {shots}.")


def check_at_least(**values: tuple[int, int]) -> None:
    """Each ``name=(value, least)`` is at least ``least``: DataLoader and the transforms would refuse a batch size or
    image size of 0 only once training starts, after the run folder is written."""
    for name, (value, least) in values.items():
        if value < least:
            raise ValueError(f"{name} must be at least {least}, got {value}.")
