"""Point-cloud grouping in plain torch: farthest point sampling, k nearest neighbours, patches.

Point-MAE-style backbones (IDPT's) cut a cloud into patches: ``G`` centres by farthest point sampling,
each with its ``k`` nearest points, expressed relative to the centre. The official code uses CUDA
kernels (``pointnet2_ops``, ``knn_cuda``); no maintained package with these ops installs from the
registries here (``torch-cluster`` has no binary wheel on PyPI, only a source build against torch;
``pointnet2_ops`` and ``knn_cuda`` are CUDA-only source builds), so they are written in torch —
batched, on any device — and ``tests/backbones/test_point_ops.py`` checks them against brute-force
loops. FPS follows ``pointnet2_ops``: start at point 0, then repeatedly take the point farthest from the
chosen set (the first one on ties).
"""

from __future__ import annotations

import torch
from torch import Tensor


def farthest_point_sample(points: Tensor, count: int) -> Tensor:
    """Indices ``(B, count)`` of ``count`` points of ``points`` ``(B, N, 3)`` chosen by farthest point sampling."""
    batch, size, _ = points.shape
    if not 0 < count <= size:
        raise ValueError(f"cannot sample {count} of {size} points.")
    chosen = torch.zeros(batch, count, dtype=torch.long, device=points.device)
    nearest = torch.full((batch, size), float("inf"), device=points.device, dtype=points.dtype)
    rows = torch.arange(batch, device=points.device)
    last = torch.zeros(batch, dtype=torch.long, device=points.device)
    for step in range(1, count):
        distance = (points - points[rows, last].unsqueeze(1)).pow(2).sum(-1)
        nearest = torch.minimum(nearest, distance)
        last = nearest.argmax(dim=1)
        chosen[:, step] = last
    return chosen


def knn(queries: Tensor, points: Tensor, k: int) -> Tensor:
    """Indices ``(B, Q, k)`` of the ``k`` points of ``points`` ``(B, N, 3)`` nearest each query ``(B, Q, 3)``,
    nearest first."""
    if not 0 < k <= points.shape[1]:
        raise ValueError(f"cannot take {k} neighbours of {points.shape[1]} points.")
    distance = torch.cdist(queries, points).pow(2)
    return distance.topk(k, dim=-1, largest=False).indices


def group_patches(points: Tensor, num_patches: int, patch_size: int) -> tuple[Tensor, Tensor]:
    """Point-MAE's grouping: ``(centres (B, G, 3), patches (B, G, k, 3))`` with each patch's points relative
    to its centre."""
    rows = torch.arange(points.shape[0], device=points.device)
    centres = points[rows[:, None], farthest_point_sample(points, num_patches)]
    neighbours = knn(centres, points, patch_size)
    patches = points[rows[:, None, None], neighbours] - centres.unsqueeze(2)
    return centres, patches
