"""Parameter-efficient tuning (PET) modules for ViT blocks, as LAE uses them (Gao et al., ICCV 2023;
official code: github.com/gqk/LAE, ``libml/model/pet``).

One :class:`BlockPET` per adapted block holds one kind of module:

* :class:`Adapter`: ``scale · Linear(d→w) ∘ GELU ∘ Linear(w→d)`` applied to the block's first
  LayerNorm output and added to the attention output (parallel to the attention); width ``w = 5``;
  the first layer Kaiming-uniform (a = √5) with zero bias, the second all zeros, so it starts at 0;
* :class:`KVLoRA`: low-rank updates of the key and value projections (not the query):
  ``k += s_k · B_k A_k h``, ``v += s_v · B_v A_v h``, rank 5, ``A`` Kaiming-uniform, ``B`` zero;
* :class:`Prefix`: ``length`` learned key and value tokens (uniform(0, 0.01), each with a scale)
  that every query also attends to; *compensatory* (LAE's default) renormalises the attention on the
  prefix to sum to one, so the original tokens keep their joint-softmax weights and the prefix adds
  ``softmax_prefix(q·k_pᵀ)·v_p``.

Every scale is a learnable scalar initialised to 1 (LAE's ``Scaler`` with ``scale: null``).
:class:`PETHooks` plugs them into a backbone's blocks through the block-hook seam (the adapter as an
attention branch, LoRA as a qkv branch, the prefix as attention keys/values); the frozen backbone is
never modified.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_prompts.backbones.hooks import AttentionPrefix, BlockContext, BlockHook

PETKind = Literal["adapter", "lora", "prefix"]


def _kaiming(weight: Tensor) -> Tensor:
    return nn.init.kaiming_uniform_(weight, a=math.sqrt(5))


class Adapter(nn.Module):
    """Bottleneck adapter parallel to the attention (see the module docstring)."""

    def __init__(self, dim: int, width: int = 5) -> None:
        super().__init__()
        self.down, self.up = nn.Linear(dim, width), nn.Linear(width, dim)
        self.scale = nn.Parameter(torch.ones(()))
        _kaiming(self.down.weight)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.scale * self.up(nn.functional.gelu(self.down(hidden)))


class KVLoRA(nn.Module):
    """Low-rank key and value updates; :meth:`forward` returns the ``(…, 3·dim)`` qkv increment."""

    def __init__(self, dim: int, rank: int = 5) -> None:
        super().__init__()
        self.a_k, self.a_v = nn.Parameter(torch.empty(rank, dim)), nn.Parameter(torch.empty(rank, dim))
        self.b_k, self.b_v = nn.Parameter(torch.zeros(dim, rank)), nn.Parameter(torch.zeros(dim, rank))
        self.scale_k, self.scale_v = nn.Parameter(torch.ones(())), nn.Parameter(torch.ones(()))
        _kaiming(self.a_k)
        _kaiming(self.a_v)

    def forward(self, hidden: Tensor) -> Tensor:
        key = self.scale_k * (hidden @ self.a_k.t() @ self.b_k.t())
        value = self.scale_v * (hidden @ self.a_v.t() @ self.b_v.t())
        return torch.cat([torch.zeros_like(key), key, value], dim=-1)


class Prefix(nn.Module):
    """Learned key and value tokens ``(length, dim)`` each, with their scales."""

    def __init__(self, dim: int, length: int = 10, compensatory: bool = True) -> None:
        super().__init__()
        self.keys = nn.Parameter(torch.empty(length, dim).uniform_(0, 0.01))
        self.values = nn.Parameter(torch.empty(length, dim).uniform_(0, 0.01))
        self.scale_k, self.scale_v = nn.Parameter(torch.ones(())), nn.Parameter(torch.ones(()))
        self.compensatory = compensatory

    def forward(self) -> tuple[Tensor, Tensor]:
        return self.scale_k * self.keys, self.scale_v * self.values


class BlockPET(nn.Module):
    """The PET module of one ViT block (``adapter``, ``lora`` or ``prefix``; the others are ``None``)."""

    def __init__(
        self,
        kind: PETKind,
        dim: int,
        adapter_width: int = 5,
        lora_rank: int = 5,
        prefix_length: int = 10,
        compensatory: bool = True,
    ) -> None:
        super().__init__()
        if kind not in ("adapter", "lora", "prefix"):
            raise ValueError(f"PET kind must be 'adapter', 'lora' or 'prefix', got {kind!r}.")
        self.kind = kind
        self.adapter = Adapter(dim, adapter_width) if kind == "adapter" else None
        self.lora = KVLoRA(dim, lora_rank) if kind == "lora" else None
        self.prefix = Prefix(dim, prefix_length, compensatory) if kind == "prefix" else None


class PETHooks(BlockHook):
    """The PET modules of several blocks (``{block index: BlockPET}``) as one block hook."""

    def __init__(self, pets: Mapping[int, BlockPET]) -> None:
        self.pets = dict(pets)

    def uses(self, capability: str) -> bool:
        kind = {"attention_branch": "adapter", "qkv_branch": "lora", "attention_prefix": "prefix"}.get(capability)
        return any(pet.kind == kind for pet in self.pets.values())

    def attention_branch(self, context: BlockContext, hidden: Tensor) -> Tensor | None:
        pet = self.pets.get(context.index)
        return pet.adapter(hidden) if pet is not None and pet.adapter is not None else None

    def qkv_branch(self, context: BlockContext, hidden: Tensor) -> Tensor | None:
        pet = self.pets.get(context.index)
        return pet.lora(hidden) if pet is not None and pet.lora is not None else None

    def attention_prefix(self, context: BlockContext) -> AttentionPrefix | None:
        pet = self.pets.get(context.index)
        if pet is None or pet.prefix is None:
            return None
        keys, values = pet.prefix()
        return AttentionPrefix(keys, values, compensatory=pet.prefix.compensatory)
