"""HetGPT: prompt tuning of a frozen heterogeneous GNN for few-shot node classification (Ma, Yan, Zhang, Chen,
Li — "HetGPT: Harnessing the Power of Prompt Tuning in Pre-Trained Heterogeneous Graph Neural Networks", WWW
2024). No official code was released; this is our reading of the paper, with the decisions below pinned by
equation tests (``tests/methods/test_hetgpt.py``).

1. **Heterogeneous feature prompt** (:class:`~lightning_prompts.prompts.hetero.HeteroFeaturePrompt`): every node
   type's input features get ``Σ_k softmax_k(f_k · x_i) f_k`` added, ``K`` learned bases per type.
2. The frozen heterogeneous GNN (:class:`~lightning_prompts.backbones.HeteroGNN`) embeds the prompted graph.
3. **Multi-view neighbourhood aggregation** for the target type: the *type view* attends, node-level, over the
   neighbours of each edge type that points at the target type and, type-level, over those summaries and the
   node's own embedding (its own type's group); the *metapath view* attends, node-level, over each metapath's
   neighbours (e.g. paper–author–paper) and, semantically, over the metapaths
   (:class:`~lightning_prompts.prompts.hetero.NeighbourAttention`,
   :class:`~lightning_prompts.prompts.hetero.SemanticAttention`, HAN's forms). ``z`` is the mean of the two views
   (the type view alone without metapaths). Decision: the paper fuses the views; we average them.
4. **Virtual class prompts**: one token ``c_k`` per class, set at the first training step to the mean ``z`` of
   that class's training nodes, then trained; the logits are ``cos(z_i, c_k) / τ`` and the loss is their
   cross-entropy (the pre-training's contrastive form) plus ``prompt_l2 · Σ ‖f‖²`` over the feature prompts'
   bases.

Only the prompts, the attention modules and the class tokens train; the GNN stays frozen.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_prompts.backbones.hetero_gnn import EdgeType, HeteroGNN
from lightning_prompts.methods.base.hetero import HeteroNodeModule
from lightning_prompts.outputs import PromptOutput
from lightning_prompts.prompts.hetero import HeteroFeaturePrompt, NeighbourAttention, SemanticAttention
from lightning_prompts.registry import register_method


def metapath_edges(data: Any, path: Sequence[EdgeType]) -> Tensor:
    """``(2, E)`` edges from each target-type node to the nodes ``path`` reaches (a product of the relations'
    adjacency matrices; duplicates merged, self-pairs kept as HAN keeps them)."""
    product = None
    with warnings.catch_warnings():  # torch's notes that sparse products are in beta
        warnings.simplefilter("ignore", UserWarning)
        for edge_type in path:
            source, _, target = edge_type
            index = data[tuple(edge_type)].edge_index
            values = torch.ones(index.shape[1], device=index.device, dtype=torch.float32)  # any default dtype
            shape = (data[source].num_nodes, data[target].num_nodes)
            adjacency = torch.sparse_coo_tensor(index, values, shape, check_invariants=False)
            product = adjacency if product is None else torch.sparse.mm(product, adjacency)
        return product.coalesce().indices()


@register_method(
    family="hetero",
    title="HetGPT",
    paper="Ma, Yan, Zhang, Chen, Li, WWW 2024 — HetGPT: Harnessing the Power of Prompt Tuning in Pre-Trained "
    "Heterogeneous Graph Neural Networks",
    code="none released",
    example={"target": "paper", "metapaths": [[["paper", "to", "author"], ["author", "to", "paper"]]], "num_bases": 2},
)
class HetGPT(HeteroNodeModule):
    """HetGPT on a frozen heterogeneous GNN (see the module docstring).

    Args:
        backbone: the frozen :class:`~lightning_prompts.backbones.HeteroGNN`.
        classnames: the target type's classes (linked from the data module).
        target: the node type to classify (ACM: ``paper``, DBLP: ``author``, IMDB: ``movie``).
        metapaths: metapaths from and to the target type, each a list of edge types (ACM: paper–author–paper and
            paper–subject–paper); ``None``: the type view only.
        num_bases: feature-prompt bases per node type.
        temperature: ``τ`` of the cosine logits (0.2).
        prompt_l2: weight of the squared norm of the feature prompts in the loss (1e-4).
        attention_width: width of the semantic attention (128, HAN's).
        **kwargs: see :class:`~lightning_prompts.methods.PromptModule`; groups ``"prompt"`` (feature prompts and
            class tokens) and ``"aggregation"``. Default optimizer: Adam, lr 5e-3.
    """

    def __init__(
        self,
        backbone: HeteroGNN,
        classnames: Sequence[str] | None = None,
        target: str = "paper",
        metapaths: list[list[list[str]]] | None = None,
        num_bases: int = 5,
        temperature: float = 0.2,
        prompt_l2: float = 1e-4,
        attention_width: int = 128,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, classnames, target, **kwargs)
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        self.temperature, self.prompt_l2 = temperature, prompt_l2
        self.relations = [e for e in self.backbone.edge_types if e[2] == target]
        self.metapaths = [[tuple(e) for e in path] for path in metapaths or []]
        for path in self.metapaths:
            chained = all(a[2] == b[0] for a, b in zip(path, path[1:]))
            if not path or path[0][0] != target or path[-1][2] != target or not chained:
                raise ValueError(f"metapath {path} must chain edge types from {target!r} back to {target!r}.")
            unknown = [e for e in path if e not in self.backbone.edge_types]
            if unknown:
                raise ValueError(f"metapath {path} uses edge types {unknown} the encoder does not have.")
        width = self.backbone.hidden_channels
        self.feature_prompt = HeteroFeaturePrompt(self.backbone.in_channels, num_bases)
        self.relation_attention = nn.ModuleList(NeighbourAttention(width) for _ in self.relations)
        self.type_attention = SemanticAttention(width, attention_width)
        self.metapath_attention = nn.ModuleList(NeighbourAttention(width) for _ in self.metapaths)
        self.metapath_semantic = SemanticAttention(width, attention_width) if self.metapaths else None
        self.class_tokens = nn.Parameter(torch.zeros(len(self.classnames), width))
        self.register_buffer("class_tokens_ready", torch.tensor(False))

    def param_groups(self) -> list[dict[str, Any]]:
        aggregation = [*self.relation_attention.parameters(), *self.type_attention.parameters()]
        aggregation += [*self.metapath_attention.parameters()]
        if self.metapath_semantic is not None:
            aggregation += list(self.metapath_semantic.parameters())
        return [
            {"name": "prompt", "params": [*self.feature_prompt.parameters(), self.class_tokens]},
            {"name": "aggregation", "params": aggregation},
        ]

    # -- forward ---------------------------------------------------------------------------------------
    def node_representations(self, data: Any) -> Tensor:
        """``z`` ``(N_target, width)`` of every target-type node (see the module docstring)."""
        self.backbone.check_schema(data)
        hidden = self.backbone.encode_nodes(data.x_dict, data.edge_index_dict, self.feature_prompt.callables())
        own = hidden[self.target]
        relation_views = [
            attention(hidden[edge_type[0]], own, data[edge_type].edge_index)
            for attention, edge_type in zip(self.relation_attention, self.relations)
        ]
        z = self.type_attention([own, *relation_views])
        if self.metapath_semantic is not None:
            paths = [attention(own, own, metapath_edges(data, path))
                     for attention, path in zip(self.metapath_attention, self.metapaths)]  # fmt: skip
            z = (z + self.metapath_semantic(paths)) / 2
        return z

    def logits_of(self, z: Tensor) -> Tensor:
        return F.normalize(z, dim=-1) @ F.normalize(self.class_tokens, dim=-1).T / self.temperature

    def forward(self, data: Any, fields: frozenset[str] = frozenset()) -> PromptOutput:
        z = self.select_targets(data, self.node_representations(data))
        return PromptOutput(logits=self.logits_of(z), pooled_features=z)

    def forward_batch(self, batch: Any, fields: frozenset[str] = frozenset()) -> PromptOutput:
        if self.training and not bool(self.class_tokens_ready):
            self.initialise_class_tokens(batch)
        return self(batch, fields)

    @torch.no_grad()
    def initialise_class_tokens(self, batch: Any) -> None:
        """Each class token starts as the mean ``z`` of the class's training nodes (zero if it has none)."""
        z = self(batch).pooled_features
        labels = self.batch_targets(batch)
        for label in range(len(self.classnames)):
            chosen = z[labels == label]
            self.class_tokens[label] = chosen.mean(dim=0) if len(chosen) else 0.0
        self.class_tokens_ready.fill_(True)

    def task_loss(self, output: PromptOutput, targets: Tensor) -> Tensor:
        penalty = sum(bases.pow(2).sum() for bases in self.feature_prompt.bases.values())
        return F.cross_entropy(output.logits.float(), targets) + self.prompt_l2 * penalty
