"""The block-hook seam: how prompt tokens, prefixes, PET modules and feature prompts enter a frozen backbone.

A backbone runs its pre-trained blocks as their library defines them and, at declared points, asks a
:class:`BlockHook` what to change:

* :meth:`~BlockHook.before_block`: edit the tokens (a GNN: the node features) entering block ``i``:
  insert prompt tokens, replace a slot with that block's own prompts, add a feature prompt;
* :meth:`~BlockHook.after_blocks`: after the last block, take out what was inserted;
* :meth:`~BlockHook.positions_before_block`: where a backbone adds position embeddings before every
  block (Point-MAE), the positions of the tokens ``before_block`` inserted;
* :meth:`~BlockHook.attention_prefix`: keys and values every query of block ``i`` also attends to
  (prefix tuning, LAE's prefix);
* :meth:`~BlockHook.attention_branch` / :meth:`~BlockHook.mlp_branch`: a side branch fed with the
  attention's (the MLP's) input whose output is added to its output (adapters, APT's aggregation);
* :meth:`~BlockHook.attention_output`: replace the attention's output, given its input and output
  (APT's aggregation, which also rescales the output);
* :meth:`~BlockHook.qkv_branch`: a side branch added to the fused query/key/value projection (LoRA).

Backbones implement the seam with PyTorch hooks on the upstream model's own modules, attached for one
forward pass (:func:`attached`), so the frozen model is never copied or modified. Backbones import
nothing from ``prompts/`` or ``methods/``: prompt modules import this protocol and implement it (their
``hooks()`` returns a hook for one forward pass). :class:`PromptTokens` is the token-slot mechanics
every token prompt shares (VPT, MaPLe, IVLP).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

#: The capabilities a hook can have (names of :class:`BlockHook` methods).
CAPABILITIES = (
    "before_block",
    "after_blocks",
    "attention_prefix",
    "attention_branch",
    "attention_output",
    "mlp_branch",
    "qkv_branch",
)
#: The capabilities that act inside a block (a backbone without attention sites refuses them).
INSIDE_BLOCK = ("attention_prefix", "attention_branch", "attention_output", "mlp_branch", "qkv_branch")


@dataclass(frozen=True)
class BlockContext:
    """Where a hook is called.

    Attributes:
        index: the block (layer) index, from 0.
        num_blocks: blocks of this tower.
        prefix_tokens: tokens before the prompt slot: a ViT's class and register tokens (1 for CLIP),
            ``[SOS]`` of a text tower (1); 0 for a GNN.
        tower: ``"vision"``, ``"text"`` or ``"graph"``.
    """

    index: int
    num_blocks: int
    prefix_tokens: int = 0
    tower: str = ""


@dataclass(frozen=True)
class AttentionPrefix:
    """Keys and values ``(n, W)`` (or ``(B, n, W)``) prepended to a block's attention keys and values.

    Attributes:
        compensatory: renormalise the attention on the prefix to sum to one, so the original tokens keep
            their joint-softmax weights (LAE's compensatory prefix); otherwise one joint softmax (prefix tuning).
    """

    keys: Tensor
    values: Tensor
    compensatory: bool = False


class BlockHook:
    """What a prompt may change inside a backbone's blocks; every method is a no-op here.

    Subclasses override what they need; backbones attach PyTorch hooks only for overridden methods
    (:meth:`uses`), so an unused capability costs nothing.
    """

    def before_block(self, context: BlockContext, tokens: Tensor) -> Tensor:
        """The tokens ``(B, N, W)`` (node features ``(N, F)``) entering block ``context.index``."""
        return tokens

    def after_blocks(self, context: BlockContext, tokens: Tensor) -> tuple[Tensor, Tensor | None]:
        """Take out what :meth:`before_block` inserted: ``(tokens as the backbone laid them out, the outputs
        at the inserted positions or None)``. ``context.index`` is ``num_blocks``."""
        return tokens, None

    def positions_before_block(self, context: BlockContext, positions: Tensor) -> Tensor:
        """For backbones that add position embeddings to the tokens before *every* block (Point-MAE): the
        positions ``(B, N, W)`` of the tokens :meth:`before_block` returned. A hook that inserts or
        replaces tokens inserts or replaces their positions here the same way."""
        return positions

    def attention_prefix(self, context: BlockContext) -> AttentionPrefix | None:
        """Extra keys/values for block ``context.index``'s attention, or ``None``."""
        return None

    def attention_branch(self, context: BlockContext, hidden: Tensor) -> Tensor | None:
        """Added to the attention output; ``hidden`` is the attention's input (after the block's first norm)."""
        return None

    def attention_output(self, context: BlockContext, hidden: Tensor, output: Tensor) -> Tensor | None:
        """A replacement for the attention's ``output`` (after its projection, before the residual), given its
        input ``hidden`` (after the block's first norm); ``None`` keeps it. Runs after ``attention_branch``."""
        return None

    def mlp_branch(self, context: BlockContext, hidden: Tensor) -> Tensor | None:
        """Added to the MLP output; ``hidden`` is the MLP's input (after the block's second norm)."""
        return None

    def qkv_branch(self, context: BlockContext, hidden: Tensor) -> Tensor | None:
        """Added to the fused ``(…, 3·W)`` query/key/value projection of ``hidden``."""
        return None

    def uses(self, capability: str) -> bool:
        """Whether this hook overrides ``capability`` (one of :data:`CAPABILITIES`)."""
        return getattr(type(self), capability) is not getattr(BlockHook, capability)

    def within_shared_prefix(self, length: int) -> bool:
        """Whether this hook only replaces tokens among the first ``length`` positions, with the same values
        for every sequence of the batch, and changes nothing else: then a backbone may encode those
        positions once for all sequences (the shared-prefix text pass). Unknown hooks say no."""
        return not any(self.uses(capability) for capability in CAPABILITIES)


class ComposedHooks(BlockHook):
    """Several hooks as one: token edits in order (removal in reverse), branches summed, prefixes joined."""

    def __init__(self, hooks: Sequence[BlockHook]) -> None:
        self.hooks = list(hooks)

    def uses(self, capability: str) -> bool:
        return any(hook.uses(capability) for hook in self.hooks)

    def within_shared_prefix(self, length: int) -> bool:
        return all(hook.within_shared_prefix(length) for hook in self.hooks)

    def before_block(self, context: BlockContext, tokens: Tensor) -> Tensor:
        for hook in self.hooks:
            tokens = hook.before_block(context, tokens)
        return tokens

    def positions_before_block(self, context: BlockContext, positions: Tensor) -> Tensor:
        for hook in self.hooks:
            positions = hook.positions_before_block(context, positions)
        return positions

    def after_blocks(self, context: BlockContext, tokens: Tensor) -> tuple[Tensor, Tensor | None]:
        inserted: Tensor | None = None
        for hook in reversed(self.hooks):
            tokens, outputs = hook.after_blocks(context, tokens)
            inserted = outputs if inserted is None else inserted
        return tokens, inserted

    def attention_prefix(self, context: BlockContext) -> AttentionPrefix | None:
        prefixes = [p for p in (hook.attention_prefix(context) for hook in self.hooks) if p is not None]
        if not prefixes:
            return None
        if len({p.compensatory for p in prefixes}) > 1:
            raise ValueError("cannot join a compensatory and a joint-softmax attention prefix in one block.")
        keys = torch.cat([_batched(p.keys, prefixes) for p in prefixes], dim=-2)
        values = torch.cat([_batched(p.values, prefixes) for p in prefixes], dim=-2)
        return AttentionPrefix(keys, values, prefixes[0].compensatory)

    def attention_branch(self, context: BlockContext, hidden: Tensor) -> Tensor | None:
        return _sum(hook.attention_branch(context, hidden) for hook in self.hooks)

    def attention_output(self, context: BlockContext, hidden: Tensor, output: Tensor) -> Tensor | None:
        changed = False
        for hook in self.hooks:
            replaced = hook.attention_output(context, hidden, output)
            if replaced is not None:
                output, changed = replaced, True
        return output if changed else None

    def mlp_branch(self, context: BlockContext, hidden: Tensor) -> Tensor | None:
        return _sum(hook.mlp_branch(context, hidden) for hook in self.hooks)

    def qkv_branch(self, context: BlockContext, hidden: Tensor) -> Tensor | None:
        return _sum(hook.qkv_branch(context, hidden) for hook in self.hooks)


def compose(*hooks: BlockHook | None) -> BlockHook | None:
    """One hook from several (``None`` entries are skipped; ``None`` if none is left)."""
    present = [hook for hook in hooks if hook is not None]
    if not present:
        return None
    return present[0] if len(present) == 1 else ComposedHooks(present)


def _sum(values: Iterator[Tensor | None]) -> Tensor | None:
    total = None
    for value in values:
        if value is not None:
            total = value if total is None else total + value
    return total


def _batched(tensor: Tensor, prefixes: Sequence[AttentionPrefix]) -> Tensor:
    batched = [p.keys.shape[0] for p in prefixes if p.keys.dim() == 3]
    return tensor.unsqueeze(0).expand(batched[0], -1, -1) if batched and tensor.dim() == 2 else tensor


def expand_to_batch(tokens: Tensor, batch: int) -> Tensor:
    """``(n, W)`` tokens shared by the batch become ``(B, n, W)``; ``(B, n, W)`` is kept."""
    return tokens.unsqueeze(0).expand(batch, -1, -1) if tokens.dim() == 2 else tokens


SlotPosition = Literal["after_prefix", "append"]


class PromptTokens(BlockHook):
    """Prompt tokens at a slot of the token sequence (VPT, MaPLe, IVLP).

    * ``first`` ``(n, W)`` or ``(B, n, W)`` is inserted before block 0: right after the prefix tokens
      (``"after_prefix"``: VPT, after ``[CLS]``) or after every token (``"append"``: MaPLe);
    * ``deep[i-1]`` *replaces* the slot before block ``i`` for ``i`` in ``1..len(deep)`` (the previous
      block's outputs there are dropped, never accumulated);
    * after the last block the slot is taken out and returned apart.

    With an integer ``where`` and no ``first``, nothing is inserted: the slot is the ``len(deep[0])``
    positions from ``where`` of a sequence the method built itself (MaPLe's text context at
    positions ``1..n``), and stays in place at the end.
    """

    def __init__(
        self, first: Tensor | None, deep: Sequence[Tensor] | None = None, where: SlotPosition | int = "after_prefix"
    ) -> None:
        self.first, self.deep, self.where = first, list(deep or []), where
        if isinstance(where, int):
            if first is not None:
                raise ValueError("a fixed slot position replaces tokens; it takes no first-layer tokens.")
            self._slot: tuple[int, int] | None = (where, self.deep[0].shape[-2]) if self.deep else None
        elif self.deep and first is None:
            raise ValueError("deep prompts need first-layer prompts (the slot they replace).")
        else:
            self._slot = None

    def before_block(self, context: BlockContext, tokens: Tensor) -> Tensor:
        if context.index == 0 and self.first is not None:
            start = context.prefix_tokens if self.where == "after_prefix" else tokens.shape[1]
            first = expand_to_batch(self.first, tokens.shape[0]).to(tokens.dtype)
            self._slot = (start, first.shape[1])
            return torch.cat([tokens[:, :start], first, tokens[:, start:]], dim=1)
        if self.deep and 1 <= context.index <= len(self.deep):
            assert self._slot is not None
            start, length = self._slot
            fresh = expand_to_batch(self.deep[context.index - 1], tokens.shape[0]).to(tokens.dtype)
            return torch.cat([tokens[:, :start], fresh, tokens[:, start + length :]], dim=1)
        return tokens

    def within_shared_prefix(self, length: int) -> bool:
        """A fixed slot of shared (2-D) deep prompts inside the prefix replaces the same positions of every
        sequence with the same values; inserted tokens and per-sequence prompts do not qualify."""
        if self.first is not None or self._slot is None:
            return False
        start, slot = self._slot
        return start + slot <= length and all(prompt.dim() == 2 for prompt in self.deep)

    def after_blocks(self, context: BlockContext, tokens: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.first is None or self._slot is None:
            return tokens, None
        start, length = self._slot
        return torch.cat([tokens[:, :start], tokens[:, start + length :]], dim=1), tokens[:, start : start + length]


# -- how backbones attach a hook to their blocks ------------------------------------------------------
@dataclass
class BlockSites:
    """The modules of one block where torch hooks implement the seam (``None``: not available there).

    Attributes:
        attention: the attention module (its first input is the normalised hidden state).
        mlp: the MLP module.
        qkv: the fused query/key/value projection.
        prefixed_attention: computes ``attention``'s output for an input and an :class:`AttentionPrefix`
            (the backbone's own attention with extra keys/values; upstream libraries have no such argument).
    """

    attention: nn.Module | None = None
    mlp: nn.Module | None = None
    qkv: nn.Module | None = None
    prefixed_attention: Callable[[Tensor, AttentionPrefix], Tensor] | None = None


@contextlib.contextmanager
def attached(
    hook: BlockHook | None, sites: Sequence[BlockSites], contexts: Sequence[BlockContext], backbone: str
) -> Iterator[None]:
    """While active, the blocks described by ``sites`` run ``hook``'s branches and prefixes."""
    handles: list[torch.utils.hooks.RemovableHandle] = []
    patched: list[nn.Module] = []
    try:
        if hook is not None:
            for site, context in zip(sites, contexts):
                _attach_block(hook, site, context, backbone, handles, patched)
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module in patched:
            del module.forward  # the instance attribute goes; the class's forward is back


def _attach_block(
    hook: BlockHook,
    site: BlockSites,
    context: BlockContext,
    backbone: str,
    handles: list[torch.utils.hooks.RemovableHandle],
    patched: list[nn.Module],
) -> None:
    for capability, module in (
        ("attention_branch", site.attention),
        ("mlp_branch", site.mlp),
        ("qkv_branch", site.qkv),
    ):
        if not hook.uses(capability):
            continue
        if module is None:
            raise NotImplementedError(f"{backbone} has no {capability.replace('_', ' ')} seam in its blocks.")
        handles.append(module.register_forward_hook(_adder(getattr(hook, capability), context)))
    if hook.uses("attention_output"):
        if site.attention is None:
            raise NotImplementedError(f"{backbone} has no attention output seam in its blocks.")
        handles.append(site.attention.register_forward_hook(_replacer(hook.attention_output, context)))
    if hook.uses("attention_prefix"):
        attention, prefixed = site.attention, site.prefixed_attention
        if attention is None or prefixed is None:
            raise NotImplementedError(f"{backbone} cannot add attention keys/values (prefixes) to its blocks.")
        original = attention.forward

        def forward(hidden: Tensor, *args: object, **kwargs: object) -> Tensor:
            prefix = hook.attention_prefix(context)
            return original(hidden, *args, **kwargs) if prefix is None else prefixed(hidden, prefix)

        attention.forward = forward  # type: ignore[method-assign]
        patched.append(attention)


def _replacer(replace: Callable[[BlockContext, Tensor, Tensor], Tensor | None], context: BlockContext) -> Callable:
    def apply(module: nn.Module, args: tuple, output: Tensor | tuple) -> Tensor | tuple:
        first = output[0] if isinstance(output, tuple) else output  # nn.MultiheadAttention: (output, weights)
        replaced = replace(context, args[0], first)
        if replaced is None:
            return output
        replaced = replaced.to(first.dtype)
        return (replaced, *output[1:]) if isinstance(output, tuple) else replaced

    return apply


def _adder(branch: Callable[[BlockContext, Tensor], Tensor | None], context: BlockContext) -> Callable:
    def add(module: nn.Module, args: tuple, output: Tensor | tuple) -> Tensor | tuple:
        extra = branch(context, args[0])
        if extra is None:
            return output
        if isinstance(output, tuple):  # nn.MultiheadAttention returns (output, weights)
            return (output[0] + extra.to(output[0].dtype), *output[1:])
        return output + extra.to(output.dtype)

    return add


@contextlib.contextmanager
def tokens_before_blocks(
    hook: BlockHook | None, blocks: Sequence[nn.Module], contexts: Sequence[BlockContext]
) -> Iterator[None]:
    """For backbones whose library runs the block loop itself (Hugging Face models, PyG GNNs): apply
    ``hook.before_block`` to the first input of each block through forward pre-hooks. The sequence
    length must not change there (the library's masks are built for it)."""
    handles = []
    try:
        if hook is not None and hook.uses("before_block"):
            for block, context in zip(blocks, contexts):
                handles.append(block.register_forward_pre_hook(_editor(hook, context), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _editor(hook: BlockHook, context: BlockContext) -> Callable:
    def edit(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        key = "hidden_states" if not args and "hidden_states" in kwargs else ("x" if not args else None)
        tokens = args[0] if args else kwargs[key]
        edited = hook.before_block(context, tokens)
        if edited.shape[:-1] != tokens.shape[:-1]:
            raise ValueError(
                f"a block hook changed the sequence length inside {type(module).__name__} (block {context.index}); "
                f"this backbone only lets hooks replace tokens in place."
            )
        if args:
            return (edited, *args[1:]), kwargs
        return args, {**kwargs, key: edited}

    return edit
