"""The generated heterogeneous SBM: the default (ACM-like) schema and any other one the tiny overlays name (DBLP's and
IMDB's), checked edge by edge; bad schemas refused before anything is drawn."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from lightning_prompts.data.hetero_graph import HeteroGraphDataModule, HeteroSBM
from lightning_prompts.errors import DatasetError
from lightning_prompts.methods.hetgpt import metapath_edges

DBLP_LIKE = {
    "num_classes": 4,
    "features": 8,
    "nodes": {"author": 24, "paper": 32, "term": 8, "venue": 4},
    "featureless": ["venue"],
    "relations": [
        {"edge": ["author", "to", "paper"], "links": 2, "reverse": "to"},
        {"edge": ["paper", "to", "term"], "links": 2, "reverse": "to"},
        {"edge": ["paper", "to", "venue"], "links": 1},
    ],
    "target": "author",
}


def test_the_default_schema_is_papers_authors_and_subjects_with_3_and_1_links_per_paper():
    data = HeteroSBM(papers=30, authors=12, subjects=6).data
    assert data.node_types == ["paper", "author", "subject"]
    assert [data[t].x.shape for t in data.node_types] == [(30, 16), (12, 16), (6, 16)]
    assert torch.equal(data["paper"].y, torch.arange(30) % 3)
    authors = data["paper", "to", "author"].edge_index
    assert authors.shape == (2, 90) and torch.equal(authors[0], torch.arange(30).repeat_interleave(3))
    assert data["paper", "to", "subject"].edge_index.shape == (2, 30)
    assert torch.equal(data["author", "to", "paper"].edge_index, authors.flip(0))


def test_the_default_graph_is_the_one_drawn_before_the_schema_was_generalised():
    """Checksums of ``HeteroSBM()`` as the ACM-only generator (before 0b97c64) drew it: the testbed's figures and
    every seeded test rest on this graph, so any extra or reordered draw must fail here."""
    data = HeteroSBM().data
    sums = {"/".join(edge): int(data[edge].edge_index.sum()) for edge in data.edge_types}
    assert sums == {"paper/to/author": 197731, "author/to/paper": 197731, "paper/to/subject": 49418,
                    "subject/to/paper": 49418}  # fmt: skip
    features = {name: float(data[name].x.sum()) for name in data.node_types}
    assert features == pytest.approx({"paper": 26.3524, "author": 43.5556, "subject": 25.4448}, abs=1e-3)


@pytest.mark.parametrize(("within", "low", "high"), [(1.0, 1.0, 1.0), (0.5, 0.5, 0.75), (0.0, 0.15, 0.35)])
def test_within_is_the_share_of_links_drawn_inside_the_community(within, low, high):
    """A link stays in its community with probability ``within``, else goes to any node (a quarter of which share
    the community with 4 classes): expected shares 1, 0.625 and 0.25 over 480 links."""
    data = HeteroSBM(**{**DBLP_LIKE, "nodes": {**DBLP_LIKE["nodes"], "author": 240}, "within": within}).data
    edges = data["author", "to", "paper"].edge_index
    share = float((edges[0] % 4 == edges[1] % 4).float().mean())
    assert low <= share <= high


def test_a_custom_schema_draws_each_relations_links_per_source_node_within_the_community():
    data = HeteroSBM(**{**DBLP_LIKE, "within": 1.0}).data
    assert data.node_types == ["author", "paper", "term", "venue"]
    assert "x" not in data["venue"] and data["venue"].num_nodes == 4
    assert data["author"].x.shape == (24, 8) and torch.equal(data["author"].y, torch.arange(24) % 4)
    for source, destination, links in (("author", "paper", 2), ("paper", "term", 2), ("paper", "venue", 1)):
        edges = data[source, "to", destination].edge_index
        assert torch.equal(edges[0], torch.arange(data[source].num_nodes).repeat_interleave(links))
        assert torch.equal(edges[0] % 4, edges[1] % 4)  # within = 1: every link stays in its community
    assert torch.equal(data["term", "to", "paper"].edge_index, data["paper", "to", "term"].edge_index.flip(0))
    assert ("venue", "to", "paper") not in data.edge_types  # no reverse named
    # the class-shifted feature: community c's nodes carry +shift on feature c
    shifted = HeteroSBM(**{**DBLP_LIKE, "shift": 10.0}).data["paper"]
    assert torch.equal(shifted.x[:, :4].argmax(dim=1), torch.arange(32) % 4)


def test_the_same_seed_draws_the_same_graph_and_another_seed_another():
    first, again, other = (HeteroSBM(**DBLP_LIKE, seed=s).data for s in (0, 0, 1))
    edge = ("author", "to", "paper")
    assert torch.equal(first[edge].edge_index, again[edge].edge_index)
    assert torch.equal(first["paper"].x, again["paper"].x)
    assert not torch.equal(first[edge].edge_index, other[edge].edge_index)


def test_the_data_module_labels_its_target_and_gives_featureless_types_a_constant_feature():
    module = HeteroGraphDataModule(synthetic={k: v for k, v in DBLP_LIKE.items() if k != "target"}, target="author",
                                   shots=2)  # fmt: skip
    assert module.dataset.data["author"].y is not None  # the module's target reached the generator
    assert torch.equal(module.graph["venue"].x, torch.ones(4, 1))
    module.setup("fit")
    assert [len(module._splits[split]) for split in ("train", "val", "test")] == [8, 8, 8]


@pytest.mark.parametrize("name", ["dblp", "imdb"])
def test_the_overlays_graphs_join_most_targets_to_others_through_every_metapath_of_their_recipe(name):
    """recipes/_tiny/hetero_<name>.yaml's generated graph against the metapaths of recipes/hetgpt/<name>_5shot.yaml:
    each path joins at least 80 % of the target nodes to another target node (self-pairs left out)."""
    recipes = Path(__file__).resolve().parents[2] / "recipes"
    overlay = yaml.safe_load((recipes / "_tiny" / f"hetero_{name}.yaml").read_text())["data"]["init_args"]
    metapaths = yaml.safe_load((recipes / "hetgpt" / f"{name}_5shot.yaml").read_text())["model"]["init_args"]
    module = HeteroGraphDataModule(synthetic=overlay["synthetic"], target=overlay["target"], shots=2)
    targets = module.graph[overlay["target"]].num_nodes
    for path in metapaths["metapaths"]:
        edges = metapath_edges(module.graph, [tuple(step) for step in path])
        joined = set(edges[0, edges[0] != edges[1]].tolist())
        assert len(joined) >= 0.8 * targets, (path, len(joined))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"target": "venue"}, "cannot be featureless"),
        ({"target": "movie"}, "not one of the generated node types"),
        ({"featureless": ["keyword"]}, "featureless type 'keyword'"),
        ({"nodes": {"author": 24, "paper": 3, "term": 8, "venue": 4}}, "cannot hold 4 communities"),
        ({"features": 3}, "at least num_classes"),
        ({"relations": [{"edge": ["author", "to", "movie"], "links": 1}]}, "'movie' is not one of the node types"),
        ({"relations": [{"edge": ["author", "paper"], "links": 1}]}, "edge must be"),
        ({"relations": [{"edge": ["author", "to", "paper"], "links": 0}]}, "positive integer"),
        ({"relations": [{"edge": ["author", "to", "paper"], "links": 1, "reversed": "to"}]}, "unknown keys"),
        ({"relations": [{"edge": ["author", "to", "paper"], "links": 1, "reverse": 1}]}, "a string"),
        ({"relations": {"edge": ["author", "to", "paper"], "links": 1}}, "must be a list"),
        ({"relations": [["author", "to", "paper"]]}, "must be {edge"),
        (
            {
                "relations": [
                    {"edge": ["author", "to", "paper"], "links": 2},
                    {"edge": ["author", "to", "paper"], "links": 1},
                ]
            },
            "drawn twice",
        ),
        (
            {
                "relations": [
                    {"edge": ["author", "to", "paper"], "links": 2, "reverse": "to"},
                    {"edge": ["paper", "to", "author"], "links": 1},
                ]
            },
            "drawn twice",
        ),
        ({"relations": [{"edge": ["paper", "cites", "paper"], "links": 2, "reverse": "cites"}]}, "drawn twice"),
        ({"featureless": "venue"}, "must be a list of node types"),
        ({"nodes": {"author": "24", "paper": 32}}, "give an integer"),
        ({"nodes": {"author": 24, 7: 32}}, "must be a name"),
        ({"num_classes": 0}, "positive integer"),
        ({"within": 1.5}, "0 to 1"),
        ({"within": float("nan")}, "0 to 1"),
    ],
)
def test_a_bad_schema_is_refused_with_its_reason(change, message):
    with pytest.raises(DatasetError, match=re.escape(message)):
        HeteroSBM(**{**DBLP_LIKE, **change})


def test_the_data_module_refuses_a_synthetic_target_other_than_its_own():
    with pytest.raises(DatasetError, match="give target once"):
        HeteroGraphDataModule(synthetic=DBLP_LIKE, target="paper")


def test_multi_hot_labels_read_as_their_first_label_and_rows_without_one_are_unlabelled():
    """HGB's IMDB genres are multi-hot: a movie's class is its lowest-numbered genre. A row without any genre once
    read as class 0 (the arg-max of zeros) when the dataset gave no train_mask."""
    graph = HeteroSBM(**{**DBLP_LIKE, "num_classes": 3}).data
    y = torch.zeros(24, 3)
    first = torch.arange(24) % 3
    y[torch.arange(24), first] = 1
    y[torch.arange(0, 24, 2), 2] = 1  # a second genre on every other movie, after its first
    y[20:] = 0  # four without any
    graph["author"].y = y

    class OneGraph:  # a dataset instance, as a user would pass one
        def __len__(self):
            return 1

        def __getitem__(self, index):
            return graph

    module = HeteroGraphDataModule(dataset=OneGraph(), target="author", shots=1, val_shots=1)
    assert torch.equal(module.labels[:20], first[:20])
    assert module.labelled().tolist() == list(range(20))
    module.setup("fit")
    assert set(module._splits["test"].tolist()).isdisjoint(range(20, 24))
    graph["author"].train_mask = torch.arange(24) < 22  # HGB's mask: labelled.dat's nodes, still no empty row
    assert module.labelled().tolist() == list(range(20))
