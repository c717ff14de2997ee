"""APT's approximated prompts (Wu, Zhou, Huang, Dai, Ji — "Approximated Prompt Tuning for Vision-Language
Pre-trained Models"; official code: github.com/DoubtedSteam/APT, ``approximate_prompt`` in its METER/ViLT
models).

Deep prompt tuning lets every token attend to ``M`` extra prompt tokens per layer, at a cost that grows
with ``N + M``. APT approximates what the tokens would read from the prompts with an aggregation added to
the attention's output. Per layer, with ``h`` the attention's input (``N × D``) and ``A`` its output:

    a = ReLU(h (P + U(P))ᵀ)              (N × M; P the prompt bank, U a rank-r update)
    e = a P                              (N × D, what each token gathers from the bank)
    g = stopgrad(max_m a)                (N × 1)
    A' = (A + g ⊙ e) · exp(β)            (β a learned scalar, 0 at first)

``P ~ N(0, 0.02²)``; ``U = W₂ W₁`` without biases, both drawn from a truncated N(0, 0.02²): the official
module declares ``W₁ ~ N(0, 1)`` and ``W₂ = 0``, but the official ViT applies its own weight initialisation
to every linear layer afterwards, so the weights it trains from are these (checked by running the
official code). The ViT there uses banks of 50 prompts (METER's BERT side uses 200).
Where the official BERT/METER code applies it — after the attention's output projection, before the
residual — is where :meth:`~lightning_prompts.backbones.hooks.BlockHook.attention_output` acts in any
backbone with an attention site (timm ViTs, open_clip towers), so every layer gets its own bank.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_prompts.backbones.hooks import BlockContext, BlockHook


class ApproximatedPrompt(nn.Module):
    """One layer's bank, low-rank update and scale (see the module docstring).

    Args:
        width: token width ``D``.
        num_tokens: prompts in the bank ``M`` (50, the official ViT's).
        rank: rank of the update ``r`` (4).
    """

    def __init__(self, width: int, num_tokens: int = 50, rank: int = 4) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.empty(num_tokens, width).normal_(0.0, 0.02))
        self.update = nn.Sequential(nn.Linear(width, rank, bias=False), nn.Linear(rank, width, bias=False))
        for layer in self.update:  # what the official ViT's weight initialisation leaves (see the module docstring)
            nn.init.trunc_normal_(layer.weight, std=0.02)
        self.scale = nn.Parameter(torch.zeros(1))

    def forward(self, hidden: Tensor, output: Tensor) -> Tensor:
        """The attention output ``A'`` from its input ``hidden`` and output ``output`` ``(B, N, D)``."""
        tokens = self.tokens.to(hidden.dtype)
        weights = torch.relu(hidden @ (tokens + self.update(tokens)).t())
        gathered = weights @ tokens
        gate = weights.max(dim=-1, keepdim=True).values.detach()
        return (output + gathered * gate) * self.scale.exp()


class ApproximatedPromptHook(BlockHook):
    """Apply ``prompts[i]`` to the attention output of block ``layers[i]``."""

    def __init__(self, prompts: Sequence[ApproximatedPrompt], layers: Sequence[int]) -> None:
        self.by_layer = dict(zip(layers, prompts))

    def attention_output(self, context: BlockContext, hidden: Tensor, output: Tensor) -> Tensor | None:
        prompt = self.by_layer.get(context.index)
        return None if prompt is None else prompt(hidden, output)
