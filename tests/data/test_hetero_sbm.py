"""The generated heterogeneous SBM: the default (ACM-like) schema and any other one the tiny overlays name (DBLP's and
IMDB's), checked edge by edge; bad schemas refused before anything is drawn."""

from __future__ import annotations

import pytest
import torch

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
    # DBLP's metapath author-paper-venue-paper-author exists in the generated graph
    path = [("author", "to", "paper"), ("paper", "to", "venue")]
    module = HeteroGraphDataModule(synthetic={**DBLP_LIKE, "relations": [
        {"edge": ["author", "to", "paper"], "links": 2, "reverse": "to"},
        {"edge": ["paper", "to", "venue"], "links": 1, "reverse": "to"}]}, target="author", shots=2)  # fmt: skip
    edges = metapath_edges(module.graph, [*path, ("venue", "to", "paper"), ("paper", "to", "author")])
    assert edges.shape[0] == 2 and edges.shape[1] > 24


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
    ],
)
def test_a_bad_schema_is_refused_with_its_reason(change, message):
    with pytest.raises(DatasetError, match=message):
        HeteroSBM(**{**DBLP_LIKE, **change})
