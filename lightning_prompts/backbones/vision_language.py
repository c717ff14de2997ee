"""The seams every vision-language (CLIP-family) backbone exposes, so CLIP methods run on any of them.

:class:`~lightning_prompts.backbones.OpenCLIP` (open_clip models) and
:class:`~lightning_prompts.backbones.StandInCLIP` (the offline two-tower stand-in) implement them;
methods such as CoOp and zero-shot CLIP type their backbone as :class:`VisionLanguageBackbone`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_prompts.backbones.base import Backbone
from lightning_prompts.backbones.hooks import BlockHook


@dataclass
class GradCAMTarget:
    """Where Grad-CAM reads a backbone's image encoder.

    Attributes:
        module: the module whose output holds the spatial activations (hooked during a forward).
        tokens: maps that output to ``(B, N, C)`` activations in row-major grid order and the grid
            ``(h, w)`` with ``N = h·w``.
    """

    module: nn.Module
    tokens: Callable[[Tensor], tuple[Tensor, tuple[int, int]]]


@dataclass
class ImageEncoding:
    """Result of ``encode_image``.

    Attributes:
        features: ``(B, D)`` global image feature in the joint space (not normalised).
        patch_tokens: ``(B, N, W)`` last-layer spatial tokens (ViT patch tokens after the final norm,
            prompt and class tokens removed; a CNN's last feature map), or ``None``.
    """

    features: Tensor
    patch_tokens: Tensor | None = None


class VisionLanguageBackbone(Backbone):
    """A frozen image-text model: text encoded from token embeddings, images with optional prompts.

    Text: :meth:`tokenize` (ids of fixed length ``context_length``; raises instead of truncating),
    :meth:`token_count`, :meth:`embed_tokens`, :meth:`eot_positions` (where each sequence's feature
    is read) and :meth:`encode_text_embeddings` (from embeddings, with deep prompts replacing a slot
    before layers ``1..k``). Images: :meth:`encode_image`. Both land in a joint space of
    ``embed_dim`` where ``logit_scale · cos`` scores image-text pairs.
    """

    family = "clip"

    # -- properties every implementation provides ------------------------------------------------
    context_length: int
    text_width: int
    embed_dim: int
    text_layers: int
    is_vit: bool
    image_size: int
    vision_width: int  # ViT towers only: the width of a visual prompt token
    vision_layers: int  # ViT towers only
    logit_scale: Tensor
    truncates_text: bool

    def token_count(self, text: str) -> int:
        """Tokens of ``text`` including the start and end tokens."""
        raise NotImplementedError

    def tokenize(self, texts: Sequence[str], what: str = "text") -> Tensor:
        """``(N, context_length)`` token ids; :class:`~lightning_prompts.errors.ContextLengthError` if too long."""
        raise NotImplementedError

    def embed_tokens(self, token_ids: Tensor) -> Tensor:
        """Token embeddings ``(N, L, text_width)`` (what learned context vectors replace)."""
        raise NotImplementedError

    def eot_positions(self, token_ids: Tensor) -> Tensor:
        """``(N,)`` index of the end-of-text token of each sequence."""
        raise NotImplementedError

    def encode_text_embeddings(
        self,
        embeddings: Tensor,
        eot_positions: Tensor,
        deep_prompts: Sequence[Tensor] | None = None,
        deep_prompt_start: int = 1,
        truncate: bool = True,
        hooks: BlockHook | None = None,
    ) -> Tensor:
        """Text features ``(N, embed_dim)`` (not normalised) from token embeddings; ``hooks`` plugs prompt
        modules into the text transformer's blocks."""
        raise NotImplementedError

    def encode_image(
        self,
        images: Tensor,
        prompts: Tensor | None = None,
        deep_prompts: Sequence[Tensor] | None = None,
        location: str = "append",
        hooks: BlockHook | None = None,
        patch_tokens: bool = True,
    ) -> ImageEncoding:
        """Image features, optionally with visual prompt tokens or a block hook (ViT towers); ``patch_tokens=False``:
        the caller reads ``features`` only, and a backbone may then skip computing the patch tokens."""
        raise NotImplementedError

    def local_features(self, encoding: ImageEncoding) -> Tensor:
        """``(B, N, embed_dim)``: an encoding's patch tokens in the joint image-text space (not normalised),
        so each region can be scored against text features (GL-MCM's and Local-Prompt's local features)."""
        raise NotImplementedError(f"{type(self).__name__} does not map patch tokens into the joint space.")

    def gradcam_target(self) -> GradCAMTarget:
        """The activations Grad-CAM weighs (the last block's input tokens of a ViT, a CNN's last feature map)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose Grad-CAM activations.")

    def encode_text(self, texts: Sequence[str], normalize: bool = False) -> Tensor:
        """Features of plain strings (hand-written prompts)."""
        ids = self.tokenize(texts)
        features = self.encode_text_embeddings(self.embed_tokens(ids), self.eot_positions(ids))
        return F.normalize(features, dim=-1) if normalize else features
