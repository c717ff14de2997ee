"""Per-input, per-layer soft tokens generated from the input's own hidden states (IAPT).

A layer's generator pools the hidden states of the input's real tokens (attention pooling with a learned
query), passes the pooled vector through a bottleneck with a learnable rational activation, and emits
``n`` soft tokens for that layer. :class:`InstancePromptHook` puts them in a fixed slot of ``n`` positions
at the front of the sequence: layer 0's from the word embeddings (the input the method prepends), layer
``l``'s before block ``l`` — replacing the slot's hidden states (deep-prompt style) or added to them in units
of their RMS (``slot_update="add"``, for pre-norm decoders; see :class:`InstancePromptHook`).

The generators read each token's hidden state divided by its RMS, so their codes have one scale on a post-LN
encoder (about 1 per value) and on a pre-norm decoder whose residual stream grows to thousands (Gemma-3-270M:
~1 at the embeddings, ~800 per value by the last layer); fed raw, the rational activation's quintic blew
Gemma's generated tokens to 1e10 in two AdamW steps.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lightning_prompts.backbones.hooks import BlockContext, BlockHook


class RationalActivation(nn.Module):
    """``P(x) / Q(x)`` with ``P`` of degree ``p`` and ``Q(x) = 1 + |b_1 x + … + b_q x^q|`` (the "safe" Padé
    activation: the denominator never vanishes). Initialised to the identity (``a_1 = 1``, others 0)."""

    def __init__(self, numerator_degree: int = 5, denominator_degree: int = 4) -> None:
        super().__init__()
        numerator = torch.zeros(numerator_degree + 1)
        numerator[1] = 1.0
        self.numerator = nn.Parameter(numerator)
        self.denominator = nn.Parameter(torch.zeros(denominator_degree))

    def forward(self, x: Tensor) -> Tensor:
        powers = torch.stack([x**k for k in range(self.numerator.numel())], dim=-1)
        p = powers @ self.numerator.to(x.dtype)
        q = 1.0 + (powers[..., 1 : self.denominator.numel() + 1] @ self.denominator.to(x.dtype)).abs()
        return p / q


def rms(hidden: Tensor, eps: float = 0.0) -> Tensor:
    """``√(mean(h²) + eps)`` of each vector, kept as a trailing dimension (in float32; the input's dtype)."""
    return hidden.float().pow(2).mean(-1, keepdim=True).add(eps).sqrt().to(hidden.dtype)


def rms_normalize(hidden: Tensor, eps: float = 1e-6) -> Tensor:
    """Each vector divided by its root mean square (in float32; returned in the input's dtype)."""
    x = hidden.float()
    return (x / rms(x, eps)).to(hidden.dtype)


class AttentionPooling(nn.Module):
    """``Σ_t softmax_t(h_t · w / √d) h_t`` over the real tokens (mask 1)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(width))

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        scores = hidden @ self.query.to(hidden.dtype) / hidden.shape[-1] ** 0.5
        scores = scores.masked_fill(mask == 0, torch.finfo(scores.dtype).min)
        return (torch.softmax(scores.float(), dim=-1).to(hidden.dtype).unsqueeze(-1) * hidden).sum(1)


class LayerPromptGenerator(nn.Module):
    """One layer's generator: RMS-normalise → pool → down-project → rational activation; the up-projection is
    shared."""

    def __init__(self, width: int, bottleneck: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.pool = AttentionPooling(width)
        self.down = nn.Linear(width, bottleneck)
        bound = width**-0.5
        with torch.no_grad():
            self.down.weight.uniform_(-bound, bound, generator=generator)
            self.down.bias.zero_()
        self.activation = RationalActivation()

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        return self.activation(self.down(self.pool(rms_normalize(hidden), mask)))


class InstancePromptGenerators(nn.Module):
    """Generators for ``num_layers`` layers, ``num_tokens`` soft tokens each, with one shared up-projection
    (``bottleneck → num_tokens · width``, zero-initialised: every generated token starts at ``bias``, a
    learned base prompt)."""

    def __init__(
        self,
        num_layers: int,
        width: int,
        num_tokens: int = 4,
        bottleneck: int = 16,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.num_tokens, self.width = num_tokens, width
        self.layers = nn.ModuleList(LayerPromptGenerator(width, bottleneck, generator) for _ in range(num_layers))
        self.up = nn.Linear(bottleneck, num_tokens * width)
        with torch.no_grad():
            self.up.weight.zero_()
            self.up.bias.normal_(0.0, 0.02, generator=generator)

    def forward(self, layer: int, hidden: Tensor, mask: Tensor) -> Tensor:
        """``(B, num_tokens, width)`` soft tokens of ``layer`` for hidden states ``(B, T, width)``."""
        if not torch.is_autocast_enabled(hidden.device.type):  # a model loaded in half precision: float32 weights here
            hidden = hidden.to(self.up.weight.dtype)
        code = self.layers[layer](hidden, mask)
        return self.up(code).view(hidden.shape[0], self.num_tokens, self.width)


SLOT_UPDATES = ("replace", "add")


def check_slot_update(slot_update: str) -> str:
    if slot_update not in SLOT_UPDATES:
        raise ValueError(f"slot_update must be one of {SLOT_UPDATES}, not {slot_update!r}.")
    return slot_update


class InstancePromptHook(BlockHook):
    """Before every block ``l >= 1``, updates the slot's ``n`` positions (after ``offset`` leading positions) with
    the tokens ``T_l`` that layer ``l``'s generator makes from the hidden states of the text's real tokens:

    * ``"replace"``: the slot becomes ``T_l`` (deep-prompt style);
    * ``"add"``: the slot becomes ``S + rms(S) · T_l``, ``S`` its own hidden states carried from the block before.
      On a pre-norm decoder the replaced slot is a vector the layer never saw (its norm rescales it to unit RMS,
      so a small base prompt is a random direction), and every token reads it at every layer: on Gemma-3-270M a
      linear probe of the untrained IAPT's features fell to chance (50 % against 79 % without the per-layer
      slot). Added, the slot starts as the layer-0 prompt carried through the model (79 %), and ``T_l`` moves it
      by a fraction of its own scale, whatever the layer's residual scale.
    """

    def __init__(
        self, generators: InstancePromptGenerators, text_mask: Tensor, offset: int = 0, slot_update: str = "replace"
    ) -> None:
        self.generators, self.text_mask, self.offset = generators, text_mask, offset
        self.slot_update = check_slot_update(slot_update)

    def before_block(self, context: BlockContext, tokens: Tensor) -> Tensor:
        if context.index == 0 or context.index >= len(self.generators.layers):
            return tokens
        start, n = self.offset, self.generators.num_tokens
        text = tokens[:, start + n :]
        fresh = self.generators(context.index, text, self.text_mask).to(tokens.dtype)
        if self.slot_update == "add":
            slot = tokens[:, start : start + n]
            fresh = slot + rms(slot) * fresh
        return torch.cat([tokens[:, :start], fresh, text], dim=1)


class RecordingInstancePromptHook(InstancePromptHook):
    """:class:`InstancePromptHook` that keeps the slot's states entering each block (``slots[l]``), so that a
    later pass can reproduce them with :class:`ReplayedSlots` (IAPT's generation: the key/value cache of the
    instruction less its last token, with the tokens the whole instruction generated)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slots: dict[int, Tensor] = {}

    def before_block(self, context: BlockContext, tokens: Tensor) -> Tensor:
        tokens = super().before_block(context, tokens)
        self.slots[context.index] = tokens[:, self.offset : self.offset + self.generators.num_tokens]
        return tokens


class ReplayedSlots(BlockHook):
    """Before every block, the slot (``n`` positions after ``offset``) becomes the recorded ``slots[l]``: the
    per-layer tokens of another pass, whatever the tokens after the slot are now."""

    def __init__(self, slots: dict[int, Tensor], offset: int = 0) -> None:
        self.slots, self.offset = slots, offset

    def before_block(self, context: BlockContext, tokens: Tensor) -> Tensor:
        slot = self.slots.get(context.index)
        if slot is None:
            return tokens
        start, n = self.offset, slot.shape[1]
        return torch.cat([tokens[:, :start], slot.to(tokens.dtype), tokens[:, start + n :]], dim=1)
