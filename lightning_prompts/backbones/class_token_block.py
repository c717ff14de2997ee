"""The last block of a CLIP image tower for its class token only.

A ViT tower pooled at its class token reads one row of the last block's output: every other row of that block's
attention queries, output projection and MLP is computed and thrown away (and, when the tower is prompted, carried
through the backward pass). :func:`class_token_through` runs the block for the class token alone: the keys and
values of every token (they are what the class token attends to), one query, the output projection and the MLP of
one row. The class token's output is the full block's to float rounding; on ViT-B/16 the block's cost falls to
about a sixth (its keys and values). Used by :meth:`~lightning_prompts.backbones.OpenCLIP.encode_image` when the
caller asks for no patch tokens, gradients are recorded (a training step: a prompted tower, MaPLe or VPT on CLIP,
or CoOp's frozen one) and :func:`reads_class_token_only` holds; evaluation and feature caches (``torch.no_grad``)
keep the batched whole block.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_prompts.backbones.hooks import INSIDE_BLOCK, BlockHook, ComposedHooks, PromptTokens


def reads_class_token_only(visual: nn.Module, hook: BlockHook | None) -> bool:
    """Whether an open_clip ``VisionTransformer``'s features come from its class token alone, after blocks
    :func:`class_token_through` can run: pooled at the class token (``pool_type="tok"``, no attention pooling),
    batch-first blocks of self-attention with a packed projection, and a hook (if any) that only edits tokens
    between blocks and takes out no more than inserted prompt tokens afterwards (VPT, MaPLe, IVLP: the class token
    stays first)."""
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if not blocks or getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", None) != "tok":
        return False
    if not (visual.transformer.batch_first and _plain_block(blocks[-1])):
        return False
    if hook is None:
        return True
    parts = hook.hooks if isinstance(hook, ComposedHooks) else [hook]
    token_edits_only = not any(part.uses(capability) for part in parts for capability in INSIDE_BLOCK)
    removals = {type(part).after_blocks for part in parts}
    return token_edits_only and removals <= {BlockHook.after_blocks, PromptTokens.after_blocks}


def _plain_block(block: Any) -> bool:
    """open_clip's ``ResidualAttentionBlock`` of self-attention (not a cross-attention one), with a packed input
    projection and no extra key/value biases."""
    attention = getattr(block, "attn", None)
    return (
        type(block).__name__ == "ResidualAttentionBlock"
        and not hasattr(block, "ln_1_kv")
        and isinstance(attention, nn.MultiheadAttention)
        and attention._qkv_same_embed_dim
        and attention.bias_k is None
        and not attention.add_zero_attn
    )


def class_token_through(block: nn.Module, x: Tensor) -> Tensor:
    """``(B, 1, W)``: the output at the first position (the class token) of an open_clip block run on the
    batch-first tokens ``x`` ``(B, N, W)`` (no attention mask: a vision tower's).

    Each image runs on its own: a matrix product's rounding can depend on how many rows it has (one class token per
    image, a handful per batch), and an image's features must not depend on the batch it came in — a feature cache
    filled in other batches than training reads, or a resumed run, would differ from a straight one in the last
    bits. The whole block's products have every token's rows and did not show it. The first norm runs on the whole
    batch, once: a hook on it (DAPT's Grad-CAM target) sees every image's tokens, as in the whole block."""
    normed = block.ln_1(x)
    return torch.cat([_class_token_of_one(block, x[i : i + 1], normed[i : i + 1]) for i in range(x.shape[0])])


def _class_token_of_one(block: nn.Module, x: Tensor, normed: Tensor) -> Tensor:
    """One image's class-token output, given its tokens ``x`` ``(1, N, W)`` and their first norm ``normed``."""
    attention: nn.MultiheadAttention = block.attn
    width, heads = x.shape[-1], attention.num_heads
    w_q, w_kv = attention.in_proj_weight.split([width, 2 * width])
    b_q, b_kv = attention.in_proj_bias.split([width, 2 * width]) if attention.in_proj_bias is not None else (None, None)

    def heads_first(t: Tensor) -> Tensor:
        return t.unflatten(-1, (heads, width // heads)).transpose(1, 2)

    query = heads_first(F.linear(normed[:, :1], w_q, b_q))
    keys, values = (heads_first(t) for t in F.linear(normed, w_kv, b_kv).chunk(2, dim=-1))
    dropout = attention.dropout if attention.training else 0.0
    attended = F.scaled_dot_product_attention(query, keys, values, dropout_p=dropout)
    token = x[:, :1] + block.ls_1(attention.out_proj(attended.transpose(1, 2).flatten(2)))
    return token + block.ls_2(block.mlp(block.ln_2(token)))
