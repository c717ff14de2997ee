"""Linear probing of a frozen heterogeneous GNN: the "pre-train, then fit a head" baseline HetGPT is compared with.

The frozen encoder embeds the unprompted graph; a trained linear layer (or an MLP head with ``head_layers`` > 1)
classifies the target type's node embeddings. Only the head trains.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning_prompts.backbones.hetero_gnn import HeteroGNN
from lightning_prompts.methods.base.graph import mlp_head
from lightning_prompts.methods.base.hetero import HeteroNodeModule
from lightning_prompts.outputs import PromptOutput
from lightning_prompts.registry import register_method


@register_method(
    family="hetero",
    title="Linear probe (heterogeneous GNN)",
    paper="the pre-train/fine-tune baselines of Ma et al., WWW 2024 (HetGPT)",
    code="none released",
    recipes="hetgpt",
    docs="methods/hetgpt.md",
    example={"target": "paper"},
)
class HeteroLinearProbe(HeteroNodeModule):
    """A head on the frozen heterogeneous GNN's target-type embeddings (see the module docstring).

    Args:
        backbone, classnames, target: see :class:`~lightning_prompts.methods.base.hetero.HeteroNodeModule`.
        head_layers, head_hidden: the MLP head (1 layer: a linear probe).
        **kwargs: see :class:`~lightning_prompts.methods.PromptModule`; group ``"head"``. Default optimizer: Adam,
            lr 5e-3 (HetGPT's).
    """

    def __init__(
        self,
        backbone: HeteroGNN,
        classnames: Sequence[str] | None = None,
        target: str = "paper",
        head_layers: int = 1,
        head_hidden: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, classnames, target, **kwargs)
        self.head = mlp_head(self.backbone.hidden_channels, len(self.classnames), head_layers, head_hidden)

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"name": "head", "params": list(self.head.parameters())}]

    def forward(self, data: Any, fields: frozenset[str] = frozenset()) -> PromptOutput:
        self.backbone.check_schema(data)
        hidden = self.backbone.encode_nodes(data.x_dict, data.edge_index_dict)
        features = self.select_targets(data, hidden[self.target])
        return PromptOutput(logits=self.head(features), pooled_features=features)

    def forward_batch(self, batch: Any, fields: frozenset[str] = frozenset()) -> PromptOutput:
        return self(batch, fields)
