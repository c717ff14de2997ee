"""DVPT's dynamic prompt module: a shared bottleneck with learnable queries cross-attending to the
frozen tokens, and the two ways its prompts can meet a frozen ViT.

For the frozen tokens ``X ∈ R^{N×D}`` of one image:

    Z = GELU(X W_down + b_down)        (N × r, the bottleneck, r ≪ D)
    O = softmax(Q Zᵀ / √r) Z           (M × r, M learnable queries Q attend to the tokens)
    P = O W_up + b_up                  (M × D, the instance-specific prompts)

One module (``W_down``, ``Q``, ``W_up``) serves every layer. The paper (He et al., arXiv 2307.09787)
publishes no code, and its abstract leaves two things open; decided here, both documented:

* the keys and values are the bottleneck features themselves (no extra K/V projections: the smallest
  module the abstract's description allows);
* the merge is a flag (:class:`DynamicPromptTokens` or :class:`SideQueryBranch`):

  - ``"tokens"``: before every block, the prompts computed from that block's input tokens (prompts of
    the previous block excluded) replace the prompt slot after the class token — instance-conditioned
    VPT-deep; the head reads the class token;
  - ``"side"``: the frozen ViT runs untouched; a side branch refines the query state layer by layer,
    ``S₀ = Q``, ``S_{l+1} = S_l + softmax(S_l Z_lᵀ/√r) Z_l``, and the head reads
    ``[CLS ‖ mean_m (S_L W_up + b_up)_m]``. No gradient flows through the backbone.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_prompts.backbones.hooks import BlockContext, BlockHook


class DynamicQueryPrompt(nn.Module):
    """``W_down``, the queries ``Q`` and ``W_up`` (see the module docstring).

    Args:
        width: token width ``D``.
        bottleneck: ``r``.
        num_queries: ``M``.
    """

    def __init__(self, width: int, bottleneck: int, num_queries: int) -> None:
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.queries = nn.Parameter(torch.empty(num_queries, bottleneck))
        self.up = nn.Linear(bottleneck, width)
        nn.init.trunc_normal_(self.queries, std=0.02)
        nn.init.zeros_(
            self.up.weight
        )  # every image starts from the same (zero) prompts; the up-projection learns first
        nn.init.zeros_(self.up.bias)
        self.scale = 1.0 / math.sqrt(bottleneck)

    def bottleneck(self, tokens: Tensor) -> Tensor:
        """``Z = GELU(X W_down + b)`` of tokens ``(B, N, D)``."""
        return F.gelu(self.down(tokens))

    def attend(self, queries: Tensor, features: Tensor) -> Tensor:
        """``softmax(Q Zᵀ/√r) Z`` for queries ``(M, r)`` or ``(B, M, r)`` and features ``(B, N, r)``."""
        weights = torch.softmax(queries @ features.transpose(1, 2) * self.scale, dim=-1)
        return weights @ features

    def forward(self, tokens: Tensor) -> Tensor:
        """The prompts ``(B, M, D)`` of tokens ``(B, N, D)``."""
        return self.up(self.attend(self.queries, self.bottleneck(tokens)))


class DynamicPromptTokens(BlockHook):
    """Merge ``"tokens"``: before every block, prompts from that block's input replace the slot after the
    prefix (class) tokens; after the last block the slot is removed and returned."""

    def __init__(self, module: DynamicQueryPrompt) -> None:
        self.module = module
        self._slot: tuple[int, int] | None = None

    def before_block(self, context: BlockContext, tokens: Tensor) -> Tensor:
        start = context.prefix_tokens
        if self._slot is not None:
            tokens = torch.cat([tokens[:, :start], tokens[:, start + self._slot[1] :]], dim=1)
        prompts = self.module(tokens).to(tokens.dtype)
        self._slot = (start, prompts.shape[1])
        return torch.cat([tokens[:, :start], prompts, tokens[:, start:]], dim=1)

    def after_blocks(self, context: BlockContext, tokens: Tensor) -> tuple[Tensor, Tensor | None]:
        if self._slot is None:
            return tokens, None
        start, length = self._slot
        return torch.cat([tokens[:, :start], tokens[:, start + length :]], dim=1), tokens[:, start : start + length]


class SideQueryBranch(BlockHook):
    """Merge ``"side"``: reads (never edits) each block's input tokens and refines the query state from them;
    :meth:`prompts` gives ``S_L W_up + b_up`` after the forward pass."""

    def __init__(self, module: DynamicQueryPrompt) -> None:
        self.module = module
        self.state: Tensor | None = None

    def before_block(self, context: BlockContext, tokens: Tensor) -> Tensor:
        features = self.module.bottleneck(tokens.detach())
        state = self.module.queries.unsqueeze(0).expand(tokens.shape[0], -1, -1) if self.state is None else self.state
        self.state = state + self.module.attend(state, features)
        return tokens

    def prompts(self) -> Tensor:
        if self.state is None:
            raise RuntimeError("the side branch has seen no block yet.")
        return self.module.up(self.state)
