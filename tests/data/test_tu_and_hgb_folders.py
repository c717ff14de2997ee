"""PyG's TUDataset and HGBDataset built by our graph data modules from local folders holding the raw files in their
real formats: TU Dortmund's ``<NAME>_A.txt``, ``_graph_indicator.txt``, ``_graph_labels.txt``, ``_node_labels.txt``,
``_node_attributes.txt``, ``_edge_labels.txt`` under ``<root>/<NAME>/raw``, and HGB's ``info.dat``, ``node.dat``,
``link.dat``, ``label.dat`` and ``label.dat.test`` under ``<root>/<name>/raw/<NAME>`` as THUDM/HGB's preprocessing
writes them. Every graph, node, edge and label read back is checked against the tables the files were written from,
nothing is downloaded, and HGB's test-file labels are never used."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.datasets import HGBDataset, TUDataset

from lightning_prompts.data.graph import GraphDataModule
from lightning_prompts.data.hetero_graph import HeteroGraphDataModule
from lightning_prompts.errors import DatasetError
from lightning_prompts.recipes import merged_section

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.fixture
def downloads(monkeypatch) -> list[str]:
    """The datasets that tried to download (a download, or any socket connection, fails the build)."""
    attempts: list[str] = []

    def refuse(name):
        def refused(*args, **kwargs):
            attempts.append(name)
            raise RuntimeError(f"{name} tried to reach the network")

        return refused

    monkeypatch.setattr(TUDataset, "download", refuse("TUDataset"))
    monkeypatch.setattr(HGBDataset, "download", refuse("HGBDataset"))
    monkeypatch.setattr(socket.socket, "connect", refuse("socket"))
    return attempts


# -- TU Dortmund's format ---------------------------------------------------------------------------------------------

# per graph: its nodes' labels, their attributes, its undirected edges (u, v, edge label) numbered within the graph,
# and its class (0 or 1); node 0 of graph 6 has no edge
GRAPHS = [
    ([0, 1, 2], [0.5, 1.0, 1.5], [(0, 1, 0), (1, 2, 1)], 1),
    ([2, 2], [2.0, 2.5], [(0, 1, 2)], 0),
    ([0, 3, 1, 1], [3.0, 3.5, 4.0, 4.5], [(0, 1, 0), (0, 2, 1), (2, 3, 3)], 1),
    ([1, 0], [5.0, 5.5], [(0, 1, 1)], 0),
    ([3, 0, 0], [6.0, 6.5, 7.0], [(0, 1, 0), (0, 2, 0), (1, 2, 2)], 0),
    ([1, 1, 2, 0], [7.5, 8.0, 8.5, 9.0], [(0, 1, 1), (1, 2, 1), (2, 3, 0), (3, 0, 2)], 1),
    ([0, 2, 3], [9.5, 10.0, 10.5], [(1, 2, 3)], 1),
    ([2, 1, 0, 3], [11.0, 11.5, 12.0, 12.5], [(0, 3, 0), (1, 2, 2)], 0),
]
NODE_LABELS = EDGE_LABELS = 4  # 0..3 in the files: one-hot columns
# what each dataset's graph-labels file holds for class 0 and class 1 (MUTAG: -1 and 1; PROTEINS: 1 and 2)
RAW_CLASSES = {"MUTAG": ("-1", "1"), "PROTEINS": ("1", "2")}


def write_tu(root: Path, name: str, edge_labels: bool, attributes: bool) -> Path:
    """The files of TU Dortmund's zip for ``GRAPHS``: 1-based node ids numbered across the whole dataset, each
    undirected edge listed in both directions as ``"i, j"``, one graph id per node, one line per graph or node."""
    raw = root / name / "raw"
    raw.mkdir(parents=True)
    files: dict[str, list[str]] = {"A": [], "graph_indicator": [], "graph_labels": [], "node_labels": []}
    if edge_labels:
        files["edge_labels"] = []
    if attributes:
        files["node_attributes"] = []
    first = 1
    for number, (labels, values, edges, label) in enumerate(GRAPHS, start=1):
        for u, v, bond in edges:
            for i, j in ((u, v), (v, u)):
                files["A"].append(f"{first + i}, {first + j}")
                if edge_labels:
                    files["edge_labels"].append(str(bond))
        files["graph_indicator"] += [str(number)] * len(labels)
        files["node_labels"] += [str(node) for node in labels]
        if attributes:
            files["node_attributes"] += [f"{value:.6f}" for value in values]
        files["graph_labels"].append(RAW_CLASSES[name][label])
        first += len(labels)
    for kind, lines in files.items():
        (raw / f"{name}_{kind}.txt").write_text("\n".join(lines) + "\n")
    return raw


def tu_config(root: Path, name: str, **init_args) -> dict:
    """The dataset block as a config file gives it."""
    return {
        "class_path": "torch_geometric.datasets.TUDataset",
        "init_args": {"root": str(root), "name": name, **init_args},
    }


def expected_x(graph: int, attributes: bool) -> torch.Tensor:
    labels, values, _, _ = GRAPHS[graph]
    one_hot = F.one_hot(torch.tensor(labels), NODE_LABELS).float()
    return torch.cat([torch.tensor(values).view(-1, 1), one_hot], dim=1) if attributes else one_hot


def expected_edges(graph: int) -> dict[tuple[int, int], int]:
    return {pair: bond for u, v, bond in GRAPHS[graph][2] for pair in ((u, v), (v, u))}


@pytest.mark.parametrize(
    ("name", "edge_labels", "use_node_attr"),
    [("MUTAG", True, False), ("PROTEINS", False, True)],  # MUTAG: node and bond labels; PROTEINS: node attributes
)
def test_tu_graphs_read_back_as_written(tmp_path, downloads, name, edge_labels, use_node_attr):
    raw = write_tu(tmp_path, name, edge_labels=edge_labels, attributes=use_node_attr)
    written = sorted(path.name for path in raw.iterdir())
    init_args = {"use_node_attr": True} if use_node_attr else {}
    module = GraphDataModule(tu_config(tmp_path, name, **init_args), task="graph", shots=2, val_shots=1)
    dataset = module.dataset
    assert isinstance(dataset, TUDataset) and len(dataset) == len(GRAPHS) == 8
    for index, graph in enumerate(dataset):
        assert torch.equal(graph.x, expected_x(index, use_node_attr)), index
        edges = {(int(a), int(b)) for a, b in graph.edge_index.t()}
        assert edges == set(expected_edges(index)), index
        assert graph.edge_index.shape[1] == 2 * len(GRAPHS[index][2])
        assert graph.y.tolist() == [GRAPHS[index][3]], index  # -1/1 or 1/2 in the file: classes 0 and 1
        if edge_labels:
            bonds = {(int(a), int(b)): int(row.argmax()) for (a, b), row in zip(graph.edge_index.t(), graph.edge_attr)}
            assert graph.edge_attr.shape[1] == EDGE_LABELS and bonds == expected_edges(index), index
        else:
            assert graph.edge_attr is None
    assert dataset[6].num_nodes == 3  # its node without an edge stays
    assert module.num_features == NODE_LABELS + use_node_attr and module.max_nodes == 4
    assert module.num_classes == 2 and module.classnames == ["class 0", "class 1"]

    splits = module._split_indices()  # 2 training and 1 validation graph per class, the rest test
    assert {split: len(ids) for split, ids in splits.items()} == {"train": 4, "val": 2, "test": 2}
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == list(range(8))
    classes = {split: sorted(GRAPHS[i][3] for i in ids) for split, ids in splits.items()}
    assert classes == {"train": [0, 0, 1, 1], "val": [0, 1], "test": [0, 1]}
    module.setup("fit")
    batch = next(iter(module.val_dataloader()))
    assert batch.num_graphs == 2 and batch.y.tolist() == [GRAPHS[i][3] for i in splits["val"]]
    assert torch.equal(batch.x, torch.cat([expected_x(i, use_node_attr) for i in splits["val"]]))

    assert downloads == []  # the raw files were there: nothing was fetched
    assert sorted(path.name for path in raw.iterdir()) == written
    again = GraphDataModule(tu_config(tmp_path, name, **init_args), task="graph", shots=-1)  # from processed/ now
    assert all(torch.equal(again.dataset[i].x, expected_x(i, use_node_attr)) for i in range(8))
    assert {split: len(ids) for split, ids in again._split_indices().items()} == {"train": 6, "val": 1, "test": 1}
    assert downloads == []


def test_tu_node_attributes_need_use_node_attr(tmp_path, downloads):
    """PyG's default drops the attributes columns: x is the node labels' one-hot only."""
    write_tu(tmp_path, "PROTEINS", edge_labels=False, attributes=True)
    module = GraphDataModule(tu_config(tmp_path, "PROTEINS"), task="graph", shots=1)
    assert module.num_features == NODE_LABELS
    assert all(torch.equal(module.dataset[i].x, expected_x(i, attributes=False)) for i in range(8))
    assert downloads == []


@pytest.mark.parametrize("missing", ["A", "graph_indicator"])
def test_a_tu_folder_without_its_edges_or_graph_ids_is_refused_offline(tmp_path, downloads, missing):
    raw = write_tu(tmp_path, "MUTAG", edge_labels=True, attributes=False)
    (raw / f"MUTAG_{missing}.txt").unlink()
    with pytest.raises(DatasetError, match="Could not build dataset torch_geometric.datasets.TUDataset"):
        GraphDataModule(tu_config(tmp_path, "MUTAG"), task="graph")
    assert downloads == ["TUDataset"]  # PyG would download the zip; offline the build stops with the reason


# -- HGB's format -----------------------------------------------------------------------------------------------------

# HGB's ACM: global node ids run over the types in order (papers 0-11, authors 12-15, subjects 16-17, terms 18-19)
ACM_TYPES = {"paper": (0, 12), "author": (12, 4), "subject": (16, 2), "term": (18, 2)}  # node type: (first id, count)
ACM_FEATURES = {
    "paper": [[float(i % 3 == c) for c in range(3)] + [i / 4] for i in range(12)],
    "author": [[1.0, 0.0, 0.0, 0.25 * j] for j in range(4)],
    "subject": [[0.0, 1.0, 0.5, -1.0 * s] for s in range(2)],
}  # terms have no features
# link type id: (meaning, [(global source, global destination)]); HGB lists both directions as separate types
ACM_LINKS = {
    0: ("paper-cite-paper", [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11), (1, 4)]),
    1: ("paper-ref-paper", [(1, 0), (3, 2), (5, 4), (7, 6), (9, 8), (11, 10), (4, 1)]),
    2: ("paper-author", [(p, 12 + p % 4) for p in range(12)]),
    3: ("author-paper", [(12 + p % 4, p) for p in range(12)]),
    4: ("paper-subject", [(p, 16 + p % 2) for p in range(12)]),
    5: ("subject-paper", [(16 + p % 2, p) for p in range(12)]),
    6: ("paper-term", [(0, 18), (3, 19), (5, 18)]),
    7: ("term-paper", [(18, 0), (19, 3), (18, 5)]),
}
ACM_EDGE_TYPES = {
    0: ("paper", "cite", "paper"),
    1: ("paper", "ref", "paper"),
    2: ("paper", "to", "author"),
    3: ("author", "to", "paper"),
    4: ("paper", "to", "subject"),
    5: ("subject", "to", "paper"),
    6: ("paper", "to", "term"),
    7: ("term", "to", "paper"),
}  # what PyG names them: the text after the first '-', or 'to' when that is the destination type
ACM_TRAIN = {0: 0, 1: 1, 2: 2, 3: 0, 4: 1, 5: 2, 6: 0, 7: 1, 8: 2}  # label.dat: paper → class
ACM_TEST = {9: 2, 10: 0}  # label.dat.test: HGB's placeholders; paper 11 is in neither file
ACM_CLASSES = ["database", "wireless communication", "data mining"]


def write_info(raw: Path, types: list[str], links: dict[int, tuple[str, list]], classes: list[str]) -> None:
    """info.dat as THUDM/HGB's preprocessing dumps it: JSON, indented, integer keys and link ends, and more
    descriptions than PyG reads."""
    info = {
        "node.dat": {"node type": dict(enumerate(types)), "Attributes": {0: "a feature"}},
        "link.dat": {
            "link type": {
                key: {"start": types.index(meaning.split("-")[0]), "end": types.index(end), "meaning": meaning}
                for key, (meaning, end) in links.items()
            }
        },
        "label.dat": {"node type": {0: dict(enumerate(classes))}},
    }
    (raw / "info.dat").write_text(json.dumps(info, indent=4))


def write_lines(path: Path, rows) -> None:
    """Tab-separated lines, each ended by a newline (PyG drops whatever follows the last one)."""
    path.write_text("".join("\t".join(str(value) for value in row) + "\n" for row in rows))


def write_hgb_acm(root: Path, test_labels: dict[int, int] = ACM_TEST) -> Path:
    raw = root / "acm" / "raw" / "ACM"
    raw.mkdir(parents=True)
    types = list(ACM_TYPES)
    ends = {key: (meaning, meaning.split("-")[-1]) for key, (meaning, _) in ACM_LINKS.items()}
    write_info(raw, types, ends, ACM_CLASSES)
    nodes = []
    for kind, (first, count) in ACM_TYPES.items():
        for local in range(count):
            row = [first + local, f"{kind}_{local}", types.index(kind)]
            if kind in ACM_FEATURES:
                row.append(",".join(repr(value) for value in ACM_FEATURES[kind][local]))
            nodes.append(row)
    write_lines(raw / "node.dat", nodes)
    write_lines(raw / "link.dat", [(s, d, key, 1.0) for key, (_, pairs) in ACM_LINKS.items() for s, d in pairs])
    write_lines(raw / "label.dat", [(p, f"paper_{p}", 0, c) for p, c in ACM_TRAIN.items()])
    write_lines(raw / "label.dat.test", [(p, f"paper_{p}", 0, c) for p, c in test_labels.items()])
    return raw


def hgb_config(root: Path, name: str) -> dict:
    return {"class_path": "torch_geometric.datasets.HGBDataset", "init_args": {"root": str(root), "name": name}}


def local(pairs, source: str, destination: str) -> list[tuple[int, int]]:
    return sorted((s - ACM_TYPES[source][0], d - ACM_TYPES[destination][0]) for s, d in pairs)


def test_hgb_acm_reads_back_as_written(tmp_path, downloads):
    write_hgb_acm(tmp_path)
    module = HeteroGraphDataModule(hgb_config(tmp_path, "acm"), target="paper", shots=1, val_shots=1)
    graph = module.graph
    assert isinstance(module.dataset, HGBDataset)
    counts = {kind: graph[kind].num_nodes for kind in graph.node_types}
    assert counts == {"paper": 12, "author": 4, "subject": 2, "term": 2}
    for kind, rows in ACM_FEATURES.items():
        assert torch.equal(graph[kind].x, torch.tensor(rows)), kind
    assert torch.equal(graph["term"].x, torch.ones(2, 1))  # featureless: one constant feature
    assert set(graph.edge_types) == set(ACM_EDGE_TYPES.values())
    for key, (source, relation, destination) in ACM_EDGE_TYPES.items():
        store = graph[source, relation, destination]
        assert sorted(map(tuple, store.edge_index.t().tolist())) == local(ACM_LINKS[key][1], source, destination)
        assert "edge_weight" not in store  # every weight is 1

    assert module.labelled().tolist() == list(ACM_TRAIN)  # label.dat only: not 9, 10 (test file), nor 11
    assert module.labels[list(ACM_TRAIN)].tolist() == list(ACM_TRAIN.values())
    assert graph["paper"].y[11] == -1 and graph["paper"].y[[9, 10]].tolist() == [2, 0]  # PyG keeps the placeholders
    assert module.classnames == ["class 0", "class 1", "class 2"]
    splits = module.split_indices()
    assert {split: len(ids) for split, ids in splits.items()} == {"train": 3, "val": 3, "test": 3}
    assert sorted(torch.cat(list(splits.values())).tolist()) == list(ACM_TRAIN)
    assert sorted(ACM_TRAIN[int(p)] for p in splits["train"]) == [0, 1, 2]  # one per class
    module.setup("fit")
    for split, loader in (("train", module.train_dataloader()), ("test", module.test_dataloader())):
        view = next(iter(loader))
        assert view["paper"].target_mask.nonzero().view(-1).tolist() == splits[split].tolist()
        assert view["paper"].y[splits[split]].tolist() == [ACM_TRAIN[int(p)] for p in splits[split]]
    assert downloads == []


@pytest.mark.parametrize("test_labels", [{9: 0, 10: 1, 11: 2}, {}], ids=["other_placeholders", "empty_test_file"])
def test_hgb_test_labels_are_never_used(tmp_path, downloads, test_labels):
    """Whatever label.dat.test holds, the labelled nodes, their labels, the classes and every split are the same."""
    write_hgb_acm(tmp_path / "a")
    write_hgb_acm(tmp_path / "b", test_labels=test_labels)
    first, second = (HeteroGraphDataModule(hgb_config(tmp_path / folder, "acm"), target="paper", shots=1, seed=3)
                     for folder in "ab")  # fmt: skip
    assert first.labelled().tolist() == second.labelled().tolist() == list(ACM_TRAIN)
    assert first.classnames == second.classnames
    for split, ids in first.split_indices().items():
        assert torch.equal(second.split_indices()[split], ids)
        assert torch.equal(first.labels[ids], second.labels[ids])
    assert downloads == []


@pytest.mark.parametrize("missing", ["info.dat", "node.dat", "link.dat", "label.dat", "label.dat.test"])
def test_an_hgb_folder_missing_a_file_is_refused_offline(tmp_path, downloads, missing):
    (write_hgb_acm(tmp_path) / missing).unlink()
    with pytest.raises(DatasetError, match="Could not build dataset torch_geometric.datasets.HGBDataset"):
        HeteroGraphDataModule(hgb_config(tmp_path, "acm"), target="paper", shots=1)
    assert downloads == ["HGBDataset"]  # PyG checks all five files, label.dat.test too, before it would download


# HGB's IMDB: movies 0-7 (features), directors 8-9 and actors 10-11 (features), keywords 12-13 (none); five genres,
# multi-hot, written in the order of the movie's genre list as the preprocessing does
IMDB_TYPES = ["movie", "director", "actor", "keyword"]
IMDB_LINKS = {
    0: ("movie->director", "director", [(m, 8 + m % 2) for m in range(8)]),
    1: ("director->movie", "movie", [(8 + m % 2, m) for m in range(8)]),
    2: ("movie->actorh", "actor", [(m, 10 + m % 2) for m in range(8)] + [(0, 11)]),
    3: ("actor->movie", "movie", [(10 + m % 2, m) for m in range(8)] + [(11, 0)]),
    4: ("movie->keyword", "keyword", [(1, 12), (2, 13)]),
    5: ("keyword->movie", "movie", [(12, 1), (13, 2)]),
}
IMDB_TRAIN = {0: "3,0", 1: "1,4", 2: "2", 3: "0", 4: "4,2,1", 5: "2,3"}  # label.dat: movie → genres
IMDB_CLASS = {0: 0, 1: 1, 2: 2, 3: 0, 4: 1, 5: 2}  # its lowest-numbered genre
IMDB_TEST = {6: "0,1,2,3,4", 7: "4"}  # label.dat.test placeholders


def write_hgb_imdb(root: Path) -> Path:
    raw = root / "imdb" / "raw" / "IMDB"
    raw.mkdir(parents=True)
    write_info(raw, IMDB_TYPES, {k: (meaning, end) for k, (meaning, end, _) in IMDB_LINKS.items()},
               ["Romance", "Thriller", "Comedy", "Action", "Drama"])  # fmt: skip
    nodes = [(m, f"Movie_{m}", 0, f"{m / 8},1.0") for m in range(8)]
    nodes += [(8 + d, f"Director_{d}", 1, f"{d}.0,0.5") for d in range(2)]
    nodes += [(10 + a, f"Actor_{a}", 2, f"0.5,{a}.0") for a in range(2)]
    nodes += [(12 + k, f"keyword_{k}", 3) for k in range(2)]
    write_lines(raw / "node.dat", nodes)
    write_lines(raw / "link.dat", [(s, d, key, 1) for key, (_, _, pairs) in IMDB_LINKS.items() for s, d in pairs])
    write_lines(raw / "label.dat", [(m, f"Movie_{m}", 0, genres) for m, genres in IMDB_TRAIN.items()])
    write_lines(raw / "label.dat.test", [(m, f"Movie_{m}", 0, genres) for m, genres in IMDB_TEST.items()])
    return raw


def test_hgb_imdb_multi_hot_genres_read_as_their_lowest_numbered_one(tmp_path, downloads):
    write_hgb_imdb(tmp_path)
    module = HeteroGraphDataModule(hgb_config(tmp_path, "imdb"), target="movie", shots=1, val_shots=1)
    graph = module.graph
    counts = {kind: graph[kind].num_nodes for kind in IMDB_TYPES}
    assert counts == {"movie": 8, "director": 2, "actor": 2, "keyword": 2}
    assert torch.equal(graph["movie"].x, torch.tensor([[m / 8, 1.0] for m in range(8)]))
    assert torch.equal(graph["actor"].x, torch.tensor([[0.5, 0.0], [0.5, 1.0]]))
    assert torch.equal(graph["keyword"].x, torch.ones(2, 1))
    actors = graph["movie", ">actorh", "actor"].edge_index  # HGB's misspelt meaning names the relation
    assert sorted(map(tuple, actors.t().tolist())) == sorted([(m, m % 2) for m in range(8)] + [(0, 1)])
    keywords = graph["keyword", "to", "movie"].edge_index
    assert sorted(map(tuple, keywords.t().tolist())) == [(0, 1), (1, 2)]
    multi_hot = graph["movie"].y
    assert multi_hot.shape == (8, 5) and multi_hot[4].tolist() == [0, 1, 1, 0, 1]
    assert module.labelled().tolist() == list(IMDB_TRAIN)  # not the test file's 6, 7
    assert module.labels[list(IMDB_TRAIN)].tolist() == list(IMDB_CLASS.values())
    assert module.classnames == ["class 0", "class 1", "class 2"]  # genres 3 and 4 are never a movie's lowest
    splits = module.split_indices()
    assert {split: len(ids) for split, ids in splits.items()} == {"train": 3, "val": 3, "test": 0}
    module.setup("fit")
    view = next(iter(module.train_dataloader()))
    assert view["movie"].y.dim() == 1  # class indices, as cross-entropy takes them
    assert view["movie"].y[splits["train"]].tolist() == [IMDB_CLASS[int(m)] for m in splits["train"]]
    assert downloads == []


@pytest.mark.parametrize(("recipe", "write", "target"), [("acm_5shot", write_hgb_acm, "paper"),
                                                          ("imdb_5shot", write_hgb_imdb, "movie")])  # fmt: skip
def test_the_hgb_recipes_data_block_reads_a_folder_at_its_root(tmp_path, monkeypatch, downloads, recipe, write, target):
    """The recipe's dataset block as written (root ``data/hgb``, relative to where the run starts), with the 1-shot
    setting its header names, builds the graph from files put where the recipe's comment says."""
    data = merged_section(RECIPES / "hetgpt" / f"{recipe}.yaml", "data")
    assert data["class_path"] == "HeteroGraphDataModule" and data["init_args"]["target"] == target
    dataset = data["init_args"]["dataset"]
    assert dataset["class_path"] == "torch_geometric.datasets.HGBDataset" and dataset["init_args"]["root"] == "data/hgb"
    write(tmp_path / "data" / "hgb")
    monkeypatch.chdir(tmp_path)
    module = HeteroGraphDataModule(**{**data["init_args"], "shots": 1, "val_shots": 1})
    assert isinstance(module.dataset, HGBDataset) and module.graph[target].num_nodes in (8, 12)
    assert len(module.split_indices()["train"]) == 3
    assert downloads == []


def test_an_empty_hgb_split_is_a_clear_error(tmp_path, downloads):
    write_hgb_imdb(tmp_path)  # 2 labelled movies per class: 1 + 1 shots leave no test movie
    module = HeteroGraphDataModule(hgb_config(tmp_path, "imdb"), target="movie", shots=1, val_shots=1)
    module.setup("fit")
    assert len(module._splits["test"]) == 0 and module._splits["test"].dtype == torch.long
    with pytest.raises(DatasetError, match="no labelled movie nodes are left for the test split"):
        module.test_dataloader()
    with pytest.raises(DatasetError, match="val_shots must be at least 1"):
        HeteroGraphDataModule(hgb_config(tmp_path, "imdb"), target="movie", shots=1, val_shots=0)
