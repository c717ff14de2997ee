"""MaPLe's coupled vision-language prompts (Khattak et al., "MaPLe: Multi-modal Prompt Learning",
CVPR 2023; official code: github.com/muzairkhattak/multimodal-prompt-learning).

* **Text**: CoOp-style context vectors for the first layer (:class:`ClassContextPrompt`), and for
  each of the layers ``1..depth-1`` a fresh set of ``n_ctx`` vectors that *replaces* the context slot
  (positions ``1..n_ctx``) before the layer — never accumulated, no positional embedding.
* **Vision**: no free parameters. The visual prompts are linear projections of the text prompts of
  the same level (text → vision coupling): ``proj(ctx)`` is appended after the patch tokens before
  ``ln_pre``, and ``proj_i(deep_text_i)`` replaces that slot before layer ``i``.

As in the official code, the per-level projections start as copies of one Linear, the deep text
prompts are initialised N(0, 0.02²), and with ``ctx_init`` and ``n_ctx`` smaller than the phrase
the rest of the phrase stays fixed ("a photo" learned, "of a" fixed for ``n_ctx=2``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_prompts.backbones.hooks import PromptTokens
from lightning_prompts.backbones.vision_language import VisionLanguageBackbone
from lightning_prompts.prompts.text_context import ClassContextPrompt


class CoupledPrompts(nn.Module):
    """Deep text prompts and the visual prompts projected from them.

    Args:
        backbone: the CLIP-family backbone (its ViT width sizes the projections).
        classnames: the classes.
        n_ctx: context vectors per level (MaPLe: 2).
        ctx_init: phrase initialising the first-level context (MaPLe: "a photo of a").
        depth: number of prompted layers, the first included (MaPLe: 9; 1 is shallow).
        vision: also prompt the image encoder (needs a ViT image tower). Without it the text branch
            alone is deep-prompted ("deep language prompting").
    """

    def __init__(
        self,
        backbone: VisionLanguageBackbone,
        classnames: Sequence[str],
        n_ctx: int = 2,
        ctx_init: str | None = "a photo of a",
        depth: int = 9,
        vision: bool = True,
    ) -> None:
        super().__init__()
        if depth < 1 or depth > backbone.text_layers:
            raise ValueError(f"depth must be in 1..{backbone.text_layers} (the text layers), got {depth}.")
        if vision and not backbone.is_vit:
            raise NotImplementedError(
                f"MaPLe's visual prompts need a ViT image tower; {backbone.name} has a CNN. Set vision "
                f"prompts off (vision_prompts: false) for the text branch alone."
            )
        if vision and depth > backbone.vision_layers:
            raise ValueError(f"depth {depth} exceeds the {backbone.vision_layers} vision layers.")
        self.text = ClassContextPrompt(backbone, classnames, n_ctx=n_ctx, ctx_init=ctx_init)
        width = backbone.text_width
        n_ctx = self.text.n_ctx
        self.deep_text = nn.ParameterList(
            [nn.Parameter(torch.empty(n_ctx, width).normal_(std=0.02)) for _ in range(depth - 1)]
        )
        self.vision = vision
        if vision:
            self.projection = nn.Linear(width, backbone.vision_width)
            level = nn.Linear(width, backbone.vision_width)
            self.deep_projections = nn.ModuleList([copy.deepcopy(level) for _ in range(depth - 1)])

    @property
    def n_ctx(self) -> int:
        return self.text.n_ctx

    def set_classnames(self, classnames: Sequence[str], backbone: VisionLanguageBackbone) -> None:
        self.text.set_classnames(classnames, backbone)

    def text_prompts(self) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Class prompt embeddings ``(C, L, d)``, their EOT positions and the deep text prompts."""
        prompts, eot = self.text()
        return prompts, eot, list(self.deep_text)

    def vision_prompts(self) -> tuple[Tensor | None, list[Tensor]]:
        """First-layer visual prompts ``(n_ctx, W)`` and the deep ones, projected from the text side."""
        if not self.vision:
            return None, []
        first = self.projection(self.text.ctx)
        return first, [projection(prompt) for projection, prompt in zip(self.deep_projections, self.deep_text)]

    def text_hooks(self) -> PromptTokens | None:
        """The deep text prompts as a block hook: positions ``1..n_ctx`` replaced before layers ``1..depth-1``."""
        return PromptTokens(None, list(self.deep_text), 1) if len(self.deep_text) else None

    def vision_hooks(self) -> PromptTokens | None:
        """The projected visual prompts as a block hook: appended after the patch tokens before ``ln_pre``
        and replacing that slot before layers ``1..depth-1`` (``None`` without vision prompts)."""
        first, deep = self.vision_prompts()
        return PromptTokens(first, deep, "append") if first is not None else None
