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

Every scale is a learnable scalar initialised to 1 (LAE's ``Scaler`` with ``scale: null``). The ViT
runs them through :meth:`~lightning_prompts.backbones.TimmViT.forward_features` (``block_pets``);
the frozen backbone is never modified.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

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


def attention_with_prefix(q: Tensor, k: Tensor, v: Tensor, scale: float, prefix: Prefix) -> Tensor:
    """Multi-head attention ``(B, H, N, d)`` whose keys/values also include the prefix tokens."""
    batch, heads, _, head_dim = q.shape
    prefix_k, prefix_v = (
        t.to(q.dtype).reshape(1, -1, heads, head_dim).transpose(1, 2).expand(batch, -1, -1, -1) for t in prefix()
    )
    scores = (q * scale) @ torch.cat([prefix_k, k], dim=2).transpose(-2, -1)
    weights = scores.softmax(dim=-1)
    length = prefix_k.shape[2]
    if prefix.compensatory:  # the prefix's share renormalised to one; the tokens keep theirs
        share = weights[..., :length].sum(dim=-1, keepdim=True).clamp(min=1e-12)
        weights = torch.cat([weights[..., :length] / share, weights[..., length:]], dim=-1)
    return weights @ torch.cat([prefix_v, v], dim=2)
