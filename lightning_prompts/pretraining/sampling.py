"""Sampling inside the graphs of a batch, vectorised over the batch."""

from __future__ import annotations

import torch
from torch import Tensor


def random_ranks(groups: Tensor, num_groups: int, generator: torch.Generator | None = None) -> Tensor:
    """Each element's rank within its group (``groups`` maps elements to groups ``0..num_groups-1``) under a
    uniformly random order: keeping the elements whose rank is below ``k[g]`` draws ``k[g]`` of group ``g``
    uniformly without replacement. ``generator``: one on ``groups``' device (default: the device's own)."""
    draws = torch.rand(groups.shape[0], device=groups.device, generator=generator)
    order = torch.argsort(groups.double() * 2 + draws)  # group, then random
    sizes = torch.bincount(groups, minlength=num_groups)
    starts = torch.cumsum(sizes, 0) - sizes
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(order.shape[0], device=groups.device) - starts[groups[order]]
    return ranks
