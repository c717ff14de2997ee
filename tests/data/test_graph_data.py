"""GraphDataModule's node-level protocol of RELIEF (ProG): ego-graph size limits, validation and test drawn at random
from the examples left after the training shots, SVD-reduced features — each against a brute-force computation."""

from __future__ import annotations

import networkx as nx
import pytest
import torch
from torch_geometric.data import Data, InMemoryDataset
from torch_geometric.utils import to_undirected

from lightning_prompts.data.graph import GraphDataModule


class OneGraph(InMemoryDataset):
    def __init__(self, data):
        super().__init__()
        self.data, self.slices = self.collate([data])


def random_graph(nodes=120, features=30, classes=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    edges = to_undirected(torch.randint(0, nodes, (2, nodes), generator=generator), num_nodes=nodes)
    x = torch.randn(nodes, features, generator=generator)
    return Data(x=x, edge_index=edges, y=torch.arange(nodes) % classes)


def test_ego_size_keeps_the_nodes_whose_k_hop_graph_has_min_to_max_nodes_and_the_sizes_draw_from_the_rest():
    graph = random_graph()
    data = GraphDataModule(OneGraph(graph), shots=3, ego_hops=2, ego_size=(3, 12), val_size=20, test_size=25, seed=4)
    network = nx.Graph(graph.edge_index.t().tolist())
    network.add_nodes_from(range(graph.num_nodes))
    sizes = {n: len(nx.single_source_shortest_path_length(network, n, cutoff=2)) for n in network}
    eligible = {n for n, size in sizes.items() if 3 <= size <= 12}
    assert set(data.ego_sized_nodes()) == eligible and 0 < len(eligible) < graph.num_nodes
    splits = data._split_indices()
    train, val, test = (set(splits[k]) for k in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (9, 20, 25) and train | val | test <= eligible
    assert not (train & val or train & test or val & test)
    assert sorted(int(graph.y[n]) for n in train) == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # shots per class
    data.setup("fit")
    assert all(3 <= g.num_nodes <= 12 for split in data._splits.values() for g in split)
    assert {int(g.y) for g in data._splits["train"]} == {0, 1, 2}
    everything = GraphDataModule(OneGraph(graph), shots=3, ego_hops=2, ego_size=(3, 12), val_size=20, seed=4)
    split = everything._split_indices()
    assert len(split["test"]) == len(eligible) - 9 - 20  # no test_size: all the rest


def test_svd_features_are_u_times_s_of_the_feature_matrix():
    graph = random_graph(features=30)
    data = GraphDataModule(OneGraph(graph), shots=3, ego_hops=1, svd_features=8)
    u, s, _ = torch.linalg.svd(graph.x)
    torch.testing.assert_close(data.graph.x, u[:, :8] @ torch.diag(s[:8]))
    assert data.num_features == 8
    data.setup("fit")
    assert data._splits["train"][0].x.shape[-1] == 8


def test_bad_protocol_arguments_are_refused():
    graph = OneGraph(random_graph())
    with pytest.raises(ValueError, match="needs ego_hops"):
        GraphDataModule(graph, ego_size=(3, 12))
    with pytest.raises(ValueError, match="test_size needs val_size"):
        GraphDataModule(graph, test_size=10)
    with pytest.raises(ValueError, match="svd_features"):
        GraphDataModule(graph, task="graph", svd_features=8)
    too_many = GraphDataModule(graph, shots=3, ego_hops=2, ego_size=(3, 12), val_size=500, test_size=500)
    with pytest.raises(Exception, match="fewer than the 1000 validation"):
        too_many._split_indices()


def test_lower_to_higher_edges_keep_each_edge_once_and_ego_graphs_follow_in_neighbours():
    graph = random_graph()
    data = GraphDataModule(OneGraph(graph), shots=3, ego_hops=2, edges="lower_to_higher")
    kept = data.graph.edge_index
    assert bool((kept[0] < kept[1]).all()) and kept.shape[1] == int((graph.edge_index[0] < graph.edge_index[1]).sum())
    network = nx.DiGraph(kept.t().tolist())
    network.add_nodes_from(range(graph.num_nodes))
    reverse = network.reverse()  # k_hop_subgraph's default flow collects the nodes that reach the centre
    sizes = [len(nx.single_source_shortest_path_length(reverse, n, cutoff=2)) for n in range(graph.num_nodes)]
    sized = GraphDataModule(OneGraph(graph), shots=1, ego_hops=2, ego_size=(2, 4), edges="lower_to_higher")
    assert set(sized.ego_sized_nodes()) == {n for n, size in enumerate(sizes) if 2 <= size <= 4}
    assert sizes[0] == 1  # node 0 has no lower neighbour: its ego-graph is itself
    with pytest.raises(ValueError, match="lower_to_higher"):
        GraphDataModule(OneGraph(graph), task="graph", edges="lower_to_higher")


def test_sampled_ego_graphs_match_pyg_neighbor_loader_with_all_neighbours_and_respect_the_fanout():
    from lightning_prompts.data.graph import sampled_ego_graphs

    graph = random_graph(nodes=60)
    node_of = {tuple(row): index for index, row in enumerate(graph.x.tolist())}  # random features: unique rows
    in_edges = {(a, b) for a, b in graph.edge_index.t().tolist()}
    centers = [0, 7, 31]
    ours = sampled_ego_graphs(graph, centers, [100, 100], seed=0)  # wider than any degree: every neighbour
    for center, mine in zip(centers, ours):
        # what NeighborLoader(num_neighbors=[-1, -1]) returns: nodes within 2 in-hops, and the in-edges of the
        # nodes within 1 hop (the frontiers that sampled)
        hop1 = {a for a, b in in_edges if b == center} - {center}
        hop2 = {a for a, b in in_edges if b in hop1} - hop1 - {center}
        ids = [node_of[tuple(row)] for row in mine.x.tolist()]
        assert ids[0] == center and set(ids) == {center} | hop1 | hop2
        mine_edges = {(ids[a], ids[b]) for a, b in mine.edge_index.t().tolist()}
        assert mine_edges == {(a, b) for a, b in in_edges if b in {center} | hop1}
        assert int(mine.y) == int(graph.y[center])
    narrow = sampled_ego_graphs(graph, centers, [2, 1], seed=3)
    for sub in narrow:
        incoming = torch.bincount(sub.edge_index[1], minlength=sub.num_nodes)
        assert int(incoming[0]) <= 2 and int(incoming[1:].max()) <= 1  # the centre: hop 1's width; the rest: hop 2's
        assert sub.num_nodes <= 1 + 2 + 2 and int(sub.center_index) == 0
    again = sampled_ego_graphs(graph, centers, [2, 1], seed=3)
    assert all(torch.equal(a.edge_index, b.edge_index) for a, b in zip(narrow, again))  # seeded


def test_the_pretraining_split_trains_on_every_node_but_a_held_out_tenth_without_reading_labels():
    from torch_geometric.datasets import KarateClub

    graph = KarateClub()[0]  # a real graph that installs with PyG: 34 members of Zachary's karate club
    unlabelled = Data(x=graph.x, edge_index=graph.edge_index)  # no y: pre-training must not read labels
    data = GraphDataModule([unlabelled], task="node", shots=0, ego_hops=2)
    split = data._split_indices()
    assert (len(split["train"]), len(split["val"])) == (31, 3) and split["test"] == split["val"]  # 34 // 10 held out
    assert sorted(split["train"] + split["val"]) == list(range(34))  # every node, each once
    data.setup("fit")
    assert len(data._splits["train"]) == 31 and all(not hasattr(g, "y") or g.y is None for g in data._splits["train"])
    again = GraphDataModule([unlabelled], task="node", shots=0, ego_hops=2, val_size=5, seed=1)
    again.setup("fit")
    assert (len(again._splits["train"]), len(again._splits["val"])) == (29, 5)
    graphs = GraphDataModule([graph] * 20, task="graph", shots=0)._split_indices()  # graph datasets too
    assert (len(graphs["train"]), len(graphs["val"])) == (18, 2)
    with pytest.raises(ValueError, match="no test"):
        GraphDataModule([unlabelled], task="node", shots=0, ego_hops=2, val_size=3, test_size=3)
    with pytest.raises(ValueError, match="shots must be"):
        GraphDataModule([unlabelled], task="node", shots=-2)


def test_graphcl_pretraining_on_cora_reads_every_node_not_the_public_split():
    """recipes/graphcl/cora.yaml took Planetoid's public split (shots: -1): 140 of Cora's 2,708 nodes trained."""
    from pathlib import Path

    from lightning_prompts.recipes import merged_section

    recipe = Path(__file__).resolve().parents[2] / "recipes" / "graphcl" / "cora.yaml"
    assert merged_section(recipe, "data")["init_args"]["shots"] == 0
