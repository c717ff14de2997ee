"""A residual bottleneck adapter on a feature vector (CoPrompt's, after CLIP-Adapter)."""

from __future__ import annotations

from torch import Tensor, nn


class ResidualAdapter(nn.Module):
    """``ratio · A(f) + (1 - ratio) · f`` with ``A = ReLU ∘ Linear(d/r → d) ∘ ReLU ∘ Linear(d → d/r)``.

    As in CoPrompt: no biases, a ReLU after both layers (so ``A(f) >= 0``), PyTorch's default init.

    Args:
        dim: feature size ``d``.
        ratio: weight of the adapter's output in the mix (CoPrompt: 0.1 for images, 0.2 for text).
        reduction: bottleneck factor ``r`` (4: 512 → 128 → 512).
    """

    def __init__(self, dim: int, ratio: float, reduction: int = 4) -> None:
        super().__init__()
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio must be in [0, 1], got {ratio}.")
        hidden = max(1, dim // reduction)
        self.layers = nn.Sequential(
            nn.Linear(dim, hidden, bias=False), nn.ReLU(inplace=True), nn.Linear(hidden, dim, bias=False), nn.ReLU()
        )
        self.ratio = ratio

    def forward(self, features: Tensor) -> Tensor:
        return self.ratio * self.layers(features) + (1.0 - self.ratio) * features
