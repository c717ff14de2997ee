"""Context prediction: pre-training of the molecule GIN by telling a node's neighbourhood from other molecules'
context rings (Hu, Liu, Gomes, Zitnik, Liang, Pande, Leskovec — "Strategies for Pre-training Graph Neural
Networks", ICLR 2020; official code snap-stanford/pretrain-gnns, ``chem/pretrain_contextpred.py`` and
``chem/util.py``'s ``ExtractSubstructureContextPair``), the strategy behind the ``contextpred.pth`` checkpoint
GPF and RELIEF prompt.

Per molecule, a root atom is drawn; the **substructure** is the subgraph of atoms within ``k`` = ``num_layers``
hops (5), encoded by the GIN being pre-trained, whose embedding of the root is the substructure's representation;
the **context** is the subgraph of atoms between ``l1 = k − 1`` and ``l2 = l1 + context_size`` hops (``l1 < d ≤ l2``:
4 < d ≤ 7), encoded by a second, shallower GIN (``context_size`` layers, 3), and its **anchors** are the context
atoms that are also in the substructure (d = 5). ``cbow``: the context representation is the mean of the anchors'
embeddings; the positive score is its dot product with the root's, the negatives pair each root with the context
of the molecule ``i + 1 … i + neg_samples`` places later in the batch (a cyclic shift); the loss is
``BCE(pos, 1) + neg_samples · BCE(neg, 0)`` with logits (computed in float64, as the official code).
``skipgram`` scores each anchor embedding against the root instead of their mean. Molecules without a context (no
atom farther than ``l1`` hops) are skipped, as the official batching skips them.

Adam, lr 1e-3, no weight decay, batch 256, 100 epochs on ZINC15 in the official script (one Adam per GNN there;
Adam is per-parameter, so one optimizer over both with the same settings takes the same steps). At the end of
``fit`` the substructure GIN is written as the official script writes it (a plain state dict), for
``MoleculeGIN(checkpoint_path=...)``.
"""

from __future__ import annotations

import functools
import random
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.optim import Optimizer

from lightning_prompts.backbones.base import build_backbone
from lightning_prompts.backbones.bio_gin import BioGIN
from lightning_prompts.backbones.molecule_gin import MoleculeGIN
from lightning_prompts.backbones.pretrain_gnns import PretrainGNNsBackbone
from lightning_prompts.metrics.validation_means import log_validation_mean
from lightning_prompts.pretraining.base import EncoderPretraining
from lightning_prompts.registry import register_pretraining


def hop_distances(edge_index: Tensor, num_nodes: int, root: int) -> list[float]:
    """Shortest-path hop counts from ``root`` (``inf`` where unreachable), by breadth-first search."""
    neighbours: list[list[int]] = [[] for _ in range(num_nodes)]
    for source, target in edge_index.t().tolist():
        neighbours[source].append(target)
    distance = [float("inf")] * num_nodes
    distance[root] = 0
    queue = deque([root])
    while queue:
        node = queue.popleft()
        for other in neighbours[node]:
            if distance[other] == float("inf"):
                distance[other] = distance[node] + 1
                queue.append(other)
    return distance


def _induced(data: Any, keep: list[int]) -> tuple[Tensor, Tensor, Tensor, dict[int, int]]:
    """``x``, ``edge_index``, ``edge_attr`` of the subgraph on ``keep`` (in that order) and the index map."""
    position = {node: i for i, node in enumerate(keep)}
    chosen = torch.tensor(keep, dtype=torch.long)
    inside = torch.zeros(data.num_nodes, dtype=torch.bool)
    inside[chosen] = True
    edges = inside[data.edge_index[0]] & inside[data.edge_index[1]]
    remap = torch.full((data.num_nodes,), -1, dtype=torch.long)
    remap[chosen] = torch.arange(len(keep))
    return data.x[chosen], remap[data.edge_index[:, edges]], data.edge_attr[edges], position


def substructure_context_pair(data: Any, root: int, k: int, l1: int, l2: int) -> dict[str, Tensor] | None:
    """The official ``ExtractSubstructureContextPair`` for one molecule and root (``None``: no context)."""
    distance = hop_distances(data.edge_index, data.num_nodes, root)
    substructure = [n for n in range(data.num_nodes) if distance[n] <= k]
    context = [n for n in range(data.num_nodes) if l1 < distance[n] <= l2]
    if not context:
        return None
    x_sub, edges_sub, attr_sub, sub_map = _induced(data, substructure)
    x_ctx, edges_ctx, attr_ctx, ctx_map = _induced(data, context)
    anchors = [ctx_map[n] for n in context if distance[n] <= k]
    return {
        "x_substruct": x_sub, "edge_index_substruct": edges_sub, "edge_attr_substruct": attr_sub,
        "center_substruct_idx": torch.tensor([sub_map[root]]),
        "x_context": x_ctx, "edge_index_context": edges_ctx, "edge_attr_context": attr_ctx,
        "overlap_context_substruct_idx": torch.tensor(anchors),
    }  # fmt: skip


def cyclic_shift(count: int, shift: int) -> Tensor:
    """The official ``cycle_index``: ``[shift, …, count − 1, 0, …, shift − 1]``."""
    order = torch.arange(count) + shift
    order[-shift:] = torch.arange(shift)
    return order


@register_pretraining(
    family="graph",
    title="Context prediction (Pretrain-GNNs)",
    paper="Hu, Liu, Gomes, Zitnik, Liang, Pande, Leskovec, ICLR 2020 — Strategies for Pre-training Graph Neural "
    "Networks",
    code="snap-stanford/pretrain-gnns",
    docs="methods/gpf.md",
    recipes="gpf",
    overlay="graph_moleculenet",
)
class ContextPrediction(EncoderPretraining):
    """Pre-train a molecule GIN by context prediction (see the module docstring).

    Args:
        backbone: the :class:`~lightning_prompts.backbones.molecule_gin.MoleculeGIN` to pre-train (the substructure
            GIN; ``k`` is its depth).
        context_size: ``l2 − l1``, the context ring's width and the context GIN's depth (``csize`` 3).
        mode: ``"cbow"`` (the official default) or ``"skipgram"``.
        neg_samples: negative contexts per positive (1).
        encoder_path: where to write the substructure GIN at the end of ``fit``.
        optimizer: optimizer factory (default Adam, lr 1e-3, no weight decay).
    """

    #: the backbone this pre-training takes (the bio variant takes the bio GIN)
    backbone_type: ClassVar[type[PretrainGNNsBackbone]] = MoleculeGIN

    def __init__(
        self,
        backbone: MoleculeGIN,
        context_size: int = 3,
        mode: Literal["cbow", "skipgram"] = "cbow",
        neg_samples: int = 1,
        encoder_path: str | None = None,
        optimizer: Callable[[Any], Optimizer] | None = None,
    ) -> None:
        super().__init__()
        frozen = build_backbone(backbone)
        if not isinstance(frozen, self.backbone_type):
            wanted, given = self.backbone_type.__name__, type(frozen).__name__
            raise TypeError(f"{type(self).__name__} pre-trains a {wanted} backbone, got {given}.")
        if mode not in ("cbow", "skipgram"):
            raise ValueError(f"mode must be 'cbow' or 'skipgram', got {mode!r}.")
        if context_size < 1 or neg_samples < 1:
            raise ValueError("context_size and neg_samples must be >= 1.")
        self.save_hyperparameters(ignore=["optimizer", "backbone"])
        self.hparams["backbone"] = frozen.config()
        self.encoder = frozen.trainable_encoder()
        self.context_encoder = frozen.encoder_class(context_size, frozen.emb_dim)
        self.k, self.l1 = frozen.num_layers, frozen.num_layers - 1
        self.l2 = self.l1 + context_size
        self.mode, self.neg_samples, self.encoder_path = mode, neg_samples, encoder_path
        self.use_optimizer(optimizer, functools.partial(torch.optim.Adam, lr=1e-3))

    def pairs(self, batch: Any) -> list[dict[str, Tensor]]:
        """Each molecule's pair around a root drawn by Python's ``random`` (the official draw); no context: none."""
        found = []
        for molecule in batch.to_data_list():
            root = random.sample(range(molecule.num_nodes), 1)[0]
            pair = substructure_context_pair(molecule.cpu(), root, self.k, self.l1, self.l2)
            if pair is not None:
                found.append(pair)
        return found

    def scores(self, pairs: list[dict[str, Tensor]]) -> tuple[Tensor, Tensor]:
        """Positive and negative logits of the pairs (see the module docstring)."""

        def stack(kind: str) -> tuple[Tensor, Tensor, Tensor, list[int]]:
            x = torch.cat([p[f"x_{kind}"] for p in pairs]).to(self.device)
            sizes = [len(p[f"x_{kind}"]) for p in pairs]
            offsets = torch.cumsum(torch.tensor([0, *sizes[:-1]]), 0).tolist()
            edges = torch.cat([p[f"edge_index_{kind}"] + o for p, o in zip(pairs, offsets)], dim=1).to(self.device)
            attr = torch.cat([p[f"edge_attr_{kind}"] for p in pairs]).to(self.device)
            return x, edges, attr, offsets

        x, edges, attr, offsets = stack("substruct")
        centers = torch.cat([p["center_substruct_idx"] + o for p, o in zip(pairs, offsets)]).to(self.device)
        substruct = self.encoder(x, edges, attr)[centers]
        x, edges, attr, offsets = stack("context")
        anchors = torch.cat([p["overlap_context_substruct_idx"] + o for p, o in zip(pairs, offsets)]).to(self.device)
        anchored = self.context_encoder(x, edges, attr)[anchors]
        sizes = torch.tensor([len(p["overlap_context_substruct_idx"]) for p in pairs], device=self.device)
        owner = torch.repeat_interleave(torch.arange(len(pairs), device=self.device), sizes)
        count = len(pairs)
        if self.mode == "cbow":
            context = anchored.new_zeros(count, anchored.shape[1]).index_add_(0, owner, anchored) / sizes[:, None]
            negatives = torch.cat([context[cyclic_shift(count, i + 1)] for i in range(self.neg_samples)])
            positive = (substruct * context).sum(dim=1)
            negative = (substruct.repeat(self.neg_samples, 1) * negatives).sum(dim=1)
        else:
            positive = (substruct[owner] * anchored).sum(dim=1)
            shifted = [substruct[cyclic_shift(count, i + 1)][owner] for i in range(self.neg_samples)]
            negative = (torch.cat(shifted) * anchored.repeat(self.neg_samples, 1)).sum(dim=1)
        return positive, negative

    def context_loss(self, batch: Any) -> tuple[Tensor, Tensor] | None:
        pairs = self.pairs(batch)
        if len(pairs) < 2:  # a negative needs another molecule's context
            return None
        positive, negative = self.scores(pairs)
        loss = F.binary_cross_entropy_with_logits(positive.double(), torch.ones_like(positive, dtype=torch.double))
        loss = loss + self.neg_samples * F.binary_cross_entropy_with_logits(
            negative.double(), torch.zeros_like(negative, dtype=torch.double)
        )
        accuracy = 0.5 * ((positive > 0).float().mean() + (negative < 0).float().mean())
        return loss.float(), accuracy

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        result = self.context_loss(batch)
        if result is None and self.trainer.world_size > 1:
            # under DDP every process must join the gradient all-reduce: a zero loss on every trainable parameter
            # adds zero gradients to the mean, where one process skipping its step would leave the others waiting
            return torch.stack([p.sum() for p in self.parameters() if p.requires_grad]).sum() * 0.0
        if result is None:
            return None  # Lightning skips the step, as the official batching skips the batch
        loss, accuracy = result
        self.log("train/loss", loss, prog_bar=True, batch_size=int(batch.num_graphs))
        self.log("train/context_acc", accuracy, batch_size=int(batch.num_graphs))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        result = self.context_loss(batch)
        # logged also when the batch has no context to predict (with no weight): under DDP every process must take
        # part in the end-of-epoch synchronisation of the means, or the others wait for it
        loss, accuracy = result if result is not None else (torch.zeros((), device=self.device),) * 2
        size = int(batch.num_graphs) if result is not None else 0
        why = (
            f"every batch had fewer than 2 graphs with a context, nodes more than l1 = {self.l1} hops from the drawn "
            f"root: the graphs are too small (k = {self.k})"
        )
        log_validation_mean(self, "loss", loss, size, when_empty=why)
        log_validation_mean(self, "context_acc", accuracy, size, when_empty=why)

    def export_encoder(self, path: str | Path) -> Path:
        """Write the substructure GIN as the official script does (a plain state dict)."""
        return self.save_plain_encoder(path)


def bio_context_pair(data: Any, root: int, l1: int) -> dict[str, Tensor] | None:
    """The official bio ``ExtractSubstructureContextPair`` for one ego-network and root (``None``: no context): the
    substructure is the whole graph, read at its centre; the context is every node more than ``l1`` hops from the root
    (unreachable ones too), with the associations among them; every context node is an anchor."""
    distance = hop_distances(data.edge_index, data.num_nodes, root)
    context = [n for n in range(data.num_nodes) if distance[n] > l1]
    if not context:
        return None
    x_ctx, edges_ctx, attr_ctx, _ = _induced(data, context)
    return {
        "x_substruct": data.x, "edge_index_substruct": data.edge_index, "edge_attr_substruct": data.edge_attr,
        "center_substruct_idx": data.center_index.view(1),
        "x_context": x_ctx, "edge_index_context": edges_ctx, "edge_attr_context": attr_ctx,
        "overlap_context_substruct_idx": torch.arange(len(context)),
    }  # fmt: skip


@register_pretraining(
    family="graph",
    title="Context prediction (Pretrain-GNNs, bio)",
    paper="Hu, Liu, Gomes, Zitnik, Liang, Pande, Leskovec, ICLR 2020 — Strategies for Pre-training Graph Neural "
    "Networks",
    code="snap-stanford/pretrain-gnns",
    docs="methods/gpf.md",
    recipes="gpf",
    overlay="graph_moleculenet",
)
class BioContextPrediction(ContextPrediction):
    """Pre-train the bio GIN by context prediction, as ``bio/pretrain_contextpred.py`` (behind the bio
    ``contextpred.pth`` GPF prompts): each ego-network whole is the substructure, read at its centre protein; the
    context is the nodes more than ``l1`` hops from a root drawn at random (``root: center`` takes the centre, the
    official ``--center 1``), encoded by a 3-layer context GIN and mean-pooled (``cbow``) or scored node by node
    (``skipgram``); negatives, loss and optimizer as :class:`ContextPrediction`. Ego-networks without a context are
    skipped.

    Args:
        backbone: the :class:`~lightning_prompts.backbones.bio_gin.BioGIN` to pre-train.
        l1: context nodes are more than ``l1`` hops from the root (the official ``--l1``, 1).
        root: ``"random"`` (the official default) or ``"center"``.
        context_layers: the context GIN's depth (3 in the official script).
        mode, neg_samples, encoder_path, optimizer: see :class:`ContextPrediction`.
    """

    backbone_type = BioGIN

    def __init__(
        self,
        backbone: BioGIN,
        l1: int = 1,
        root: Literal["random", "center"] = "random",
        context_layers: int = 3,
        mode: Literal["cbow", "skipgram"] = "cbow",
        neg_samples: int = 1,
        encoder_path: str | None = None,
        optimizer: Callable[[Any], Optimizer] | None = None,
    ) -> None:
        if l1 < 0 or root not in ("random", "center"):
            raise ValueError(f"l1 must be >= 0 and root 'random' or 'center', got l1={l1}, root={root!r}.")
        super().__init__(backbone, context_layers, mode, neg_samples, encoder_path, optimizer)
        # the official transform turns l1 = 0 into -1: every node, the root included, is context
        self.l1, self.root = (l1 if l1 > 0 else -1), root

    def pairs(self, batch: Any) -> list[dict[str, Tensor]]:
        """Each ego-network's pair around its root (drawn by Python's ``random``, or its centre); no context: none."""
        found = []
        for graph in batch.to_data_list():
            graph = graph.cpu()
            root = int(graph.center_index) if self.root == "center" else random.sample(range(graph.num_nodes), 1)[0]
            pair = bio_context_pair(graph, root, self.l1)
            if pair is not None:
                found.append(pair)
        return found
