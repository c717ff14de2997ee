"""A position-indexed low-rank offset to input embeddings (DePT, Shi & Lipani, ICLR 2024).

Row ``i`` of ``scale · A B`` (``A`` is ``(s, r)``, ``B`` is ``(r, d)``) is added to the word embedding at
input position ``i``: the offset belongs to positions, not to tokens. As in DePT's code, ``A`` starts
as Kaiming-uniform (``a = √5``, i.e. U(±1/√r)), ``B`` at zero, so the offset starts at exactly zero, and
``scale = alpha / √r`` (not LoRA's ``alpha / r``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class LowRankPositionOffset(nn.Module):
    """``scale · A[:T] B`` for inputs of ``T <= max_length`` positions.

    Args:
        max_length: positions ``s`` (rows of ``A``).
        rank: rank ``r``.
        width: embedding width ``d``.
        alpha: the scale's numerator (DePT: ``lora_alpha`` = 8, fixed in its training script).
        generator: random generator of ``A``'s initialisation.
    """

    def __init__(
        self, max_length: int, rank: int, width: int, alpha: float = 8.0, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        if max_length < 1 or rank < 1:
            raise ValueError(f"max_length and rank must be >= 1, got {max_length} and {rank}.")
        bound = 1.0 / math.sqrt(rank)  # kaiming_uniform_(a=√5) on an (s, r) tensor
        self.A = nn.Parameter(torch.empty(max_length, rank).uniform_(-bound, bound, generator=generator))
        self.B = nn.Parameter(torch.zeros(rank, width))
        self.scale = alpha / math.sqrt(rank)

    @property
    def max_length(self) -> int:
        return int(self.A.shape[0])

    def forward(self, length: int | None = None) -> Tensor:
        """``(T, d)`` offsets of the first ``T`` positions (all ``s`` by default)."""
        length = self.max_length if length is None else length
        if length > self.max_length:
            raise ValueError(f"the offset covers {self.max_length} positions; got {length}.")
        return self.scale * (self.A[:length] @ self.B)
