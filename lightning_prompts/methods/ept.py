"""EPT — DePT with prompt fusion and gated multi-space projection (Lan et al., AAAI 2025).

EPT starts from :class:`~lightning_prompts.methods.DePT`'s decomposition — a short prompt ``P`` (``m × d``)
and a low-rank offset ``A B`` (``s × d``) of the input embeddings — and enriches the short prompt in two
steps before it is prepended. We found no released code and the paper's equations leave choices open;
what we decided, and ``tests/methods/test_ept.py`` pins:

* **prompt fusion** — the prompt attends to the knowledge in the offset (one head, no projections, so
  no parameters beyond DePT's): ``P_f = P + softmax(P (A B)ᵀ / √d) (A B)``;
* **multi-space projection** — ``K`` low-rank projections ``U_k V_k`` (``d × r_p``, ``r_p × d``) of the
  fused prompt, mixed by a gate computed from the prompt, with a residual:
  ``g = softmax(W_g · mean_rows(P_f) + b_g)`` (``K`` values) and
  ``P̃ = P_f + Σ_k g_k · P_f U_k V_k``;
* **initialisation**: ``B = 0`` (DePT's) makes ``A B = 0``, so the fusion adds nothing, and ``V_k = 0``, so
  the projection adds nothing: at initialisation EPT *is* DePT, which *is* prompt tuning.

The prompt trains at the prompt's learning rate, ``A`` and ``B`` at ``offset_lr``, and ``U``, ``V`` and the gate
at ``projection_lr`` (default: ``offset_lr``, the rate DePT gives its low-rank matrices). At the prompt's 0.3 the
product ``U V`` grew quadratically — the enriched prompt's norm rose nearly 40-fold in five steps on a tiny BERT — which
MiniLM's embedding LayerNorm absorbed and Gemma-3-270M, whose prompt enters the residual stream raw, did not
(EPT stayed at chance there).
At equal budget the extra ``K · r_p · 2d + d·K + K`` parameters come out of the prompt's length
(``budget_tokens`` accounts for them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_prompts.backbones.base import build_backbone
from lightning_prompts.backbones.hf_text import HFText
from lightning_prompts.methods.dept import DePT
from lightning_prompts.registry import register_method


def prompt_fusion(prompt: Tensor, knowledge: Tensor) -> Tensor:
    """``P + softmax(P Kᵀ / √d) K``: every prompt row attends to the knowledge rows (here the offset's)."""
    weights = torch.softmax(prompt @ knowledge.T / math.sqrt(prompt.shape[-1]), dim=-1)
    return prompt + weights @ knowledge


class GatedMultiSpaceProjection(nn.Module):
    """``x + Σ_k g_k · x U_k V_k`` with ``g = softmax(W_g mean_rows(x) + b_g)``; ``V = 0`` at initialisation.

    Args:
        width: ``d``.
        spaces: ``K``.
        rank: ``r_p`` of each projection.
        generator: random generator of ``U`` and the gate.
    """

    def __init__(self, width: int, spaces: int = 4, rank: int = 8, generator: torch.Generator | None = None) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(width)
        self.U = nn.Parameter(torch.empty(spaces, width, rank).uniform_(-bound, bound, generator=generator))
        self.V = nn.Parameter(torch.zeros(spaces, rank, width))
        self.gate = nn.Linear(width, spaces)
        with torch.no_grad():
            self.gate.weight.uniform_(-bound, bound, generator=generator)
            self.gate.bias.zero_()

    def gates(self, x: Tensor) -> Tensor:
        return torch.softmax(self.gate(x.mean(dim=0)), dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        projected = torch.einsum("md,kdr,kre->kme", x, self.U, self.V)
        return x + torch.einsum("k,kme->me", self.gates(x), projected)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


@register_method(
    family="text",
    title="EPT",
    paper="Lan et al., AAAI 2025 — Efficient Prompt Tuning by Multi-Space Projection and Prompt Fusion",
    overlay="dept",
    example={"num_virtual_tokens": 4, "rank": 4, "max_length": 96, "spaces": 2, "space_rank": 2},
)
class EPT(DePT):
    """DePT's decomposition with the prompt enriched by fusion and a gated multi-space projection.

    Args:
        backbone, classnames: see :class:`~lightning_prompts.methods.DePT`.
        spaces: ``K``, the projection subspaces.
        space_rank: ``r_p``, the rank of each projection.
        projection_lr: learning rate of ``U``, ``V`` and the gate (group ``"projection"``); ``None``: ``offset_lr``.
        **kwargs: :class:`~lightning_prompts.methods.DePT`'s arguments (``num_virtual_tokens``, ``rank``,
            ``max_length``, ``budget_tokens``, ``offset_lr``, …).
    """

    def __init__(
        self,
        backbone: HFText,
        classnames: Sequence[str] | None = None,
        spaces: int = 4,
        space_rank: int = 8,
        projection_lr: float | None = None,
        budget_tokens: int | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        backbone = build_backbone(backbone)  # a checkpoint passes its stored config; the width is needed now
        width = backbone.hidden_size
        extra_tokens = 0
        if budget_tokens is not None:  # the projection's parameters come out of the prompt
            extra = spaces * space_rank * 2 * width + width * spaces + spaces
            extra_tokens = math.ceil(extra / width)
        super().__init__(
            backbone, classnames, budget_tokens=None if budget_tokens is None else budget_tokens - extra_tokens,
            seed=seed, **kwargs,
        )  # fmt: skip
        generator = torch.Generator().manual_seed(seed + 1)
        self.projection = GatedMultiSpaceProjection(self.backbone.hidden_size, spaces, space_rank, generator)
        self.projection_lr = self.offset_lr if projection_lr is None else projection_lr

    def enriched_prompt(self) -> Tensor:
        """``P̃``: the short prompt fused with the offset's knowledge, then projected (see the module docstring)."""
        knowledge = self.offset()  # (s, d): the whole position-wise update
        return self.projection(prompt_fusion(self.prompt(), knowledge))

    def prompt_parameters(self) -> list[nn.Parameter]:
        return [self.prompt.embedding, *self.projection.parameters()]

    def param_groups(self) -> list[dict[str, Any]]:
        groups = super().param_groups()  # DePT's: prompt (with the projection), offset, head
        projection = list(self.projection.parameters())
        own = {id(p) for p in projection}
        prompt = {**groups[0], "params": [p for p in groups[0]["params"] if id(p) not in own]}
        return [prompt, groups[1], {"name": "projection", "params": projection, "lr": self.projection_lr}, *groups[2:]]

    def prompt_inputs(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        return self.enriched_prompt(), self.offset(input_ids.shape[1])
