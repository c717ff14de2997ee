"""``GraphPromptModule``: what every prompt method on a frozen GNN shares (GPF, …).

A graph method plugs its prompt into the GNN's layers through a block hook
(:meth:`GraphPromptModule.block_hooks`; GPF edits the node features entering layer 0), and a small
trained head classifies the node embeddings (node tasks) or their mean/sum/max pool (graph tasks,
ego-graphs included; ``center_node`` concatenates the centre node's embedding to the pool, the readout of
Pretrain-GNNs' and GPF's biology models). Two objectives: cross-entropy over classes, and masked binary cross-entropy
over tasks with missing labels (``objective="masked_bce"``, MoleculeNet: one sigmoid output per task,
the loss averaged over the labelled entries as in Pretrain-GNNs and GPF). The base checks, before
training, that the task level, the label kind and the node-feature width of the data match the
method and the backbone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_prompts.backbones.gnn import GraphBackbone, Pooling
from lightning_prompts.backbones.hooks import BlockHook
from lightning_prompts.data.protocols import GraphTask, provided
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods.base.module import PromptModule
from lightning_prompts.outputs import PromptOutput
from lightning_prompts.utils.distributed import global_batch_mean


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


class GraphPromptModule(PromptModule):
    """Base of graph prompt methods (see the module docstring).

    Args:
        backbone: the frozen GNN (:class:`~lightning_prompts.backbones.gnn.GNN`, or
            :class:`~lightning_prompts.backbones.molecule_gin.MoleculeGIN` for molecules).
        classnames: the classes, or the binary tasks under ``masked_bce`` (linked from the data module).
        task: ``"node"`` or ``"graph"``; must match the data module's ``task_level``.
        pooling: graph readout (``"mean"``, ``"sum"``, ``"max"``).
        head_layers, head_hidden: the MLP head.
        objective: ``"cross_entropy"`` (one class per example) or ``"masked_bce"`` (multi-task binary
            labels with ``nan`` for missing ones; needs data that declares ``binary_tasks``).
        center_node: graph tasks: read each graph as ``[pool ‖ centre node's embedding]`` (the official bio
            ``GNN_graphpred``: mean pool and ``center_node_idx``; the head is twice as wide); needs graphs that mark
            their centre (``center_index``: the bio dataset's ego-networks, a node task's ego-graphs).
        **kwargs: see :class:`~lightning_prompts.methods.PromptModule`; groups ``"prompt"`` and ``"head"``.
    """

    produced_fields: ClassVar[frozenset[str]] = frozenset({"logits", "pooled_features", "node_embeddings"})

    def __init__(
        self,
        backbone: GraphBackbone,
        classnames: Sequence[str] | None = None,
        task: Literal["node", "graph"] = "graph",
        pooling: Pooling = "mean",
        head_layers: int = 1,
        head_hidden: int | None = None,
        objective: Literal["cross_entropy", "masked_bce"] = "cross_entropy",
        center_node: bool = False,
        **kwargs: Any,
    ) -> None:
        if objective not in ("cross_entropy", "masked_bce"):
            raise ValueError(f"objective must be 'cross_entropy' or 'masked_bce', got {objective!r}.")
        super().__init__(backbone, classnames, **kwargs)
        self.objective = objective
        if not self.classnames:
            raise ValueError(f"{type(self).__name__} needs classnames to size its head (the CLI links them).")
        if task not in ("node", "graph"):
            raise ValueError(f"task must be 'node' or 'graph', got {task!r}.")
        if center_node and task != "graph":
            raise ValueError("center_node reads a graph's centre next to its pool: it needs task='graph'.")
        self.task, self.pooling, self.center_node = task, pooling, center_node
        self.prompt = self.build_prompt()  # before the head: the prompt's initialisation draws first
        width = self.backbone.hidden_channels * (2 if center_node else 1)
        self.head = mlp_head(width, len(self.classnames), head_layers, head_hidden)

    # -- what a graph method implements --------------------------------------------------------------
    def build_prompt(self) -> nn.Module | None:
        """The prompt module (its arguments are in ``self.hparams``); ``None``: no prompt (linear probe)."""
        return None

    def block_hooks(self) -> BlockHook | None:
        """The prompt of this forward pass as a block hook on the GNN's layers."""
        return None

    def prompt_parameters(self) -> list[nn.Parameter]:
        """The prompt's trainable parameters (the ``"prompt"`` group)."""
        return list(self.prompt.parameters()) if self.prompt is not None else []

    # -- checks ---------------------------------------------------------------------------------------
    def check_ready(self, stage: str, callbacks: Any, datamodule: Any | None) -> None:
        super().check_ready(stage, callbacks, datamodule)
        data = provided(datamodule, GraphTask)
        if data is None:
            return
        if data.task_level != self.task:
            raise ConfigurationError(
                f"{type(self).__name__} is configured for task={self.task!r} but the data module provides "
                f"{data.task_level}-level data."
            )
        binary = bool(getattr(datamodule, "binary_tasks", False))
        if binary != (self.objective == "masked_bce"):
            wanted = "masked_bce" if binary else "cross_entropy"
            raise ConfigurationError(
                f"{type(self).__name__} has objective={self.objective!r} but the data module provides "
                f"{'multi-task binary' if binary else 'single-label class'} labels; set objective: {wanted}."
            )
        if self.center_node and not getattr(datamodule, "center_nodes", False):
            raise ConfigurationError(
                f"{type(self).__name__} has center_node: true but the graphs of {type(datamodule).__name__} mark no "
                f"centre node (BioDataModule's ego-networks and a node task's ego-graphs do)."
            )
        width = data.num_features
        if width != self.backbone.input_features:
            raise ConfigurationError(
                f"the graphs have {width} node features but the GNN {self.backbone.name} expects "
                f"{self.backbone.input_features}; use data with the pre-training features or another encoder."
            )

    def param_groups(self) -> list[dict[str, Any]]:
        return [
            {"name": "prompt", "params": list(self.prompt_parameters())},
            {"name": "head", "params": list(self.head.parameters())},
        ]

    # -- forward -------------------------------------------------------------------------------------
    def forward(self, data: Any, fields: frozenset[str] = frozenset()) -> PromptOutput:
        """Logits for the target nodes (``data.target_mask``, else all) or for every graph of the batch."""
        edge_attr = getattr(data, "edge_attr", None)
        nodes = self.backbone.encode_nodes(data.x, data.edge_index, hooks=self.block_hooks(), edge_attr=edge_attr)
        if self.task == "graph":
            features = self.graph_features(data, nodes)
        else:
            mask = getattr(data, "target_mask", None)
            features = nodes if mask is None else nodes[mask]
        return PromptOutput(logits=self.head(features), pooled_features=features, node_embeddings=nodes)

    def graph_features(self, data: Any, nodes: Tensor) -> Tensor:
        """What the head reads of each graph of a batch: the pool of its node embeddings, and with ``center_node``
        its centre's embedding after it."""
        features = self.backbone.pool(nodes, getattr(data, "batch", None), self.pooling)
        if self.center_node:  # PyG's batching offsets each graph's center_index to its nodes in the batch
            features = torch.cat([features, nodes[data.center_index.view(-1)]], dim=1)
        return features

    def forward_batch(self, batch: Any, fields: frozenset[str] = frozenset()) -> PromptOutput:
        return self(batch, fields)

    def batch_targets(self, batch: Any) -> Tensor:
        if self.objective == "masked_bce":  # (graphs, tasks), nan where a label is missing
            return batch.y.view(-1, len(self.classnames)).float()
        labels = batch.y.view(-1)
        mask = getattr(batch, "target_mask", None)
        return labels[mask] if self.task == "node" and mask is not None else labels

    def task_loss(self, output: PromptOutput, targets: Tensor) -> Tensor:
        if self.objective == "cross_entropy":
            return super().task_loss(output, targets)
        return masked_binary_cross_entropy(output.logits, targets)


def masked_binary_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy with logits averaged over the labelled entries (``nan`` targets are missing); under DDP
    over the labelled entries of the global batch (:func:`~lightning_prompts.utils.distributed.global_batch_mean`)."""
    labelled = ~torch.isnan(targets)
    losses = F.binary_cross_entropy_with_logits(logits.float(), torch.nan_to_num(targets.float()), reduction="none")
    return global_batch_mean(torch.where(labelled, losses, torch.zeros_like(losses)).sum(), labelled.sum())
