"""Linear probing of a frozen GNN: the baseline graph prompts must beat (GPF's "linear probe" rows).

The frozen pre-trained GNN encodes the unprompted graph; a trained linear layer (or an MLP head with
``head_layers`` > 1) classifies the node embeddings (node tasks) or their pooled graph embedding. Only
the head trains.
"""

from __future__ import annotations

from lightning_prompts.methods.base import GraphPromptModule
from lightning_prompts.registry import register_method


@register_method(
    family="graph",
    title="Linear probe (GNN)",
    paper="the linear-probing baseline of Fang et al., NeurIPS 2023 (GPF)",
    code="LuckyTiger123/GPF",
    recipes="gpf",
    docs="methods/gpf.md",
)
class GraphLinearProbe(GraphPromptModule):
    """A head on the frozen GNN's embeddings, no prompt (see the module docstring); arguments as
    :class:`~lightning_prompts.methods.base.GraphPromptModule` (group ``"head"``)."""

    def param_groups(self) -> list[dict]:
        return [{"name": "head", "params": list(self.head.parameters())}]
