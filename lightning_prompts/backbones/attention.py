"""Multi-head attention with extra keys and values (prefixes), for backbones whose library has no such
argument. Used by the block-hook seam (:class:`~lightning_prompts.backbones.hooks.AttentionPrefix`)."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_prompts.backbones.hooks import AttentionPrefix, expand_to_batch


def split_heads(tokens: Tensor, heads: int) -> Tensor:
    """``(B, n, W)`` -> ``(B, heads, n, W / heads)``."""
    batch, length, width = tokens.shape
    return tokens.reshape(batch, length, heads, width // heads).transpose(1, 2)


def prefix_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, prefix: AttentionPrefix) -> Tensor:
    """Attention ``(B, H, N, d)`` of queries ``q`` over ``[prefix keys; k]`` and ``[prefix values; v]``.

    With ``prefix.compensatory`` the attention weights on the prefix are renormalised to sum to one while
    the original keys keep their weights from the joint softmax (LAE's compensatory prefix): the block's
    output is its unprompted output plus ``softmax_prefix(q·k_pᵀ)·v_p``-style additions.
    """
    batch, heads = q.shape[0], q.shape[1]
    prefix_k = split_heads(expand_to_batch(prefix.keys, batch).to(q.dtype), heads)
    prefix_v = split_heads(expand_to_batch(prefix.values, batch).to(q.dtype), heads)
    scores = (q * scale) @ torch.cat([prefix_k, k], dim=2).transpose(-2, -1)
    weights = scores.softmax(dim=-1)
    length = prefix_k.shape[2]
    if prefix.compensatory:  # the prefix's share renormalised to one; the tokens keep theirs
        share = weights[..., :length].sum(dim=-1, keepdim=True).clamp(min=1e-12)
        weights = torch.cat([weights[..., :length] / share, weights[..., length:]], dim=-1)
    return weights @ torch.cat([prefix_v, v], dim=2)
