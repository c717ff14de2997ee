"""Per-layer key/value prefixes: prefix tuning (Li & Liang, 2021) and P-tuning v2 (Liu et al., 2022).

Every layer ``l`` of a frozen transformer gets ``m`` extra keys ``K_l`` and values ``V_l`` that every
query attends to (they have no queries of their own). The table of all of them is one tensor of shape
``(m, L, 2, W)`` with ``W`` the width of one layer's keys (``kv_heads * head_dim``), flattened per
token in PEFT's order ``[layer][key, value][head][dim]``.

Two parameterisations, as in PEFT's ``PrefixEncoder`` and P-tuning v2's ``PrefixEncoder``:

* direct: the table itself is the parameter (``nn.Embedding(m, 2·L·W)``);
* reparameterised (``projection_hidden``): an ``(m, token_dim)`` table through
  ``Linear → tanh → Linear(2·L·W)``, which trains more stably; only its output is needed at inference,
  which is what a PEFT export stores.

Initialisation (``init_std``): PEFT keeps ``nn.Embedding``'s N(0, 1) and ``nn.Linear``'s default. P-tuning v2
builds its prefix encoder inside a ``PreTrainedModel`` loaded with ``from_pretrained``, which initialises every
module the checkpoint lacks with the model's ``_init_weights``: the table and the projection's weights
N(0, initializer_range) (0.02 for BERT and RoBERTa), the projection's biases 0; ``init_std`` gives that.

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
        init_std: ``None``: PEFT's initialisation; a number: P-tuning v2's, normal with this standard deviation
            (the model's ``initializer_range``) and zero biases.
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
        init_std: float | None = None,
    ) -> None:
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}.")
        self.num_tokens, self.num_layers, self.width = num_tokens, num_layers, width
        out = num_layers * 2 * width
        scale = 1.0 if init_std is None else init_std
        if projection_hidden is None:
            self.table = nn.Parameter(torch.randn(num_tokens, out, generator=generator) * scale)
            self.projection: nn.Module | None = None
        else:
            token_dim = token_dim or width
            self.table = nn.Parameter(torch.randn(num_tokens, token_dim, generator=generator) * scale)
            first, last = nn.Linear(token_dim, projection_hidden), nn.Linear(projection_hidden, out)
            for linear in (first, last):  # drawn from our generator
                with torch.no_grad():
                    if init_std is None:  # nn.Linear's default
                        bound = linear.in_features**-0.5
                        linear.weight.uniform_(-bound, bound, generator=generator)
                        linear.bias.uniform_(-bound, bound, generator=generator)
                    else:  # a Hugging Face model's _init_weights
                        linear.weight.normal_(0.0, init_std, generator=generator)
                        linear.bias.zero_()
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
