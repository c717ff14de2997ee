"""Attention prefixes (prefix tuning, P-tuning v2) on a T5-style encoder-decoder.

Li & Liang's prefix tuning of an encoder-decoder (BART, for summarisation) gives three attentions their own
per-layer keys and values: the encoder's self-attention, the decoder's self-attention and the decoder's
cross-attention. A decoder-only model or an encoder reads prefixes through the key/value cache its layers
already take; T5's encoder drops any cache it is handed, so the prefixes enter this way:

* **encoder self-attention**: a forward pre-hook on every encoder layer hands its attention
  :class:`PrefixKeysValues`, a read-only stand-in for a cache whose ``update`` returns the layer's prefix keys
  and values before the text's, and adds visible columns for them to the mask. The attention counts the
  prefix as positions already seen, so T5's relative position bias places the prefix before the text, as a
  decoder's cache is placed.
* **decoder self- and cross-attention**: an ``EncoderDecoderCache`` prefilled with the prefixes, its
  cross-attention marked as not yet computed, so the model appends the encoder's keys and values after the
  cross prefix; a pre-hook on every decoder layer adds the prefix's visible columns to the encoder mask.

The hooks sit on the layers, not inside them, because a layer's call arguments are what activation
checkpointing keeps and replays (:mod:`.layer_checkpointing`): the recomputed layer reads the same prefix, and
the stand-in stores nothing that a second run could append to.

The prefixes of one forward pass come in one list, in this order: the encoder's layers, the decoder's
self-attentions, the decoder's cross-attentions (:func:`prefix_site_count` of them). PEFT's ``PREFIX_TUNING``
on sequence-to-sequence models prefixes the decoder's self-attention only (it empties the cross-attention
cache, and the encoder gets none), so this layout has no PEFT counterpart.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

#: One layer's prefix: keys and values ``(B, kv_heads, m, head_dim)``.
KeysValues = tuple[Tensor, Tensor]


def t5_attentions(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module], list[nn.Module]]:
    """The encoder self-attentions, decoder self-attentions and decoder cross-attentions of a T5-style model
    (T5, mT5, Flan-T5; transformers 5, whose attentions take a ``cache``).

    Raises:
        NotImplementedError: another encoder-decoder layout, or transformers 4.x.
    """
    try:
        encoder = [block.layer[0].SelfAttention for block in model.encoder.block]
        decoder = [block.layer[0].SelfAttention for block in model.decoder.block]
        cross = [block.layer[1].EncDecAttention for block in model.decoder.block]
    except (AttributeError, IndexError, TypeError):
        raise NotImplementedError(
            f"attention prefixes on an encoder-decoder are implemented for T5's architecture (T5, mT5, Flan-T5); "
            f"{type(model).__name__} has another layout: use soft tokens (PromptTuning, DePT, EPT)."
        ) from None
    if "cache" not in inspect.signature(encoder[0].forward).parameters:
        raise NotImplementedError(
            "attention prefixes on an encoder-decoder need transformers 5 (its T5 attention takes a `cache`)."
        )
    return encoder, decoder, cross


def prefix_site_count(model: nn.Module) -> int:
    """How many per-layer prefixes a T5-style model takes: its encoder layers plus twice its decoder layers."""
    encoder, decoder, cross = t5_attentions(model)
    return len(encoder) + len(decoder) + len(cross)


class PrefixKeysValues:
    """What an encoder layer's attention takes for a cache: ``get_seq_length`` is the prefix length (the text's
    positions start after it) and ``update`` returns ``[prefix; text]`` keys and values, keeping nothing."""

    def __init__(self, layers: Sequence[KeysValues]) -> None:
        self.layers = list(layers)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layers[layer_idx][0].shape[-2]

    def update(self, keys: Tensor, values: Tensor, layer_idx: int, *args: Any, **kwargs: Any) -> KeysValues:
        prefix_keys, prefix_values = self.layers[layer_idx]
        return torch.cat([prefix_keys, keys], dim=-2), torch.cat([prefix_values, values], dim=-2)


@contextlib.contextmanager
def encoder_decoder_prefixes(model: nn.Module, prefixes: Sequence[KeysValues]) -> Iterator[Any]:
    """Within the block, ``model``'s encoder attentions read their prefixes and its cross-attentions see their
    prefix columns; yields the decoder's cache (self- and cross-attention prefixes) to hand the model's
    forward or ``generate``. ``prefixes`` in :func:`prefix_site_count`'s order, all of one length."""
    from transformers import DynamicCache, EncoderDecoderCache

    encoder, decoder, cross = t5_attentions(model)
    if len(prefixes) != len(encoder) + len(decoder) + len(cross):
        raise ValueError(
            f"{type(model).__name__} takes {len(encoder) + len(decoder) + len(cross)} prefixes (encoder layers, "
            f"decoder self-attentions, decoder cross-attentions), got {len(prefixes)}."
        )
    length = prefixes[0][0].shape[-2]
    ends = (len(encoder), len(encoder) + len(decoder))
    caches = []
    for part in (prefixes[ends[0] : ends[1]], prefixes[ends[1] :]):
        cache = DynamicCache()
        for index, (keys, values) in enumerate(part):
            positions = torch.arange(length, device=keys.device)
            cache.update(keys, values, index, cache_kwargs={"cache_position": positions})
        caches.append(cache)
    decoder_cache = EncoderDecoderCache(*caches)
    # a filled cross-attention cache reads as computed: marked otherwise, each layer appends the encoder's keys
    decoder_cache.is_updated = dict.fromkeys(range(len(cross)), False)
    stand_in = PrefixKeysValues(prefixes[: ends[0]])
    read_prefix = functools.partial(_edit_arguments, functools.partial(_read_prefix, stand_in, length))
    see_prefix = functools.partial(_edit_arguments, functools.partial(_see_prefix, length))
    handles = [block.register_forward_pre_hook(read_prefix, with_kwargs=True) for block in model.encoder.block]
    handles += [block.register_forward_pre_hook(see_prefix, with_kwargs=True) for block in model.decoder.block]
    try:
        yield decoder_cache
    finally:
        for handle in handles:
            handle.remove()


def with_visible_prefix(mask: Tensor | None, length: int) -> Tensor | None:
    """An attention mask ``(B, 1, Q, K)`` (boolean, or additive floats) with ``length`` visible key columns in
    front; ``None`` (every key visible) stays ``None``."""
    if mask is None:
        return None
    visible = True if mask.dtype == torch.bool else 0.0
    return torch.cat([mask.new_full((*mask.shape[:-1], length), visible), mask], dim=-1)


def _edit_arguments(
    edit: Callable[[dict[str, Any]], None], block: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A forward pre-hook: ``edit`` the block's call arguments by name (T5's stack passes most by position)."""
    bound = inspect.signature(type(block).forward).bind(block, *args, **kwargs)
    edit(bound.arguments)
    return bound.args[1:], bound.kwargs


def _read_prefix(stand_in: PrefixKeysValues, length: int, arguments: dict[str, Any]) -> None:
    arguments["cache"] = stand_in
    arguments["attention_mask"] = with_visible_prefix(arguments.get("attention_mask"), length)


def _see_prefix(length: int, arguments: dict[str, Any]) -> None:
    arguments["encoder_attention_mask"] = with_visible_prefix(arguments.get("encoder_attention_mask"), length)
