"""Point-cloud grouping against brute-force loops (what the official CUDA kernels compute)."""

from __future__ import annotations

import pytest
import torch

from lightning_prompts.backbones.point_ops import farthest_point_sample, group_patches, knn


def brute_force_fps(cloud: list[list[float]], count: int) -> list[int]:
    def squared(a, b):
        return sum((x - y) ** 2 for x, y in zip(a, b))

    chosen = [0]
    while len(chosen) < count:
        gaps = [min(squared(p, cloud[c]) for c in chosen) for p in cloud]
        best = max(range(len(cloud)), key=lambda i: (gaps[i], -i))  # the first index on ties
        chosen.append(best)
    return chosen


def test_fps_and_knn_equal_brute_force():
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(3, 60, 3, generator=generator, dtype=torch.float64)
    chosen = farthest_point_sample(points, 9)
    for b in range(3):
        assert chosen[b].tolist() == brute_force_fps(points[b].tolist(), 9)
    queries = points[:, :5]
    neighbours = knn(queries, points, 4)
    for b in range(3):
        for q in range(5):
            distances = [float(((points[b, i] - queries[b, q]) ** 2).sum()) for i in range(60)]
            assert neighbours[b, q].tolist() == sorted(range(60), key=distances.__getitem__)[:4]
    assert (neighbours[:, :, 0] == torch.arange(5)).all()  # a query that is a point finds itself first


def test_patches_are_centred_neighbourhoods():
    points = torch.rand(2, 128, 3, generator=torch.Generator().manual_seed(1))
    centres, patches = group_patches(points, num_patches=8, patch_size=16)
    assert centres.shape == (2, 8, 3) and patches.shape == (2, 8, 16, 3)
    assert torch.allclose(patches[:, :, 0], torch.zeros(2, 8, 3))  # each centre is its own nearest point
    spread = farthest_point_sample(points, 8)
    assert len(set(spread[0].tolist())) == 8
    with pytest.raises(ValueError, match="cannot sample"):
        farthest_point_sample(points, 200)
