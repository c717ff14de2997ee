"""GPF and GPF-plus: universal feature prompts for a frozen GNN (Fang, Zhang, Yang, Wang, Chen —
"Universal Prompt Tuning for Graph Neural Networks", NeurIPS 2023; official code:
github.com/LuckyTiger123/GPF).

The prompt acts on the input node features (:mod:`lightning_prompts.prompts.feature_prompt`),
the frozen pre-trained GNN encodes the prompted graph, and a small trained head classifies the
node embeddings (node tasks) or their mean/sum/max pool (graph tasks). Only the prompt and the
head train; the GNN stays in eval mode (the official code leaves dropout 0.5 and BatchNorm
updates active inside the "frozen" GNN).

Deviation: the official code evaluates multi-task molecule benchmarks with masked binary
cross-entropy; this module does single-label classification with cross-entropy (node and graph
classification).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from torch import Tensor, nn

from lightning_prompts.backbones.gnn import GNN, Pooling
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods.base import PromptModule
from lightning_prompts.outputs import PromptOutput
from lightning_prompts.prompts.feature_prompt import GPFPlusPrompt, GPFPrompt


def mlp_head(in_channels: int, num_classes: int, num_layers: int, hidden: int | None) -> nn.Module:
    """``num_layers`` Linear layers with ReLU between them (1 layer: a Linear)."""
    if num_layers < 1:
        raise ValueError(f"head_layers must be >= 1, got {num_layers}.")
    hidden = hidden or in_channels
    layers: list[nn.Module] = []
    width = in_channels
    for _ in range(num_layers - 1):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class GPF(PromptModule):
    """Graph feature prompt tuning (GPF or GPF-plus) with a trained classification head.

    Args:
        backbone: the frozen :class:`~lightning_prompts.backbones.GNN`.
        classnames: the classes (linked from the data module).
        variant: ``"gpf"`` (one shared vector) or ``"gpf-plus"`` (per-node mix of ``num_bases`` bases).
        num_bases: GPF-plus bases (the paper tunes {5, 10, 20}; ProG hard-codes 20).
        task: ``"node"`` or ``"graph"``; must match the data module's ``task_level``.
        pooling: graph readout (``"mean"``, ``"sum"``, ``"max"``).
        head_layers, head_hidden: the MLP head (GPF tunes 1–4 layers per dataset).
        **kwargs: ``optimizer``, ``lr_scheduler``, ``lr_scheduler_interval``, ``param_group_lr``; see
            :class:`~lightning_prompts.methods.PromptModule`; groups ``"prompt"`` and ``"head"``.
            Default optimizer: Adam, lr 1e-3, no weight decay (GPF's scripts).
    """

    output_fields: ClassVar[frozenset[str]] = frozenset({"logits", "pooled_features", "node_embeddings"})
    default_optimizer: ClassVar[dict[str, Any]] = {"class_path": "torch.optim.Adam", "init_args": {"lr": 1e-3}}

    def __init__(
        self,
        backbone: GNN,
        classnames: Sequence[str] | None = None,
        variant: Literal["gpf", "gpf-plus"] = "gpf",
        num_bases: int = 20,
        task: Literal["node", "graph"] = "graph",
        pooling: Pooling = "mean",
        head_layers: int = 1,
        head_hidden: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, classnames, **kwargs)
        if not self.classnames:
            raise ValueError("GPF needs classnames to size its head (the CLI links them from the data module).")
        if variant not in ("gpf", "gpf-plus"):
            raise ValueError(f"variant must be 'gpf' or 'gpf-plus', got {variant!r}.")
        if task not in ("node", "graph"):
            raise ValueError(f"task must be 'node' or 'graph', got {task!r}.")
        gnn: GNN = self.backbone
        self.task, self.pooling = task, pooling
        self.prompt = GPFPrompt(gnn.in_channels) if variant == "gpf" else GPFPlusPrompt(gnn.in_channels, num_bases)
        self.head = mlp_head(gnn.hidden_channels, len(self.classnames), head_layers, head_hidden)

    def check_ready(self, stage: str, callbacks: Any, datamodule: Any | None) -> None:
        super().check_ready(stage, callbacks, datamodule)
        level = getattr(datamodule, "task_level", None)
        if level is not None and level != self.task:
            raise ConfigurationError(
                f"GPF is configured for task={self.task!r} but the data module provides {level}-level data."
            )

    def param_groups(self) -> list[dict[str, Any]]:
        return [
            {"name": "prompt", "params": list(self.prompt.parameters())},
            {"name": "head", "params": list(self.head.parameters())},
        ]

    def forward(self, data: Any, fields: frozenset[str] = frozenset()) -> PromptOutput:
        """Logits for the target nodes (``data.target_mask``, else all) or for every graph of the batch."""
        nodes = self.backbone.encode_nodes(self.prompt(data.x), data.edge_index)
        if self.task == "graph":
            features = self.backbone.pool(nodes, getattr(data, "batch", None), self.pooling)
        else:
            mask = getattr(data, "target_mask", None)
            features = nodes if mask is None else nodes[mask]
        return PromptOutput(logits=self.head(features), pooled_features=features, node_embeddings=nodes)

    def forward_batch(self, batch: Any, fields: frozenset[str] = frozenset()) -> PromptOutput:
        return self(batch, fields)

    def batch_targets(self, batch: Any) -> Tensor:
        labels = batch.y.view(-1)
        mask = getattr(batch, "target_mask", None)
        return labels[mask] if self.task == "node" and mask is not None else labels
