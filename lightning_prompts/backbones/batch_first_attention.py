"""``nn.MultiheadAttention``'s batch-first self-attention with the input projection on the batch-first tokens.

With ``batch_first=True`` PyTorch's implementation first turns the tokens sequence-first (a transposed view) and
projects that view. When the tokens require gradients, ``matmul`` will not fold a non-contiguous view into one
matrix product (it would have to copy a tensor autograd keeps), and runs one product per position against the
broadcast weight instead: on CPU about 1.8 times the time of the input projection, forward and backward. A MaPLe
step on open_clip's ViT-B/16 at batch 8 took 4.5 s that way and 3.7 s this way (``docs/benchmarks.md``).
The OpenAI CLIP code the papers ran is sequence-first throughout and never paid it.

:func:`projected_batch_first` computes the same self-attention on the batch-first tokens: one folded input
projection, ``scaled_dot_product_attention`` with the same mask and dropout, the output projection. Equal to
PyTorch's to float rounding (tested). Calls it does not cover (cross-attention, attention weights asked for, key
padding masks, per-head masks, ``is_causal``) go to the module's own forward.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@contextlib.contextmanager
def projected_batch_first(attention: nn.Module) -> Iterator[None]:
    """While active, and while gradients are recorded, ``attention`` (a batch-first ``nn.MultiheadAttention``
    with a packed input projection and no extra bias keys; anything else is left alone) computes its
    self-attention on the batch-first tokens. The instance's ``forward`` is replaced for the duration."""
    if not (_covered(attention) and torch.is_grad_enabled()) or "forward" in vars(attention):
        yield
        return
    patched = functools.partial(_self_attention, attention, attention.forward)
    attention.forward = patched  # type: ignore[method-assign]
    try:
        yield
    finally:
        if vars(attention).get("forward") is patched:  # (a patch inside this one removes its own, and so ours)
            del attention.forward  # the instance attribute goes; the class's forward is back


def _covered(attention: nn.Module) -> bool:
    return (
        isinstance(attention, nn.MultiheadAttention)
        and attention.batch_first
        and attention._qkv_same_embed_dim
        and attention.bias_k is None
        and not attention.add_zero_attn
    )


def _self_attention(
    attention: nn.MultiheadAttention,
    original: Callable[..., Any],
    query: Tensor,
    key: Tensor,
    value: Tensor,
    key_padding_mask: Tensor | None = None,
    need_weights: bool = True,
    attn_mask: Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[Tensor, None]:
    if (
        not (query is key and key is value)
        or need_weights
        or key_padding_mask is not None
        or is_causal
        or query.dim() != 3
        or (attn_mask is not None and attn_mask.dim() != 2)
    ):
        return original(query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal)
    batch, length, width = query.shape
    heads = attention.num_heads
    if attn_mask is not None and attn_mask.dtype == torch.bool:  # nn.MultiheadAttention: True = not attended
        attn_mask = torch.zeros_like(attn_mask, dtype=query.dtype).masked_fill_(attn_mask, float("-inf"))
    q, k, v = (
        t.unflatten(-1, (heads, width // heads)).transpose(1, 2)
        for t in F.linear(query, attention.in_proj_weight, attention.in_proj_bias).chunk(3, dim=-1)
    )
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=attention.dropout if attention.training else 0.0
    )
    out = out.transpose(1, 2).reshape(batch, length, width)
    return F.linear(out, attention.out_proj.weight, attention.out_proj.bias), None
