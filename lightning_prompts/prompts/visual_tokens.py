"""Learnable visual prompt tokens for a ViT: shallow (first layer only) or deep (every layer).

Initialisation follows VPT: uniform in ``±sqrt(6 / (3·p² + d))`` with ``p`` the patch size and
``d`` the prompt width (Xavier with the flattened 3×p×p patch as fan-in); with an optional
projection the tokens live in a smaller width ``d`` and a Linear maps them to the ViT width.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lightning_prompts.backbones.hooks import PromptTokens


class VisualPromptTokens(nn.Module):
    """``num_tokens`` prompt tokens for the first layer, and for each later layer when ``deep``.

    Args:
        num_tokens: tokens per layer.
        width: the ViT token width.
        depth: number of transformer layers (deep prompts are made for layers ``1..depth-1``).
        deep: one fresh set per layer (VPT-deep) instead of one set at the input (VPT-shallow).
        patch_size: the ViT patch size (for the initialisation bound).
        dropout: dropout on the prompt tokens (VPT default 0.0; 0.1 in some deep runs).
        project_dim: keep the tokens in this smaller width and project them (VPT's ``PROJECT``);
            ``None`` means no projection.

    Forward returns ``(first_layer_tokens (n, width), [deep tokens per later layer])``.
    """

    def __init__(
        self,
        num_tokens: int,
        width: int,
        depth: int,
        deep: bool = False,
        patch_size: int = 16,
        dropout: float = 0.0,
        project_dim: int | None = None,
    ) -> None:
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}.")
        prompt_dim = project_dim or width
        bound = math.sqrt(6.0 / float(3 * patch_size * patch_size + prompt_dim))
        self.tokens = nn.Parameter(torch.empty(num_tokens, prompt_dim).uniform_(-bound, bound))
        self.deep_tokens = (
            nn.Parameter(torch.empty(depth - 1, num_tokens, prompt_dim).uniform_(-bound, bound)) if deep else None
        )
        if project_dim:
            self.projection: nn.Module = nn.Linear(project_dim, width)
            nn.init.kaiming_normal_(self.projection.weight, a=0, mode="fan_out")
        else:
            self.projection = nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.num_tokens, self.deep = num_tokens, deep

    def forward(self) -> tuple[Tensor, list[Tensor]]:
        first = self.dropout(self.projection(self.tokens))
        if self.deep_tokens is None:
            return first, []
        return first, [self.dropout(self.projection(layer)) for layer in self.deep_tokens]

    def hooks(self) -> PromptTokens:
        """The tokens of this forward pass as a block hook: inserted after the prefix (class) tokens
        before block 0, replacing that slot before each later block when ``deep``."""
        first, deep = self()
        return PromptTokens(first, deep, "after_prefix")
