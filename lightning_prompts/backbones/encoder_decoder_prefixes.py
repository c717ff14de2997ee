"""Attention prefixes (prefix tuning, P-tuning v2) on an encoder-decoder: T5's architecture (T5, mT5, Flan-T5) and
BART's (BART, mBART, Pegasus, Marian; each pinned in ``tests/backbones/test_encoder_decoder_prefixes.py``).

Li & Liang's prefix tuning of an encoder-decoder (BART, for summarisation) gives three attentions their own
per-layer keys and values: the encoder's self-attention, the decoder's self-attention and the decoder's
cross-attention. A decoder-only model or an encoder reads prefixes through the key/value cache its layers
already take; an encoder-decoder's encoder drops any cache it is handed, so the prefixes enter this way:

* **encoder self-attention**: a forward pre-hook on every encoder layer hands its attention
  :class:`PrefixKeysValues`, a read-only stand-in for a cache whose ``update`` returns the layer's prefix keys
  and values before the text's, and adds visible columns for them to the mask. T5's attention counts the
  prefix as positions already seen, so its relative position bias places the prefix before the text, as a
  decoder's cache is placed; BART's positions are added to the text's embeddings before the first layer and do not
  move (the prefix takes none of them).
* **decoder self- and cross-attention**: an ``EncoderDecoderCache`` prefilled with the prefixes, its
  cross-attention marked as not yet computed, so the model appends the encoder's keys and values after the
  cross prefix; a pre-hook on every decoder layer adds the prefix's visible columns to the encoder mask. The
  decoder's positions start after its prefix, as the model places tokens after a cache (T5's relative bias, BART's
  learned positions; PEFT's prefixes on BART's decoder sit there too).

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


def encoder_decoder_layers(model: nn.Module) -> tuple[Sequence[nn.Module], Sequence[nn.Module]]:
    """The encoder's and the decoder's layers of a T5-style (``block``) or BART-style (``layers``) encoder-decoder
    whose attentions take a ``cache`` (transformers 5).

    Raises:
        NotImplementedError: another layout, or transformers 4.x.
    """
    try:
        stacks = [model.get_encoder(), model.get_decoder()]
        encoder, decoder = (getattr(stack, "block", None) or stack.layers for stack in stacks)
        attention = _self_attention(encoder[0])
    except (AttributeError, IndexError, TypeError):
        raise NotImplementedError(
            f"attention prefixes on an encoder-decoder are implemented for T5's and BART's architectures; "
            f"{type(model).__name__} has another layout: use soft tokens (PromptTuning, DePT, EPT)."
        ) from None
    config = model.config
    if getattr(config, "decoder_attention_heads", None) not in (None, getattr(config, "encoder_attention_heads", None)):
        raise NotImplementedError(
            f"{type(model).__name__}'s encoder and decoder have different head counts; prefixes of one width per "
            f"layer need the same."
        )
    if "cache" not in inspect.signature(attention.forward).parameters:
        raise NotImplementedError(
            "attention prefixes on an encoder-decoder need transformers 5 (its attentions take a `cache`)."
        )
    return encoder, decoder


def _self_attention(layer: nn.Module) -> nn.Module:
    """An encoder layer's self-attention: T5's ``layer[0].SelfAttention``, BART's ``self_attn``."""
    if hasattr(layer, "self_attn"):
        return layer.self_attn
    return layer.layer[0].SelfAttention


def prefix_site_count(model: nn.Module) -> int:
    """How many per-layer prefixes an encoder-decoder takes: its encoder layers plus twice its decoder layers."""
    encoder, decoder = encoder_decoder_layers(model)
    return len(encoder) + 2 * len(decoder)


class PrefixKeysValues:
    """What one encoder layer's attention takes for a cache: ``get_seq_length`` is the prefix length (T5 starts the
    text's positions after it) and ``update`` returns ``[prefix; text]`` keys and values, keeping nothing. It
    answers for its own layer whatever index the attention asks with (mBART's encoder attentions have none)."""

    def __init__(self, keys: Tensor, values: Tensor) -> None:
        self.keys, self.values = keys, values

    def get_seq_length(self, layer_idx: int | None = None) -> int:
        return self.keys.shape[-2]

    def update(self, keys: Tensor, values: Tensor, *args: Any, **kwargs: Any) -> KeysValues:
        return torch.cat([self.keys, keys], dim=-2), torch.cat([self.values, values], dim=-2)


@contextlib.contextmanager
def encoder_decoder_prefixes(model: nn.Module, prefixes: Sequence[KeysValues]) -> Iterator[Any]:
    """Within the block, ``model``'s encoder attentions read their prefixes and its cross-attentions see their
    prefix columns; yields the decoder's cache (self- and cross-attention prefixes) to hand the model's
    forward or ``generate``. ``prefixes`` in :func:`prefix_site_count`'s order, all of one length."""
    from transformers import DynamicCache, EncoderDecoderCache

    encoder, decoder = encoder_decoder_layers(model)
    if len(prefixes) != len(encoder) + 2 * len(decoder):
        raise ValueError(
            f"{type(model).__name__} takes {len(encoder) + 2 * len(decoder)} prefixes (encoder layers, decoder "
            f"self-attentions, decoder cross-attentions), got {len(prefixes)}."
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
    decoder_cache.is_updated = dict.fromkeys(range(len(decoder)), False)
    handles = [
        layer.register_forward_pre_hook(
            functools.partial(_edit_arguments, functools.partial(_read_prefix, PrefixKeysValues(*prefix), length)),
            with_kwargs=True,
        )
        for layer, prefix in zip(encoder, prefixes[: ends[0]])
    ]
    see_prefix = functools.partial(_edit_arguments, functools.partial(_see_prefix, length))
    handles += [layer.register_forward_pre_hook(see_prefix, with_kwargs=True) for layer in decoder]
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
    edit: Callable[[dict[str, Any]], None], layer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A forward pre-hook: ``edit`` the layer's call arguments by name (T5's stack passes most by position), then
    call with all of them by name (a name the signature lacks goes to its ``**kwargs``: BART's encoder layer hands
    those to its attention)."""
    signature = _forward_signature(type(layer))
    bound = signature.bind(layer, *args, **kwargs)
    named: dict[str, Any] = {}
    for name, value in list(bound.arguments.items())[1:]:
        if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        else:
            named[name] = value
    edit(named)
    return (), named


@functools.cache
def _forward_signature(layer_class: type) -> inspect.Signature:
    """A layer class's ``forward`` signature, read once (every layer, every forward pass binds its arguments)."""
    return inspect.signature(layer_class.forward)


def _read_prefix(stand_in: PrefixKeysValues, length: int, arguments: dict[str, Any]) -> None:
    arguments["cache"] = stand_in
    arguments["attention_mask"] = with_visible_prefix(arguments.get("attention_mask"), length)


def _see_prefix(length: int, arguments: dict[str, Any]) -> None:
    arguments["encoder_attention_mask"] = with_visible_prefix(arguments.get("encoder_attention_mask"), length)
