"""GPF and GPF-plus: universal feature prompts for a frozen GNN (Fang, Zhang, Yang, Wang, Chen —
"Universal Prompt Tuning for Graph Neural Networks", NeurIPS 2023; official code:
github.com/LuckyTiger123/GPF).

The prompt acts on the input node features (:mod:`lightning_prompts.prompts.feature_prompt`),
the frozen pre-trained GNN encodes the prompted graph, and a small trained head classifies the
node embeddings (node tasks) or their mean/sum/max pool (graph tasks). Only the prompt and the
head train; the GNN stays in eval mode (the official code leaves dropout 0.5 and BatchNorm
updates active inside the "frozen" GNN).

Both of the paper's settings run: molecules (MoleculeNet through
:class:`~lightning_prompts.data.molecules.MoleculeNetDataModule`, the released Pretrain-GNNs
checkpoints through :class:`~lightning_prompts.backbones.molecule_gin.MoleculeGIN`, masked binary
cross-entropy and mean ROC-AUC over tasks, the prompt added to the atom embeddings before layer 0 as
the official code does), and node or graph classification with cross-entropy on any PyG dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from torch import nn

from lightning_prompts.backbones.gnn import GraphBackbone, Pooling
from lightning_prompts.backbones.hooks import BlockHook
from lightning_prompts.methods.base import GraphPromptModule
from lightning_prompts.prompts.feature_prompt import GPFPlusPrompt, GPFPrompt
from lightning_prompts.registry import register_method


@register_method(
    family="graph",
    title="GPF and GPF-plus",
    paper="Fang, Zhang, Yang, Wang, Chen, NeurIPS 2023 — Universal Prompt Tuning for Graph Neural Networks",
    code="LuckyTiger123/GPF",
)
class GPF(GraphPromptModule):
    """Graph feature prompt tuning (GPF or GPF-plus) with a trained classification head.

    Args:
        backbone: the frozen GNN (:class:`~lightning_prompts.backbones.gnn.GNN` or
            :class:`~lightning_prompts.backbones.molecule_gin.MoleculeGIN`).
        classnames: the classes (linked from the data module).
        variant: ``"gpf"`` (one shared vector) or ``"gpf-plus"`` (per-node mix of ``num_bases`` bases).
        num_bases: GPF-plus bases (the paper tunes {5, 10, 20}; ProG hard-codes 20).
        task: ``"node"`` or ``"graph"``; must match the data module's ``task_level``.
        pooling: graph readout (``"mean"``, ``"sum"``, ``"max"``).
        head_layers, head_hidden: the MLP head (GPF tunes 1–4 layers per dataset).
        objective: ``"cross_entropy"`` (classes) or ``"masked_bce"`` (MoleculeNet's binary tasks).
        **kwargs: ``optimizer``, ``lr_scheduler``, ``lr_scheduler_interval``, ``param_group_lr``; see
            :class:`~lightning_prompts.methods.PromptModule`; groups ``"prompt"`` and ``"head"``.
            Default optimizer: Adam, lr 1e-3, no weight decay (GPF's scripts).
    """

    default_optimizer: ClassVar[dict[str, Any]] = {"class_path": "torch.optim.Adam", "init_args": {"lr": 1e-3}}

    def __init__(
        self,
        backbone: GraphBackbone,
        classnames: Sequence[str] | None = None,
        variant: Literal["gpf", "gpf-plus"] = "gpf",
        num_bases: int = 20,
        task: Literal["node", "graph"] = "graph",
        pooling: Pooling = "mean",
        head_layers: int = 1,
        head_hidden: int | None = None,
        objective: Literal["cross_entropy", "masked_bce"] = "cross_entropy",
        **kwargs: Any,
    ) -> None:
        if variant not in ("gpf", "gpf-plus"):
            raise ValueError(f"variant must be 'gpf' or 'gpf-plus', got {variant!r}.")
        super().__init__(backbone, classnames, task, pooling, head_layers, head_hidden, objective, **kwargs)

    def build_prompt(self) -> nn.Module:
        width = self.backbone.in_channels
        if self.hparams["variant"] == "gpf":
            return GPFPrompt(width)
        return GPFPlusPrompt(width, self.hparams["num_bases"])

    def block_hooks(self) -> BlockHook:
        return self.prompt.hooks()
