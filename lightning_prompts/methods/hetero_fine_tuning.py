"""Full fine-tuning of a pre-trained heterogeneous GNN: the other baseline HetGPT is compared with.

Every encoder weight trains together with the head on the unprompted graph (the heterogeneous GNN has no dropout
or normalisation, so train and eval mode compute the same). Checkpoints hold the head *and* the fine-tuned
encoder, and load only into the same pre-trained encoder.
"""

from __future__ import annotations

from typing import Any, ClassVar

from lightning_prompts.methods.hetero_linear_probe import HeteroLinearProbe
from lightning_prompts.registry import register_method
from lightning_prompts.utils.distributed import allow_parameters_without_gradient


@register_method(
    family="hetero",
    title="Full fine-tuning (heterogeneous GNN)",
    paper="the pre-train/fine-tune baselines of Ma et al., WWW 2024 (HetGPT)",
    code="none released",
    recipes="hetgpt",
    docs="methods/hetgpt.md",
    example={"target": "paper"},
)
class HeteroFineTuning(HeteroLinearProbe):
    """The encoder and a head, both trained, no prompt (see the module docstring); arguments as
    :class:`~lightning_prompts.methods.HeteroLinearProbe`; groups ``"backbone"`` and ``"head"``
    (``param_group_lr`` can give the encoder a smaller learning rate). Default optimizer: Adam, lr 1e-3."""

    default_optimizer: ClassVar[dict[str, Any]] = {"class_path": "torch.optim.Adam", "init_args": {"lr": 1e-3}}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.backbone.requires_grad_(True)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit":  # the last layer's convolutions into other node types than the target get no gradient
            allow_parameters_without_gradient(self.trainer, type(self).__name__)

    def param_groups(self) -> list[dict[str, Any]]:
        return [
            {"name": "backbone", "params": list(self.backbone.parameters())},
            {"name": "head", "params": list(self.head.parameters())},
        ]
