"""GraphCL's graph augmentations on a PyG batch (any number of graphs; one graph without ``batch`` too).

Augmentations (GraphCL's names): ``"drop_nodes"`` removes each node with probability ``ratio``,
``"permute_edges"`` removes each edge with probability ``ratio``, ``"mask_nodes"`` replaces the
features of a ``ratio`` share of nodes with N(0.5, 0.5) noise, and ``"subgraph"`` is the official unsupervised
code's (``unsupervised_TU``): per graph a seed node drawn uniformly, then up to ``int(n · ratio)`` more drawn
uniformly from the *seed's* neighbours (the official ``idx_neigh.union(...)`` result is discarded, so the neighbour
set never grows; a repeat draw wastes a try, at most ``n`` tries), and the edges among the chosen nodes. The other
nodes go: ``aug.py`` only cuts their edges, but the dataset adds a self-loop to every node (all but the
highest-numbered, an off-by-one not reproduced here), and ``gsimclr.py`` then drops the nodes left without an edge.
The official function hard-codes ``0.2`` where this takes ``aug_ratio`` (default 0.2).
:class:`~lightning_prompts.pretraining.PretrainGNNsGraphCL` has the transfer-learning code's subgraphs (the protein
one grows its neighbour set).

Every draw comes from a CPU generator (the global one by default) and is moved to the batch's device: the same views
for a seed on any device, and a checkpoint's CPU random state resumes them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from lightning_prompts.pretraining.transfer_augmentations import subgraph_nodes

Augmentation = Literal["drop_nodes", "permute_edges", "mask_nodes", "subgraph", "none", "random"]


def uniform_draws(count: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
    """``count`` U(0, 1) draws from the CPU generator, moved to ``device``: the same views for a seed on any
    device (a CUDA batch once got CPU masks and failed), and the checkpointed CPU state resumes them exactly."""
    return torch.rand(count, generator=generator).to(device)


def floating(x: Tensor) -> Tensor:
    """Node features as floats: integer features become float32, floating ones keep their dtype (a ``bf16-true``
    run hands the encoder bfloat16 features, and a float32 copy would not meet its bfloat16 weights)."""
    return x if x.is_floating_point() else x.float()


def feature_noise(count: int, width: int, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """GraphCL's N(0.5, 0.5) replacement features for ``count`` nodes, drawn as :func:`uniform_draws` are."""
    return (0.5 + 0.5 * torch.randn(count, width, generator=generator)).to(like.device, like.dtype)


def drop_nodes(data: Any, ratio: float, generator: torch.Generator | None = None) -> Any:
    """Keep each node with probability ``1 - ratio`` (at least one node per graph) and its induced edges."""
    keep = uniform_draws(data.num_nodes, data.x.device, generator) >= ratio
    batch = getattr(data, "batch", None)
    if batch is not None:  # never empty a graph: keep its first node
        first = torch.ones_like(batch, dtype=torch.bool)
        first[1:] = batch[1:] != batch[:-1]
        keep |= first
    else:
        keep[0] = True
    return induced_view(data, keep)


def permute_edges(data: Any, ratio: float, generator: torch.Generator | None = None) -> Any:
    """Drop each edge with probability ``ratio``."""
    keep = uniform_draws(data.edge_index.shape[1], data.edge_index.device, generator) >= ratio
    view = data.clone()
    view.edge_index = data.edge_index[:, keep]
    return view


def mask_nodes(data: Any, ratio: float, generator: torch.Generator | None = None) -> Any:
    """Replace the features of a ``ratio`` share of nodes with N(0.5, 0.5) noise (GraphCL's mask)."""
    masked = uniform_draws(data.num_nodes, data.x.device, generator) < ratio
    view = data.clone()
    x = floating(data.x).clone()
    x[masked] = feature_noise(int(masked.sum()), x.shape[1], x, generator)
    view.x = x
    return view


def subgraph(data: Any, ratio: float, generator: torch.Generator | None = None) -> Any:
    """GraphCL's unsupervised ``subgraph``: per graph a seed node and up to ``int(n · ratio)`` of its neighbours, with
    the edges among them (see the module docstring); every graph keeps at least its seed."""
    batch = getattr(data, "batch", None)
    owner = batch if batch is not None else data.edge_index.new_zeros(data.num_nodes)
    num_graphs = int(owner.max()) + 1 if owner.numel() else 1
    # drawn on the CPU as the other augmentations are (:func:`uniform_draws`)
    keep = subgraph_nodes(data.edge_index.cpu(), owner.cpu(), num_graphs, ratio, False, generator)
    return induced_view(data, keep.to(data.edge_index.device))


def induced_view(data: Any, keep: Tensor) -> Any:
    """The nodes ``keep`` marks and the edges among them, renumbered (and their ``batch`` entries)."""
    from torch_geometric.utils import subgraph as induced_subgraph

    edge_index, _ = induced_subgraph(keep, data.edge_index, relabel_nodes=True, num_nodes=data.num_nodes)
    view = data.clone()
    view.x, view.edge_index = data.x[keep], edge_index
    if getattr(data, "batch", None) is not None:
        view.batch = data.batch[keep]
    return view


def no_augmentation(data: Any, ratio: float, generator: torch.Generator | None = None) -> Any:
    """The graph as it is (``ratio`` and ``generator`` unused): GraphCL's unsupervised code contrasts each graph with
    one augmented view of it."""
    return data


def random_augmentation(
    data: Any,
    ratio: float,
    generator: torch.Generator | None = None,
    choices: Sequence[str] = ("drop_nodes", "permute_edges"),
) -> Any:
    """Each graph takes one of ``choices``, drawn uniformly and independently per graph: ProG's ``random`` (node
    dropping or edge perturbation, the default) and GraphCL's unsupervised ``random2``/``random3``/``random4``
    (``drop_nodes, subgraph`` / ``+ permute_edges`` / ``+ mask_nodes``). Each choice augments the whole batch and each
    graph keeps its pick's view; the view's nodes are in graph order, edges renumbered."""
    if not choices or any(name not in FIXED_AUGMENTATIONS for name in choices):
        raise ValueError(f"random draws from {sorted(FIXED_AUGMENTATIONS)}, got {list(choices)}.")
    batch = getattr(data, "batch", None)
    owner = batch if batch is not None else data.edge_index.new_zeros(data.num_nodes)
    num_graphs = int(owner.max()) + 1 if owner.numel() else 1
    picks = torch.randint(len(choices), (num_graphs,), generator=generator).to(owner.device)
    xs, owners, edges, count = [], [], [], 0
    for index, name in enumerate(choices):
        view = FIXED_AUGMENTATIONS[name](data, ratio, generator)
        view_owner = view.batch if batch is not None else owner.new_zeros(view.x.shape[0])
        mine = picks[view_owner] == index
        kept = int(mine.sum())
        renumbered = torch.full_like(view_owner, -1)
        renumbered[mine] = torch.arange(kept, device=owner.device) + count
        edges.append(renumbered[view.edge_index[:, mine[view.edge_index[0]]]])
        xs.append(view.x[mine])
        owners.append(view_owner[mine])
        count += kept
    merged_owner = torch.cat(owners)
    order = torch.argsort(merged_owner, stable=True)  # graph by graph, each graph's nodes in its view's order
    position = torch.empty_like(order)
    position[order] = torch.arange(order.shape[0], device=order.device)
    merged = data.clone()
    if len({x.dtype for x in xs}) > 1:  # mask_nodes' noise made its view's integer features float
        xs = [floating(x) for x in xs]
    merged.x = torch.cat(xs)[order]
    merged.edge_index = position[torch.cat(edges, dim=1)]
    if batch is not None:
        merged.batch = merged_owner[order]
    return merged


#: The augmentations a view (or a ``random`` pick) can be.
FIXED_AUGMENTATIONS: dict[str, Callable[..., Any]] = {
    "drop_nodes": drop_nodes,
    "permute_edges": permute_edges,
    "mask_nodes": mask_nodes,
    "subgraph": subgraph,
    "none": no_augmentation,
}

AUGMENTATIONS: dict[str, Callable[..., Any]] = {**FIXED_AUGMENTATIONS, "random": random_augmentation}
