"""APT: Approximated Prompt Tuning (Wu, Zhou, Huang, Dai, Ji — "Approximated Prompt Tuning for
Vision-Language Pre-trained Models"; official code: github.com/DoubtedSteam/APT) on a frozen ViT.

Every block's attention output gets an aggregation over a per-layer bank of prompts instead of the
prompt tokens themselves (:mod:`lightning_prompts.prompts.approximated`), so the token count — and the
attention cost — stays that of the frozen model. A linear head reads the pooled feature timm's head
would read. Only the banks, their low-rank updates, the per-layer scales and the head train.

The official code covers ViLT and METER (vision-language Transformers for VQA and retrieval); its CLIP
scripts are not released. The module is the official one; the method wraps it for image classification
on any timm ViT. Default optimiser AdamW lr 1e-3, weight decay 1e-4: our choice for this setting.
``benchmarks/apt_cost.py`` measures its training cost against VPT-deep with as many prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from torch import Tensor, nn

from lightning_prompts.backbones.hooks import BlockHook
from lightning_prompts.backbones.timm_vit import TimmViT
from lightning_prompts.methods.base import ViTPromptModule
from lightning_prompts.prompts.approximated import ApproximatedPrompt, ApproximatedPromptHook
from lightning_prompts.registry import register_method


@register_method(
    family="vit",
    paper="Wu, Zhou, Huang, Dai, Ji (Xiamen University) — Approximated Prompt Tuning for Vision-Language Pre-trained "
    "Models",
    code="DoubtedSteam/APT",
    example={"num_tokens": 6, "rank": 2},
)
class APT(ViTPromptModule):
    """Approximated prompt tuning of a frozen timm ViT, with a linear head (see the module docstring).

    Args:
        backbone: the frozen :class:`~lightning_prompts.backbones.TimmViT`.
        classnames: the classes (their number sizes the head).
        num_tokens: prompts per layer's bank (50, the official ViT's; METER's BERT side uses 200).
        rank: rank of each bank's update (4).
        layers: the blocks that get a bank (default: all).
        **kwargs: see :class:`~lightning_prompts.methods.PromptModule`; groups ``"prompt"`` and ``"head"``.
    """

    default_optimizer: ClassVar[dict[str, Any]] = {
        "class_path": "torch.optim.AdamW",
        "init_args": {"lr": 1e-3, "weight_decay": 1e-4},
    }

    def __init__(
        self,
        backbone: TimmViT,
        classnames: Sequence[str] | None = None,
        num_tokens: int = 50,
        rank: int = 4,
        layers: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, classnames, **kwargs)
        depth, width = self.backbone.depth, self.backbone.width
        self.layers = list(range(depth)) if layers is None else sorted(set(layers))
        if not self.layers or not all(0 <= layer < depth for layer in self.layers):
            raise ValueError(f"layers must be block indices in [0, {depth}), got {layers}.")
        self.prompt = nn.ModuleList(ApproximatedPrompt(width, num_tokens, rank) for _ in self.layers)
        self.head = nn.Linear(width, len(self.classnames))

    def param_groups(self) -> list[dict[str, Any]]:
        return [
            {"name": "prompt", "params": list(self.prompt.parameters())},
            {"name": "head", "params": list(self.head.parameters())},
        ]

    def block_hooks(self) -> BlockHook:
        return ApproximatedPromptHook(list(self.prompt), self.layers)

    def classify(self, pooled: Tensor) -> Tensor:
        return self.head(pooled)
