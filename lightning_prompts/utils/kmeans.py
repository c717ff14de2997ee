"""Seeded k-means (k-means++ initialisation, Lloyd iterations) on a feature matrix, in torch."""

from __future__ import annotations

import torch
from torch import Tensor


def kmeans(features: Tensor, clusters: int, iterations: int = 50, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Cluster the rows of ``features`` ``(N, D)``; return ``(labels (N,), centres (clusters, D))``.

    Deterministic for a seed. An emptied cluster is moved to the point farthest from its centre, so
    every cluster keeps at least one member. Runs on the CPU (its seeded generator is a CPU one) whatever
    the device of ``features``; the labels and centres come back on the CPU.
    """
    count = features.shape[0]
    if not 1 <= clusters <= count:
        raise ValueError(f"cannot make {clusters} clusters of {count} points.")
    points = features.detach().cpu().double()
    generator = torch.Generator().manual_seed(seed)
    first = int(torch.randint(count, (1,), generator=generator))
    centres = [points[first]]
    distance = (points - points[first]).pow(2).sum(dim=1)
    for _ in range(1, clusters):  # k-means++: sample proportionally to the squared distance
        weights = distance / distance.sum() if distance.sum() > 0 else torch.full_like(distance, 1.0 / count)
        chosen = int(torch.multinomial(weights, 1, generator=generator))
        centres.append(points[chosen])
        distance = torch.minimum(distance, (points - points[chosen]).pow(2).sum(dim=1))
    centre = torch.stack(centres)
    labels = torch.full((count,), -1, dtype=torch.long)
    for _ in range(iterations):
        squared = torch.cdist(points, centre).pow(2)
        new_labels = squared.argmin(dim=1)
        own = squared.gather(1, new_labels.view(-1, 1)).squeeze(1)
        for empty in sorted(set(range(clusters)) - set(new_labels.tolist())):
            farthest = int(own.argmax())
            new_labels[farthest], own[farthest] = empty, -1.0
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
        centre = torch.stack([points[labels == k].mean(dim=0) for k in range(clusters)])
    return labels, centre.to(features.dtype)
