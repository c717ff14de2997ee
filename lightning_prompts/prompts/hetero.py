"""HetGPT's prompt pieces for heterogeneous graphs (Ma et al., "HetGPT: Harnessing the Power of Prompt Tuning
in Pre-Trained Heterogeneous Graph Neural Networks", WWW 2024; no official code — the equations below are our
reading of the paper, pinned in ``tests/methods/test_hetgpt.py``).

* :class:`HeteroFeaturePrompt`: per node type ``A``, ``K`` learned bases ``f_k^A``; a node's features become
  ``x_i + Σ_k α_ik f_k^A`` with ``α_i = softmax_k(f_k^A · x_i)`` (a per-type GPF-plus whose scores are the bases'
  dot products with the features, no separate scorer);
* :class:`NeighbourAttention`: node-level attention of a target node over its neighbours through one edge type or
  metapath, ``e_ij = LeakyReLU_0.2(a_s · W h_j + a_d · W h_i)``, ``α_ij`` the softmax over ``i``'s neighbours,
  ``s_i = ELU(Σ_j α_ij W h_j)`` (GAT's form; a node without neighbours gets ``0``);
* :class:`SemanticAttention`: HAN's attention over views, ``w_p = mean_i qᵀ tanh(M s_i^p + b)``,
  ``β = softmax_p(w)``, ``z_i = Σ_p β_p s_i^p``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_prompts.prompts.feature_prompt import glorot_


class HeteroFeaturePrompt(nn.Module):
    """Per-type feature prompts (see the module docstring). ``in_channels``: feature width per node type."""

    def __init__(self, in_channels: dict[str, int], num_bases: int = 5) -> None:
        super().__init__()
        if num_bases < 1:
            raise ValueError(f"num_bases must be >= 1, got {num_bases}.")
        self.bases = nn.ParameterDict(
            {node: nn.Parameter(glorot_(torch.empty(num_bases, width))) for node, width in in_channels.items()}
        )

    def prompt(self, node_type: str, x: Tensor) -> Tensor:
        bases = self.bases[node_type].to(x.dtype)
        weights = (x @ bases.T).softmax(dim=-1)  # (N, K)
        return x + weights @ bases

    def callables(self) -> dict[str, object]:
        """``{type: x -> prompted x}`` for :meth:`~lightning_prompts.backbones.HeteroGNN.encode_nodes`."""
        return {node: (lambda x, node=node: self.prompt(node, x)) for node in self.bases}


class NeighbourAttention(nn.Module):
    """Node-level attention over one relation's neighbours (see the module docstring)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.project = nn.Linear(width, width, bias=False)
        self.source_score = nn.Parameter(glorot_(torch.empty(1, width)))
        self.target_score = nn.Parameter(glorot_(torch.empty(1, width)))

    def forward(self, sources: Tensor, targets: Tensor, edge_index: Tensor) -> Tensor:
        """``(N_target, width)`` summaries; ``edge_index`` ``(2, E)`` from source rows to target rows."""
        from torch_geometric.utils import softmax

        source, target = edge_index
        projected_sources, projected_targets = self.project(sources), self.project(targets)
        scores = (projected_sources[source] * self.source_score).sum(-1) + (
            projected_targets[target] * self.target_score
        ).sum(-1)
        weights = softmax(F.leaky_relu(scores, 0.2), target, num_nodes=targets.shape[0])
        messages = weights.unsqueeze(-1) * projected_sources[source]
        return F.elu(messages.new_zeros(targets.shape[0], messages.shape[-1]).index_add_(0, target, messages))


class SemanticAttention(nn.Module):
    """HAN's attention over views (see the module docstring)."""

    def __init__(self, width: int, attention_width: int = 128) -> None:
        super().__init__()
        self.transform = nn.Linear(width, attention_width)
        self.query = nn.Parameter(glorot_(torch.empty(1, attention_width)))

    def forward(self, views: Sequence[Tensor]) -> Tensor:
        stacked = torch.stack(list(views), dim=0)  # (P, N, width)
        scores = (torch.tanh(self.transform(stacked)) * self.query).sum(-1).mean(dim=1)  # (P,)
        return (scores.softmax(dim=0)[:, None, None] * stacked).sum(dim=0)
