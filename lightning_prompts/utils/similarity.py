"""CLIP-style similarity logits kept in fp32 under mixed precision."""

from __future__ import annotations

import torch
from torch import Tensor


def similarity_logits(scale: Tensor | float, image: Tensor, text: Tensor) -> Tensor:
    """``scale · image @ textᵀ`` (L2-normalised features) in fp32, also under bf16 autocast.

    bf16 keeps 8 significant bits: a CLIP logit near 30 rounds in steps of 0.125, coarser than the gaps that
    rank images for OOD detection (MCM, max-logit, energy), pseudolabel confidences or close classes, so many
    tied. The official code runs CLIP in fp16 (steps of 0.016 there) or fp32. One small matmul in fp32 costs
    little beside the encoders; the encoders themselves stay under autocast.
    """
    with torch.autocast(image.device.type, enabled=False):
        return scale * (image.float() @ text.float().transpose(-2, -1))
