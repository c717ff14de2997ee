"""Per-layer key/value prefixes: prefix tuning (Li & Liang, 2021) and P-tuning v2 (Liu et al., 2022).

Every layer ``l`` of a frozen transformer gets ``m`` extra keys ``K_l`` and values ``V_l`` that every
query attends to (they have no queries of their own). The table of all of them is one tensor of shape
``(m, L, 2, W)`` with ``W`` the width of one layer's keys (``kv_heads * head_dim``), flattened per
token in PEFT's order ``[layer][key, value][head][dim]``.

Two parameterisations, as in PEFT's ``PrefixEncoder`` and P-tuning v2's ``PrefixEncoder``:

* direct: the table itself is the parameter (``nn.Embedding(m, 2·L·W)``, N(0, 1) init);
* reparameterised (``projection_hidden``): an ``(m, token_dim)`` table through
  ``Linear → tanh → Linear(2·L·W)``, which trains more stably; only its output is needed at inference,
  which is what a PEFT export stores.

Dropout on the table (P-tuning v2 applies the model's hidden dropout to it; PEFT applies none) is
``dropout``, 0 by default.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_prompts.backbones.hooks import AttentionPrefix, BlockContext, BlockHook


class DeepPrefix(nn.Module):
    """The ``(m, L, 2, W)`` key/value prefixes of every layer (see the module docstring).

    Args:
        num_tokens: prefix length ``m``.
        num_layers: layers ``L`` of the backbone.
        width: width ``W`` of one layer's keys (``kv_heads * head_dim``).
        projection_hidden: hidden width of the reparameterisation MLP, or ``None`` for the direct table.
        token_dim: input width of the reparameterisation (default ``width``; PEFT uses the model width).
        dropout: dropout on the table during training.
        generator: random generator of the initialisation.
    """

    def __init__(
        self,
        num_tokens: int,
        num_layers: int,
        width: int,
        projection_hidden: int | None = None,
        token_dim: int | None = None,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}.")
        self.num_tokens, self.num_layers, self.width = num_tokens, num_layers, width
        out = num_layers * 2 * width
        if projection_hidden is None:
            self.table = nn.Parameter(torch.randn(num_tokens, out, generator=generator))
            self.projection: nn.Module | None = None
        else:
            token_dim = token_dim or width
            self.table = nn.Parameter(torch.randn(num_tokens, token_dim, generator=generator))
            first, last = nn.Linear(token_dim, projection_hidden), nn.Linear(projection_hidden, out)
            for linear in (first, last):  # nn.Linear's default init, drawn from our generator
                bound = linear.in_features**-0.5
                with torch.no_grad():
                    linear.weight.uniform_(-bound, bound, generator=generator)
                    linear.bias.uniform_(-bound, bound, generator=generator)
            self.projection = nn.Sequential(first, nn.Tanh(), last)
        self.dropout = nn.Dropout(dropout)

    def flat(self) -> Tensor:
        """The ``(m, 2·L·W)`` table in PEFT's layout, reparameterisation applied (what PEFT saves)."""
        return self.table if self.projection is None else self.projection(self.table)

    def forward(self) -> Tensor:
        """``(m, L, 2, W)`` keys and values of every layer (dropout applied in training)."""
        return self.dropout(self.flat()).view(self.num_tokens, self.num_layers, 2, self.width)

    def hooks(self) -> BlockHook:
        """A block hook that gives layer ``l`` its keys and values, for one forward pass."""
        return PrefixHook(self())


class PrefixHook(BlockHook):
    """Layer ``l``'s slice of a ``(m, L, 2, W)`` (or batched ``(B, m, L, 2, W)``) key/value table."""

    def __init__(self, table: Tensor) -> None:
        self.table = table

    def attention_prefix(self, context: BlockContext) -> AttentionPrefix:
        layer = self.table[..., context.index, :, :]
        return AttentionPrefix(keys=layer[..., 0, :], values=layer[..., 1, :])
