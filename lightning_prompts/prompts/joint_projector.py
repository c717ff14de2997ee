"""UPT's joint projector of text and visual prompt tokens, as MVLPT's MUPT runs it.

Every prompt token (the text context and the visual tokens of every block) is mapped to a small width
(128), passed through one CLIP residual attention block (1 head, MLP ×4 with QuickGELU), and mapped back.
The official code (sIncerass/MVLPT, ``forward_mvlpt_proj``) hands the block a ``(1, S, 128)`` tensor where
CLIP's transformer expects ``(sequence, batch, width)``: the "sequence" has length 1 and the S tokens are a
batch, so no token attends to another. We reproduce that: each token goes through the block on its own
(attention over itself only), which is what the released prompts were trained with.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class QuickGELU(nn.Module):
    """CLIP's activation: ``x · sigmoid(1.702 x)``."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class TokenwiseAttentionBlock(nn.Module):
    """A CLIP residual attention block applied to each token alone (sequence length 1)."""

    def __init__(self, width: int, heads: int = 1) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), QuickGELU(), nn.Linear(4 * width, width))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, tokens: Tensor) -> Tensor:
        """``(S, width)`` -> ``(S, width)``; each token is its own sequence of length 1."""
        x = tokens.unsqueeze(0)  # (1, S, width): sequence-first, S "batch" entries
        normed = self.ln_1(x)
        x = x + self.attn(normed, normed, normed, need_weights=False)[0]
        x = x + self.mlp(self.ln_2(x))
        return x.squeeze(0)


class JointPromptProjector(nn.Module):
    """Map text and visual prompt tokens to ``width``, through :class:`TokenwiseAttentionBlock`, and back.

    Args:
        text_width: width of the text context vectors.
        vision_width: width of the visual prompt tokens.
        width: the shared width (the official ``PROJECT_DIM`` 128); a side already that wide is not mapped.
    """

    def __init__(self, text_width: int, vision_width: int, width: int = 128) -> None:
        super().__init__()
        self.text_in = nn.Linear(text_width, width) if text_width != width else nn.Identity()
        self.text_out = nn.Linear(width, text_width) if text_width != width else nn.Identity()
        self.vision_in = nn.Linear(vision_width, width) if vision_width != width else nn.Identity()
        self.vision_out = nn.Linear(width, vision_width) if vision_width != width else nn.Identity()
        self.block = TokenwiseAttentionBlock(width)

    def forward(self, text: Tensor, visual: Tensor) -> tuple[Tensor, Tensor]:
        """``text`` ``(n_text, text_width)`` and ``visual`` ``(layers, n_visual, vision_width)`` -> the same
        shapes, projected jointly in the projector's own dtype: float32, as the official code computes, unless the
        whole module was cast (``bf16-true``)."""
        dtype = self.block.ln_1.weight.dtype
        text_tokens = self.text_in(text.to(dtype))
        visual_tokens = self.vision_in(visual.to(dtype).reshape(-1, visual.shape[-1]))
        joint = self.block(torch.cat([text_tokens, visual_tokens], dim=0))
        count = text.shape[0]
        new_text = self.text_out(joint[:count]).to(text.dtype)
        new_visual = self.vision_out(joint[count:]).reshape(visual.shape).to(visual.dtype)
        return new_text, new_visual
