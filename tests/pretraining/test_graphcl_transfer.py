"""GraphCL as its transfer-learning code pre-trains the Pretrain-GNNs GINs: the augmentations' distributions against a
transcription of the official ``chem``/``bio`` loader functions, the loss against the official ``forward_cl`` and
``loss_cl`` on views built the official way, and the encoder hand-off to both GINs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import official_graphcl_loss, pretrain_and_reload_the_bio_encoder, unlabelled_bio_data, widened
from torch_geometric.data import Batch, Data
from torch_geometric.nn import global_mean_pool

from lightning_prompts.backbones import GNN, BioGIN
from lightning_prompts.data.bio import read_bio_dataset
from lightning_prompts.pretraining.graphcl_transfer import PretrainGNNsGraphCL
from lightning_prompts.pretraining.transfer_augmentations import drop_nodes, permute_edges, subgraph

# --- the official loader functions, transcribed (they return the kept node indices, or None: the graph unchanged)


def official_drop_nodes(edge_index: np.ndarray, n: int, ratio: float, rng: np.random.RandomState):
    perm = rng.permutation(n)
    dropped = set(perm[: int(n * ratio)].tolist())
    kept_edges = [
        e for e in range(edge_index.shape[1]) if not (edge_index[0, e] in dropped or edge_index[1, e] in dropped)
    ]
    return None if not kept_edges or not dropped else frozenset(set(range(n)) - dropped)


def official_subgraph(edge_index: np.ndarray, n: int, ratio: float, rng: np.random.RandomState, grow: bool):
    sub_num = int(n * ratio)
    chosen = [rng.randint(n, size=1)[0]]
    neighbours = set(edge_index[1][edge_index[0] == chosen[0]].tolist())
    count = 0
    while len(chosen) <= sub_num:
        count += 1
        if count > n or not neighbours:
            break
        node = rng.choice(sorted(neighbours))
        if node in chosen:
            continue
        chosen.append(node)
        if grow:  # the bio loader keeps the union; the chem loader discards it
            neighbours = neighbours.union(edge_index[1][edge_index[0] == node].tolist())
    kept = set(chosen)
    kept_edges = [e for e in range(edge_index.shape[1]) if edge_index[0, e] in kept and edge_index[1, e] in kept]
    return None if not kept_edges else frozenset(kept)


def undirected(pairs: list[tuple[int, int]]) -> torch.Tensor:
    return torch.tensor([[a for a, b in pairs] + [b for a, b in pairs], [b for a, b in pairs] + [a for a, b in pairs]])


#: seven nodes, a path 0-1-2-3-4 with a detour 1-5-6-2 (degrees 1 to 3)
SEVEN = undirected([(0, 1), (1, 2), (2, 3), (3, 4), (1, 5), (5, 6), (6, 2)])


def our_outcomes(augmentation, copies: int, ratio: float, **kwargs) -> Counter:
    """Kept node sets of ``copies`` copies of SEVEN augmented in one batch (``None``: kept whole)."""
    n = 7
    edge_index = torch.cat([SEVEN + n * i for i in range(copies)], dim=1)
    batch = torch.arange(copies).repeat_interleave(n)
    nodes, edges = augmentation(edge_index, batch, copies, ratio, **kwargs)
    outcomes = Counter()
    for i in range(copies):
        kept = frozenset(torch.nonzero(nodes[n * i : n * (i + 1)]).squeeze(1).tolist())
        own_edges = edges[SEVEN.shape[1] * i : SEVEN.shape[1] * (i + 1)]
        if len(kept) == n and bool(own_edges.all()):
            kept = None
        else:  # the edges kept are exactly those among the kept nodes
            among = torch.tensor([a in kept and b in kept for a, b in SEVEN.t().tolist()])
            assert torch.equal(own_edges, among)
        outcomes[kept] += 1
    return outcomes


def total_variation(a: Counter, b: Counter) -> float:
    total_a, total_b = sum(a.values()), sum(b.values())
    return 0.5 * sum(abs(a[k] / total_a - b[k] / total_b) for k in set(a) | set(b))


@pytest.mark.parametrize(
    ("name", "ratio", "grow"),
    [("drop_nodes", 0.5, False), ("drop_nodes", 0.75, False), ("subgraph", 0.5, False), ("subgraph", 0.5, True)],
)
def test_node_augmentations_draw_the_official_distribution(name, ratio, grow):
    copies = 20000  # two samples' total variation is about 0.02 here when both draw from one distribution
    torch.manual_seed(0)
    ours = our_outcomes({"drop_nodes": drop_nodes, "subgraph": subgraph}[name], copies, ratio, grow=grow)
    rng, edge_index = np.random.RandomState(0), SEVEN.numpy()
    if name == "drop_nodes":
        official = Counter(official_drop_nodes(edge_index, 7, ratio, rng) for _ in range(copies))
    else:
        official = Counter(official_subgraph(edge_index, 7, ratio, rng, grow) for _ in range(copies))
    assert total_variation(ours, official) < 0.045, (ours.most_common(5), official.most_common(5))


def test_the_molecule_subgraph_is_its_seed_and_seed_neighbours_and_the_protein_one_grows():
    torch.manual_seed(0)
    star = our_outcomes(subgraph, 500, 0.5, grow=False)
    grown = our_outcomes(subgraph, 500, 0.5, grow=True)
    neighbours = {i: set(SEVEN[1][SEVEN[0] == i].tolist()) for i in range(7)}
    for kept in star:  # one node neighbours all the others
        assert kept is None or any(kept - {seed} <= neighbours[seed] for seed in kept)
    for kept in grown:  # connected: every chosen node was a neighbour of an earlier one
        reached, frontier = set(), [min(kept)]
        while frontier:
            node = frontier.pop()
            reached.add(node)
            frontier += [m for m in neighbours[node] & kept if m not in reached]
        assert reached == kept
    # int(7 · 0.5) + 1 nodes unless the seven tries ran out (a draw of a chosen node wastes one)
    assert sum(count for kept, count in grown.items() if len(kept) == 4) > 0.75 * 500
    assert any(kept is not None and not any(kept - {s} <= neighbours[s] for s in kept) for kept in grown)
    # a leaf seed (node 0 or 4) has one neighbour: the star is two nodes
    assert frozenset({0, 1}) in star and frozenset({0, 1}) not in grown


def test_edge_removal_and_the_whole_graph_when_a_view_has_no_edge():
    torch.manual_seed(0)
    edge_index, batch = SEVEN, torch.zeros(7, dtype=torch.long)
    nodes, edges = permute_edges(edge_index, batch, 1, 0.3)
    assert bool(nodes.all()) and int(edges.sum()) == 14 - int(14 * 0.3)
    pair = torch.tensor([[0, 1], [1, 0]])  # two atoms: dropping one leaves no bond, so the graph stays whole
    for augmentation in (drop_nodes, subgraph):
        nodes, edges = augmentation(pair, torch.zeros(2, dtype=torch.long), 1, 0.5)
        assert bool(nodes.all()) and bool(edges.all())


# --- the loss


def official_view(data: Data, kept_nodes: torch.Tensor, kept_edges: torch.Tensor) -> Data:
    """A view as the official functions build it: ``x[idx_nondrop]``, edges renumbered through ``idx_dict``,
    ``edge_attr[edge_mask]``, the kept nodes listed in a shuffled order (the official subgraph lists them as drawn)."""
    idx_nondrop = torch.nonzero(kept_nodes).squeeze(1)
    idx_nondrop = idx_nondrop[torch.randperm(idx_nondrop.shape[0])]
    idx_dict = {int(old): new for new, old in enumerate(idx_nondrop)}
    edge_mask = torch.nonzero(kept_edges).squeeze(1)
    edge_index = [[idx_dict[int(a)], idx_dict[int(b)]] for a, b in data.edge_index[:, edge_mask].t()]
    return Data(
        x=data.x[idx_nondrop],
        edge_index=torch.tensor(edge_index, dtype=torch.long).reshape(-1, 2).t(),
        edge_attr=data.edge_attr[edge_mask],
    )


def official_loss(module: PretrainGNNsGraphCL, graphs: list[Data], first, second) -> torch.Tensor:
    """``graphcl.forward_cl`` on both views, batched by the loader, and ``loss_cl`` (T = 0.1), re-written."""
    views = []
    for nodes, edges in (first, second):
        per_graph, node_start, edge_start = [], 0, 0
        for graph in graphs:
            n, m = graph.num_nodes, graph.edge_index.shape[1]
            per_graph.append(
                official_view(graph, nodes[node_start : node_start + n], edges[edge_start : edge_start + m])
            )
            node_start, edge_start = node_start + n, edge_start + m
        batch = Batch.from_data_list(per_graph)
        pooled = global_mean_pool(module.encoder(batch.x, batch.edge_index, batch.edge_attr), batch.batch)
        views.append(module.projection(pooled))
    return official_graphcl_loss(*views, 0.1)


def check_loss_is_official(module: PretrainGNNsGraphCL, graphs: list[Data]) -> None:
    batch = Batch.from_data_list(graphs)
    torch.manual_seed(1)
    first, second = module.augment(batch, "random"), module.augment(batch, "random")
    ours = module.views_loss(batch, first, second)
    expected = official_loss(module, graphs, first, second)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    assert abs(expected.item() - np.log(len(graphs) - 1)) > 0.05
    whole = module.views_loss(batch, module.augment(batch, "none"), module.augment(batch, "none"))
    assert not torch.isclose(whole, ours)  # the views are not the graphs


def test_the_loss_is_the_official_forward_cl_and_loss_cl_on_both_gins():
    torch.manual_seed(0)
    graphs = read_bio_dataset(Path(__file__).resolve().parents[2] / "recipes" / "_tiny" / "bio")
    module = widened(PretrainGNNsGraphCL(BioGIN(num_layers=2, emb_dim=8))).eval()
    assert module.random_choices == ["drop_nodes", "subgraph", "permute_edges"] and module.subgraph_grows
    check_loss_is_official(module, [graphs[i] for i in range(12)])

    pytest.importorskip("rdkit")
    from lightning_prompts.backbones.molecule_gin import MoleculeGIN
    from lightning_prompts.data.molecules import smiles_to_graph

    smiles = ["CCO", "c1ccccc1", "CC(=O)O", "CCN(CC)CC", "c1ccc2ccccc2c1", "OC(=O)c1ccccc1O", "CCCCCCCC"]
    molecules = widened(PretrainGNNsGraphCL(MoleculeGIN(num_layers=2, emb_dim=8))).eval()
    assert molecules.random_choices == ["drop_nodes", "subgraph"] and not molecules.subgraph_grows
    check_loss_is_official(molecules, [smiles_to_graph(s) for s in smiles])


def test_a_bio_gin_and_a_molecule_gin_pretrain_and_load_back(tmp_path, trainer_kwargs):
    data = unlabelled_bio_data(tmp_path)
    path = tmp_path / "gcl.pth"
    torch.manual_seed(0)
    module = PretrainGNNsGraphCL(BioGIN(num_layers=2, emb_dim=8), encoder_path=str(path))
    trainer = pretrain_and_reload_the_bio_encoder(module, data, path, trainer_kwargs)
    assert np.isfinite(float(trainer.callback_metrics["train/loss"]))

    pytest.importorskip("rdkit")
    from lightning_prompts.backbones.molecule_gin import MoleculeGIN

    molecules = PretrainGNNsGraphCL(MoleculeGIN(num_layers=2, emb_dim=8))
    molecules.export_encoder(tmp_path / "chem.pth")
    loaded = MoleculeGIN(str(tmp_path / "chem.pth"), num_layers=2, emb_dim=8)
    for key, value in molecules.encoder.state_dict().items():
        assert torch.equal(loaded.encoder.state_dict()[key], value), key


def test_bad_arguments_are_refused():
    with pytest.raises(TypeError, match="MoleculeGIN or BioGIN"):
        PretrainGNNsGraphCL(GNN("gin", 4, 8, 2))
    gin = BioGIN(num_layers=2, emb_dim=8)
    with pytest.raises(ValueError, match="augmentations must be two of"):
        PretrainGNNsGraphCL(gin, augmentations=("random", "mask_nodes"))
    with pytest.raises(ValueError, match="random_choices"):
        PretrainGNNsGraphCL(gin, random_choices=["random"])
    with pytest.raises(ValueError, match="aug_ratio"):
        PretrainGNNsGraphCL(gin, aug_ratio=1.5)
