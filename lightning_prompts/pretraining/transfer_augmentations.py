"""GraphCL's augmentations as its transfer-learning code draws them for the Pretrain-GNNs molecules and protein
ego-networks (``transferLearning_MoleculeNet_PPI/{chem,bio}/loader.py`` of github.com/Shen-Lab/GraphCL), vectorised
over a collated batch.

Each augmentation returns which nodes and which edges of the batch a view keeps (boolean masks); :func:`view_of`
builds the view. Per graph of ``n`` nodes and ``m`` (directed) edges, with ``ratio`` the augmentation strength:

* ``drop_nodes``: ``int(n · ratio)`` nodes drawn uniformly without replacement are removed with their edges;
* ``subgraph``: a seed node drawn uniformly, then ``int(n · ratio)`` more nodes, each drawn uniformly from the
  neighbour set (a repeat draw wastes a try; at most ``n`` tries; it stops when the neighbour set is empty), and the
  edges among the chosen nodes. The neighbour set is the seed's out-neighbours plus those of every node chosen
  (``grow=True``, the ``bio`` loader) or the seed's out-neighbours only (``grow=False``, the ``chem`` loader, whose
  ``idx_neigh.union(...)`` result is discarded: a molecule's "subgraph" is its seed atom and up to ``int(n · ratio)``
  of the seed's neighbours);
* ``permute_edges``: ``int(m · ratio)`` directed edges drawn uniformly without replacement are removed (the ``bio``
  loader's; the ``chem`` loader's version also adds random edges whose bond features stay those of the removed ones,
  and is not reproduced);
* ``none``: the graph as it is.

``drop_nodes`` and ``subgraph`` keep a graph whole when its view would have no edge: the official functions build the
new ``edge_index`` with ``torch.tensor(list).transpose_(0, 1)``, which raises on an empty list, and their ``except``
returns the graph unchanged (so a molecule of fewer than five atoms, whose subgraph at ratio 0.2 is its seed alone,
is seen whole). A view's nodes keep their order in the batch (the official subgraph lists them in the order drawn;
the GIN and its mean pool do not depend on the order).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from lightning_prompts.pretraining.sampling import random_ranks

TransferAugmentation = Literal["drop_nodes", "subgraph", "permute_edges", "none", "random"]
Masks = tuple[Tensor, Tensor]  # (nodes kept, edges kept)


def share(counts: Tensor, ratio: float) -> Tensor:
    """``int(count · ratio)`` per count, in double precision as Python computes it."""
    return torch.floor(counts.double() * ratio).long()


def keep_whole_if_edgeless(nodes: Tensor, edges: Tensor, batch: Tensor, edge_graph: Tensor, num_graphs: int) -> Masks:
    """The official ``except``: a graph whose view would have no edge keeps all its nodes and edges."""
    kept_edges = torch.bincount(edge_graph[edges], minlength=num_graphs)
    edgeless = kept_edges == 0
    return nodes | edgeless[batch], edges | edgeless[edge_graph]


def drop_nodes(edge_index: Tensor, batch: Tensor, num_graphs: int, ratio: float, grow: bool = False) -> Masks:
    """Remove ``int(n · ratio)`` uniformly drawn nodes of each graph and their edges (``grow`` is unused)."""
    dropped = share(torch.bincount(batch, minlength=num_graphs), ratio)
    nodes = random_ranks(batch, num_graphs) >= dropped[batch]
    edges = nodes[edge_index[0]] & nodes[edge_index[1]]
    return keep_whole_if_edgeless(nodes, edges, batch, batch[edge_index[0]], num_graphs)


def subgraph(edge_index: Tensor, batch: Tensor, num_graphs: int, ratio: float, grow: bool = False) -> Masks:
    """A seed and ``int(n · ratio)`` more nodes drawn from its (``grow``: the chosen nodes') neighbours, per graph."""
    chosen = subgraph_nodes(edge_index, batch, num_graphs, ratio, grow)
    edges = chosen[edge_index[0]] & chosen[edge_index[1]]
    return keep_whole_if_edgeless(chosen, edges, batch, batch[edge_index[0]], num_graphs)


def subgraph_nodes(
    edge_index: Tensor,
    batch: Tensor,
    num_graphs: int,
    ratio: float,
    grow: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The nodes :func:`subgraph` chooses (before its edgeless fallback): a boolean mask over the batch's nodes.
    ``generator``: one on the batch's device (default: the device's own)."""
    source, target = edge_index
    sizes = torch.bincount(batch, minlength=num_graphs)
    wanted = share(sizes, ratio) + 1
    chosen = random_ranks(batch, num_graphs, generator) == 0  # the seeds
    neighbours = torch.zeros_like(chosen)
    neighbours[target[chosen[source]]] = True
    tries = torch.zeros_like(sizes)
    while True:
        chosen_count = torch.bincount(batch[chosen], minlength=num_graphs)
        candidates_count = torch.bincount(batch[neighbours], minlength=num_graphs)
        drawing = (chosen_count < wanted) & (tries < sizes) & (candidates_count > 0)
        if not bool(drawing.any()):
            break
        tries += drawing.long()
        candidates = torch.nonzero(neighbours & drawing[batch]).squeeze(1)
        drawn = candidates[random_ranks(batch[candidates], num_graphs, generator) == 0]  # one neighbour per graph
        new = drawn[~chosen[drawn]]
        chosen[new] = True
        if grow:
            added = torch.zeros_like(chosen)
            added[new] = True
            neighbours[target[added[source]]] = True
    return chosen


def permute_edges(edge_index: Tensor, batch: Tensor, num_graphs: int, ratio: float, grow: bool = False) -> Masks:
    """Remove ``int(m · ratio)`` uniformly drawn directed edges of each graph (``grow`` is unused)."""
    edge_graph = batch[edge_index[0]]
    removed = share(torch.bincount(edge_graph, minlength=num_graphs), ratio)
    edges = random_ranks(edge_graph, num_graphs) >= removed[edge_graph]
    return torch.ones_like(batch, dtype=torch.bool), edges


def no_augmentation(edge_index: Tensor, batch: Tensor, num_graphs: int, ratio: float, grow: bool = False) -> Masks:
    return torch.ones_like(batch, dtype=torch.bool), torch.ones_like(edge_index[0], dtype=torch.bool)


AUGMENTATIONS: dict[str, Callable[..., Masks]] = {
    "drop_nodes": drop_nodes,
    "subgraph": subgraph,
    "permute_edges": permute_edges,
    "none": no_augmentation,
}


def random_augmentation(
    edge_index: Tensor, batch: Tensor, num_graphs: int, ratio: float, choices: Sequence[str], grow: bool
) -> Masks:
    """The official ``random``: each graph takes one of ``choices``, drawn uniformly."""
    picked = torch.randint(len(choices), (num_graphs,), device=batch.device)
    nodes, edges = no_augmentation(edge_index, batch, num_graphs, ratio)
    edge_graph = batch[edge_index[0]]
    for index, name in enumerate(choices):
        choice_nodes, choice_edges = AUGMENTATIONS[name](edge_index, batch, num_graphs, ratio, grow)
        nodes = torch.where(picked[batch] == index, choice_nodes, nodes)
        edges = torch.where(picked[edge_graph] == index, choice_edges, edges)
    return nodes, edges


def view_of(data: Any, nodes: Tensor, edges: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x, edge_index, edge_attr, batch)`` of the view keeping ``nodes`` and ``edges`` (each kept edge's ends are
    kept nodes), node indices renumbered."""
    renumbered = torch.cumsum(nodes.long(), 0) - 1
    return data.x[nodes], renumbered[data.edge_index[:, edges]], data.edge_attr[edges], data.batch[nodes]
