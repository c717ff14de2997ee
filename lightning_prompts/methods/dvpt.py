"""DVPT: Dynamic Visual Prompt Tuning (He et al., "Dynamic Visual Prompt Tuning for Parameter Efficient
Transfer Learning", arXiv 2307.09787; Neural Networks 2025). No official code is published.

A shared bottleneck with learnable queries turns a frozen ViT's own token features into per-image
prompts (:mod:`lightning_prompts.prompts.dynamic_query`): ``Z = GELU(X W_down)``,
``O = softmax(Q Zᵀ/√r) Z``, ``P = O W_up``, one module for all layers. Two merges, chosen by ``merge``:

* ``"tokens"`` (default): the prompts of each block's input join it after the class token, replacing the
  previous block's (an instance-conditioned VPT-deep); a linear head reads the class token;
* ``"side"``: a side branch refines the queries layer by layer over the untouched frozen ViT and a linear
  head reads ``[CLS ‖ mean of the prompts]``; nothing backpropagates through the backbone.

Defaults: ``bottleneck=256`` and ``num_queries=10`` put the module at about 0.5 % of ViT-B/16's
parameters, the paper's budget; GELU, no separate key/value projections and the zero-initialised
up-projection (every image starts from the same prompts) are our choices, pinned by equation tests.
The paper's medical tasks are graded (diabetic-retinopathy grades), scored by quadratic-weighted
Cohen's kappa: :class:`~lightning_prompts.evaluation.GradedClassificationEvaluator`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from lightning_prompts.backbones.hooks import BlockHook
from lightning_prompts.backbones.timm_vit import TimmViT
from lightning_prompts.methods.base import ViTPromptModule
from lightning_prompts.prompts.dynamic_query import DynamicPromptTokens, DynamicQueryPrompt, SideQueryBranch
from lightning_prompts.registry import register_method


@register_method(
    family="vit",
    paper="He, Xiong, Zhang, Fu, Fang, Zhou, Wang, arXiv 2307.09787 — Dynamic Visual Prompt Tuning for Parameter "
    "Efficient Transfer Learning",
    example={"bottleneck": 8, "num_queries": 2},
)
class DVPT(ViTPromptModule):
    """Dynamic visual prompt tuning of a frozen timm ViT (see the module docstring).

    Args:
        backbone: the frozen :class:`~lightning_prompts.backbones.TimmViT`.
        classnames: the classes (their number sizes the head).
        bottleneck: ``r``, the shared bottleneck width.
        num_queries: ``M``, prompts per image.
        merge: ``"tokens"`` or ``"side"``.
        **kwargs: see :class:`~lightning_prompts.methods.PromptModule`; groups ``"prompt"`` and ``"head"``.
            Default optimizer: AdamW, lr 1e-3, weight decay 1e-4.
    """

    default_optimizer: ClassVar[dict[str, Any]] = {
        "class_path": "torch.optim.AdamW",
        "init_args": {"lr": 1e-3, "weight_decay": 1e-4},
    }

    def __init__(
        self,
        backbone: TimmViT,
        classnames: Sequence[str] | None = None,
        bottleneck: int = 256,
        num_queries: int = 10,
        merge: Literal["tokens", "side"] = "tokens",
        **kwargs: Any,
    ) -> None:
        if merge not in ("tokens", "side"):
            raise ValueError(f"merge must be 'tokens' or 'side', got {merge!r}.")
        super().__init__(backbone, classnames, **kwargs)
        width = self.backbone.width
        self.prompt = DynamicQueryPrompt(width, bottleneck, num_queries)
        self.head = nn.Linear(width if merge == "tokens" else 2 * width, len(self.classnames))
        self.merge = merge
        self._side: SideQueryBranch | None = None

    def param_groups(self) -> list[dict[str, Any]]:
        return [
            {"name": "prompt", "params": list(self.prompt.parameters())},
            {"name": "head", "params": list(self.head.parameters())},
        ]

    def block_hooks(self) -> BlockHook:
        if self.merge == "tokens":
            return DynamicPromptTokens(self.prompt)
        self._side = SideQueryBranch(self.prompt)
        return self._side

    def classify(self, pooled: Tensor) -> Tensor:
        if self.merge == "tokens":
            return self.head(pooled)
        assert self._side is not None, "classify follows the forward pass that ran the side branch"
        prompts = self._side.prompts().mean(dim=1)
        return self.head(torch.cat([pooled, prompts.to(pooled.dtype)], dim=-1))
