"""Feature prompts for graphs: GPF and GPF-plus (Fang et al., "Universal Prompt Tuning for Graph
Neural Networks", NeurIPS 2023; official code: github.com/LuckyTiger123/GPF).

* GPF adds one learned vector to every node's features: ``x_i + p``;
* GPF-plus adds a per-node mix of ``k`` learned bases: ``x_i + softmax(a(x_i)) · P`` with a linear
  scorer ``a`` (the softmax runs over the bases, per node).

Both initialise their vectors with Glorot-uniform, as the official code does.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lightning_prompts.backbones.hooks import BlockContext, BlockHook


class InputFeaturePrompt(BlockHook):
    """A feature prompt as a block hook: ``prompt(x)`` replaces the node features entering layer 0."""

    def __init__(self, prompt: nn.Module) -> None:
        self.prompt = prompt

    def before_block(self, context: BlockContext, tokens: Tensor) -> Tensor:
        return self.prompt(tokens) if context.index == 0 else tokens


def glorot_(tensor: Tensor) -> Tensor:
    """Glorot/Xavier uniform in ``±sqrt(6 / (fan_in + fan_out))`` over the last two dimensions."""
    bound = math.sqrt(6.0 / (tensor.size(-2) + tensor.size(-1)))
    with torch.no_grad():
        return tensor.uniform_(-bound, bound)


class GPFPrompt(nn.Module):
    """GPF: one vector ``p`` added to every node's features."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.global_emb = nn.Parameter(glorot_(torch.empty(1, in_channels)))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.global_emb

    def hooks(self) -> InputFeaturePrompt:
        return InputFeaturePrompt(self)


class GPFPlusPrompt(nn.Module):
    """GPF-plus: ``x_i + softmax(a(x_i)) · P`` with ``num_bases`` learned bases ``P``."""

    def __init__(self, in_channels: int, num_bases: int = 20) -> None:
        super().__init__()
        if num_bases < 1:
            raise ValueError(f"num_bases must be >= 1, got {num_bases}.")
        self.bases = nn.Parameter(glorot_(torch.empty(num_bases, in_channels)))
        self.scorer = nn.Linear(in_channels, num_bases)

    def forward(self, x: Tensor) -> Tensor:
        weights = torch.softmax(self.scorer(x), dim=1)
        return x + weights @ self.bases

    def hooks(self) -> InputFeaturePrompt:
        return InputFeaturePrompt(self)
