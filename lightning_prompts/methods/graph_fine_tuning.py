"""Full fine-tuning of a pre-trained GNN: the other baseline graph prompts are compared with (GPF's "fine-tuning"
rows, RELIEF's tables).

Every GNN weight trains together with the head on the unprompted graph. The GNN's BatchNorm keeps its
pre-training statistics (our backbones stay in eval mode, so dropout is off and the running statistics are
not updated); the official scripts fine-tune in train mode. Checkpoints and exported files hold the head *and*
the fine-tuned GNN weights, and load only into the same pre-trained GNN.
"""

from __future__ import annotations

from typing import Any, ClassVar

from lightning_prompts.methods.base import GraphPromptModule
from lightning_prompts.registry import register_method


@register_method(
    family="graph",
    title="Full fine-tuning (GNN)",
    paper="the fine-tuning baseline of Fang et al., NeurIPS 2023 (GPF) and of Hu et al., ICLR 2020 (Pretrain-GNNs)",
    code="snap-stanford/pretrain-gnns",
    recipes="gpf",
    docs="methods/gpf.md",
)
class GraphFineTuning(GraphPromptModule):
    """The GNN and a head, both trained, no prompt (see the module docstring); arguments as
    :class:`~lightning_prompts.methods.base.GraphPromptModule`; groups ``"backbone"`` and ``"head"``
    (``param_group_lr`` can give the GNN a smaller learning rate). Default optimizer: Adam, lr 1e-3
    (Pretrain-GNNs' fine-tuning)."""

    default_optimizer: ClassVar[dict[str, Any]] = {"class_path": "torch.optim.Adam", "init_args": {"lr": 1e-3}}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.backbone.requires_grad_(True)

    def param_groups(self) -> list[dict]:
        return [
            {"name": "backbone", "params": list(self.backbone.parameters())},
            {"name": "head", "params": list(self.head.parameters())},
        ]
