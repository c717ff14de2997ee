"""Prompts for point-cloud Transformers: IDPT's instance-aware prompt and deep prompts with positions.

* :class:`EdgeConvPromptGenerator` is IDPT's DGCNN-like generator: three EdgeConv stages on the patch
  tokens (k nearest neighbours *in feature space*, the point itself included; edge feature
  ``[x_j − x_i ‖ x_i]``; 1×1 conv, BatchNorm, LeakyReLU(0.2); max over the neighbours), their outputs
  concatenated, a 1×1 conv back to the width, and a max over the patches: one prompt token per cloud.
* :class:`InstancePromptHook` splices that token in after the class token before block ``layer`` —
  computed from the patch tokens entering that block — with its position embedding, and takes it out
  after the last block (its output is part of IDPT's feature).
* :class:`PositionedPromptTokens` pairs token prompts with prompts for their positions (the
  Point-MAE backbone adds positions before every block): VPT-deep on points.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_prompts.backbones.hooks import BlockContext, BlockHook, PromptTokens, SlotPosition


def feature_knn(features: Tensor, k: int) -> Tensor:
    """Indices ``(B, G, k)`` of each token's ``k`` nearest tokens by squared distance (itself included; distances
    in float32, where half precision would tie neighbours and torch has no half-precision ``cdist`` on the CPU)."""
    distance = torch.cdist(features.float(), features.float()).pow(2)
    return distance.topk(k, dim=-1, largest=False).indices


def edge_features(features: Tensor, k: int) -> Tensor:
    """``(B, 2W, G, k)`` EdgeConv inputs ``[x_j − x_i ‖ x_i]`` over each token's ``k`` nearest neighbours."""
    batch, groups, width = features.shape
    neighbours = features[torch.arange(batch, device=features.device)[:, None, None], feature_knn(features, k)]
    centre = features.unsqueeze(2).expand(-1, -1, k, -1)
    return torch.cat([neighbours - centre, centre], dim=-1).permute(0, 3, 1, 2)


class EdgeConvPromptGenerator(nn.Module):
    """IDPT's prompt generator (see the module docstring).

    Args:
        width: token width.
        k: neighbours per EdgeConv (20; fewer when a cloud has fewer patches).
    """

    def __init__(self, width: int, k: int = 20) -> None:
        super().__init__()
        self.k = k
        self.edge_convs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(2 * width, width, 1, bias=False), nn.BatchNorm2d(width), nn.LeakyReLU(0.2))
            for _ in range(3)
        )
        self.fuse = nn.Sequential(nn.Conv1d(3 * width, width, 1, bias=False), nn.BatchNorm1d(width), nn.LeakyReLU(0.2))

    def forward(self, patch_tokens: Tensor) -> Tensor:
        """``(B, G, W)`` patch tokens → ``(B, 1, W)`` prompt token."""
        k = min(self.k, patch_tokens.shape[1])
        stages, features = [], patch_tokens
        for conv in self.edge_convs:
            features = conv(edge_features(features, k)).max(dim=-1).values.transpose(1, 2)  # (B, G, W)
            stages.append(features)
        fused = self.fuse(torch.cat(stages, dim=-1).transpose(1, 2))  # (B, W, G)
        return fused.max(dim=-1).values.unsqueeze(1)


class InstancePromptHook(BlockHook):
    """Insert ``generator(patch tokens)`` after the prefix tokens before block ``layer``, with position
    ``position`` ``(1, 1, W)``; remove it after the last block and hand back its output."""

    def __init__(self, generator: nn.Module, position: Tensor, layer: int) -> None:
        self.generator, self.position, self.layer = generator, position, layer
        self._start: int | None = None

    def before_block(self, context: BlockContext, tokens: Tensor) -> Tensor:
        if context.index != self.layer:
            return tokens
        start = context.prefix_tokens
        prompt = self.generator(tokens[:, start:]).to(tokens.dtype)
        self._start = start
        return torch.cat([tokens[:, :start], prompt, tokens[:, start:]], dim=1)

    def positions_before_block(self, context: BlockContext, positions: Tensor) -> Tensor:
        if context.index != self.layer:
            return positions
        start = context.prefix_tokens
        position = self.position.expand(positions.shape[0], -1, -1).to(positions.dtype)
        return torch.cat([positions[:, :start], position, positions[:, start:]], dim=1)

    def after_blocks(self, context: BlockContext, tokens: Tensor) -> tuple[Tensor, Tensor | None]:
        if self._start is None:
            return tokens, None
        start = self._start
        return torch.cat([tokens[:, :start], tokens[:, start + 1 :]], dim=1), tokens[:, start : start + 1]


class PositionedPromptTokens(BlockHook):
    """Deep prompt tokens and their positions: ``tokens[i]`` and ``positions[i]`` ``(n, W)`` enter before block
    ``i`` (inserted before block 0, replacing the slot afterwards, as :class:`PromptTokens` does)."""

    def __init__(self, tokens: Sequence[Tensor], positions: Sequence[Tensor], where: SlotPosition = "append") -> None:
        if len(tokens) != len(positions):
            raise ValueError(f"{len(tokens)} prompt layers but {len(positions)} position layers.")
        self.tokens = PromptTokens(tokens[0], tokens[1:], where)
        self.positions = PromptTokens(positions[0], positions[1:], where)

    def before_block(self, context: BlockContext, tokens: Tensor) -> Tensor:
        return self.tokens.before_block(context, tokens)

    def positions_before_block(self, context: BlockContext, positions: Tensor) -> Tensor:
        return self.positions.before_block(context, positions)

    def after_blocks(self, context: BlockContext, tokens: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.tokens.after_blocks(context, tokens)
