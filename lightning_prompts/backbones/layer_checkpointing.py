"""Activation (gradient) checkpointing of a frozen model's layers that keeps the block-hook seam exact.

Prompt tuning keeps the model frozen, yet a training step still stores every layer's activations for the
backward pass into the prompt: on a large decoder that, not the weights, is what runs out first. Checkpointing
stores each layer's input only and recomputes the layer during backward.

The libraries' own switches do not fit a prompted frozen model, so :func:`checkpointed_layers` does it itself:

* Hugging Face checkpoints only modules in training mode; our frozen backbones stay in eval mode (no
  dropout), so ``gradient_checkpointing_enable()`` would silently do nothing.
* Under its checkpointing Hugging Face drops the key/value cache (``cache=None``, with a warning): prefix
  tuning and P-tuning v2 enter through that cache, so the prefix would silently vanish. Here the cache stays;
  its state before each layer is restored for that layer's recomputation, which would otherwise append the
  layer's keys a second time.
* Hooks on the layer itself (the seam's token edits: VPT-style slots, IAPT's generated tokens) run in the
  layer's ``__call__``, outside the checkpoint, once: only the layer's ``forward`` is recomputed.

Non-reentrant checkpointing (``use_reentrant=False``): gradients reach the prompt whether or not the layer's
inputs require them, and the random state is replayed (dropout, where a model has it on, recomputes the same
mask). The recomputed forward is the same arithmetic, so gradients equal the plain pass's (tested bitwise).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


@contextlib.contextmanager
def checkpointed_layers(layers: Sequence[nn.Module]) -> Iterator[None]:
    """While active, each of ``layers`` runs its ``forward`` under activation checkpointing when gradients
    are being recorded (under ``torch.no_grad`` it runs as it is). The layer instances' ``forward`` is
    replaced for the duration and restored after; the frozen model is not otherwise touched."""
    patched: list[nn.Module] = []
    try:
        for layer in layers:
            if "forward" in vars(layer):
                raise RuntimeError(
                    f"{type(layer).__name__}.forward is already replaced on the instance; checkpointing would hide it."
                )
            layer.forward = _checkpointed(type(layer).forward.__get__(layer))  # type: ignore[method-assign]
            patched.append(layer)
        yield
    finally:
        for layer in patched:
            del layer.forward  # the instance attribute goes; the class's forward is back


def run_block(
    block: Callable[..., Any],
    x: Any,
    checkpointed: bool,
    inside: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    **kwargs: Any,
) -> Any:
    """``block(x, **kwargs)`` inside the context ``inside()`` (a block hook's attachments to this block); with
    ``checkpointed``, gradients recorded and ``x`` requiring them, under non-reentrant activation checkpointing:
    only ``x`` is kept, and the recomputation enters ``inside()`` again, so the hook's branches and prefixes are
    part of it (they are detached once the forward pass is over). The open_clip and timm block loops use it; token
    edits between blocks stay outside and run once."""

    def run(tokens: Any) -> Any:
        with inside():
            return block(tokens, **kwargs)

    # tokens that need no gradient record nothing in the block itself (a hook's own parameters at most), and the
    # checkpoint would keep them all the same
    return checkpoint_if_recording(checkpointed, run, x)


def checkpoint_if_recording(checkpointed: bool, function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)``; with ``checkpointed``, while gradients are recorded and a tensor of ``args`` requires
    them, under non-reentrant activation checkpointing (only ``args`` are kept; the call is recomputed in backward).
    The open_clip and timm block loops, the shared-prefix text pass and MULTI-LANE's side stream use it."""
    recording = torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
    if checkpointed and recording:
        return checkpoint(function, *args, use_reentrant=False)
    return function(*args)


def _checkpointed(forward: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        # models hand the key/value cache over by keyword or by position (GPT-2), under several names
        restore = _cache_restorer([value for value in (*args, *kwargs.values()) if _is_cache(value)])

        def contexts() -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
            return contextlib.nullcontext(), restore()

        return checkpoint(forward, *args, use_reentrant=False, context_fn=contexts, **kwargs)

    return run


def _is_cache(value: Any) -> bool:
    """A Hugging Face key/value cache (``DynamicCache``, ``EncoderDecoderCache``…), by its class names: this
    module does not import transformers."""
    return any(cls.__name__.endswith("Cache") for cls in type(value).__mro__) and hasattr(value, "update")


def _cache_layers(cache: Any) -> list[Any]:
    """The per-layer state objects of a cache (an encoder-decoder cache: of both its caches)."""
    if isinstance(getattr(cache, "layers", None), list):
        return list(cache.layers)
    inner = [getattr(cache, name, None) for name in ("self_attention_cache", "cross_attention_cache")]
    if any(part is not None for part in inner):
        return [layer for part in inner if part is not None for layer in _cache_layers(part)]
    raise NotImplementedError(
        f"gradient checkpointing cannot restore a {type(cache).__name__} for recomputation (it expects the "
        f"layered caches of transformers >= 4.57); turn gradient_checkpointing off."
    )


def _cache_restorer(caches: Sequence[Any]) -> Callable[[], contextlib.AbstractContextManager]:
    """A context factory that puts ``caches`` back as they are now, for a layer's recomputation."""
    if not caches:
        return contextlib.nullcontext
    # a cache layer's update replaces its tensors (torch.cat), never writes into them, so a shallow copy of its
    # attributes is its state
    snapshot = [(layer, dict(vars(layer))) for cache in caches for layer in _cache_layers(cache)]

    @contextlib.contextmanager
    def restored() -> Iterator[None]:
        for layer, state in snapshot:
            vars(layer).clear()
            vars(layer).update(state)
        yield

    return restored
