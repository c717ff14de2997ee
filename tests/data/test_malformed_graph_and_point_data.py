"""Malformed molecule CSVs, graph labels and point-cloud files: each is refused at setup with a DatasetError that
names the file (or dataset), the culprit and the fix, instead of a raw decoding, gzip or index error, a silently
wrong label, or a crash at the first batch."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from torch_geometric.data import Data, InMemoryDataset

from lightning_prompts.data.graph import GraphDataModule
from lightning_prompts.data.point_clouds import PointCloudDataModule
from lightning_prompts.errors import DatasetError

# -- MoleculeNet CSVs -----------------------------------------------------------------------------------------------
# eight molecules of several scaffolds: the scaffold split gives train 6, val 1, test 1
MOLECULES = ["c1ccccc1O", "c1ccncc1C", "C1CCCCC1N", "c1ccsc1", "CCO", "CCN", "c1ccccc1C", "C1CCNCC1"]


def molecules(tmp_path, name: str, content: str | bytes):
    pytest.importorskip("rdkit")
    from lightning_prompts.data.molecules import MoleculeNetDataModule

    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path, lambda **kwargs: MoleculeNetDataModule(str(path), **kwargs)


ROWS = "".join(f"{smiles},{i % 2}\n" for i, smiles in enumerate(MOLECULES))

BAD_CSVS = {
    "latin1": ("l.csv", "smiles,p_np,name\nCCO,1,x\nCC,0,\xe9thanol\n".encode("latin-1"), ["not UTF-8", "line 3"]),
    "not_gzip": ("f.csv.gz", "smiles,p_np\n" + ROWS, ["named .gz but cannot be decompressed"]),
    "truncated_gzip": ("t.csv.gz", gzip.compress(("smiles,p_np\n" + ROWS).encode())[:30], ["cannot be decompressed"]),
    "duplicate_header": ("d.csv", "smiles,t,t\nCCO,1,0\nCCC,0,1\n", ["['t'] more than once"]),
}


@pytest.mark.parametrize("case", list(BAD_CSVS))
def test_a_malformed_csv_is_refused_naming_the_file_and_the_culprit(case, tmp_path):
    name, content, culprits = BAD_CSVS[case]
    path, data = molecules(tmp_path, name, content)
    with pytest.raises(DatasetError) as error:
        data()
    assert str(path) in str(error.value)
    for culprit in culprits:
        assert culprit in str(error.value)


def test_a_gzipped_csv_with_a_byte_order_mark_is_read(tmp_path):
    _, data = molecules(tmp_path, "m.csv.gz", gzip.compress(("\ufeffsmiles,p_np\n" + ROWS).encode()))
    assert data().classnames == ["p_np"]


def test_unparseable_smiles_are_reported_with_examples_and_none_parsing_is_refused(tmp_path):
    bad = "".join(f"notasmiles{i},1\n" for i in range(4))
    _, data = molecules(tmp_path, "some.csv", "smiles,p_np\n" + bad + ROWS)
    with pytest.warns(UserWarning, match=r"skipped 4 of 12 rows .*line 2: 'notasmiles0'"):
        assert data().skipped == 4
    path, data = molecules(tmp_path, "none.csv", "smiles,p_np\n" + bad)
    with pytest.raises(DatasetError, match=r"none of its 4 rows .*'notasmiles0'") as error:
        data()
    assert str(path) in str(error.value)


def test_a_split_left_empty_is_refused_with_the_split_sizes(tmp_path):
    path, data = molecules(tmp_path, "two.csv", "smiles,p_np\nc1ccccc1O,1\nc1ccccc1C,0\n")  # one scaffold
    module = data()
    with pytest.raises(DatasetError, match=r"leaves train and val empty \(train 0, val 0, test 2\)") as error:
        module.setup("fit")
    assert str(path) in str(error.value)
    module.setup("test")  # testing needs only the test split
    _, data = molecules(tmp_path, "random.csv", "smiles\nCCO\n")
    with pytest.raises(DatasetError, match=r"leaves train empty \(train 0, val 0, test 1\)"):
        data(tasks=[], split="random").setup("fit")  # pre-training without labels: only train must be non-empty
    _, data = molecules(tmp_path, "ok.csv", "smiles,p_np\n" + ROWS)
    module = data()
    module.setup("fit")
    assert [len(module._splits[name]) for name in ("train", "val", "test")] == [6, 1, 1]


# -- graph labels ---------------------------------------------------------------------------------------------------
class Graphs(InMemoryDataset):
    def __init__(self, graphs):
        super().__init__()
        self.data, self.slices = self.collate(graphs)


def one_graph(y):
    nodes = len(y)
    return [Data(x=torch.randn(nodes, 4), edge_index=torch.randint(0, nodes, (2, 30)), y=y)]


def graphs(labels):
    return [Data(x=torch.randn(3, 4), edge_index=torch.tensor([[0, 1], [1, 2]]), y=y) for y in labels]


def negative_node_labels():
    y = torch.tensor([0, 1, 2] * 4)
    y[9:] = -1
    return {"dataset": one_graph(y), "task": "node", "shots": 1}, ["list dataset", "node 9 has label -1", "3 nodes"]


def one_hot_node_labels():
    y = torch.nn.functional.one_hot(torch.tensor([0, 1] * 6)).float()
    return {"dataset": one_graph(y), "task": "node", "shots": 1}, ["shape (12, 2) for 12 nodes", "argmax"]


def multi_task_graph_labels():
    labels = [torch.tensor([[i % 2, 1 - i % 2, 1]]) for i in range(12)]
    return {"dataset": Graphs(graphs(labels)), "task": "graph", "shots": 2}, ["Graphs dataset", "graph 0", "(1, 3)"]


def float_graph_labels():
    labels = [torch.tensor([0.5 + 0.6 * (i % 3)]) for i in range(12)]
    return {"dataset": Graphs(graphs(labels)), "task": "graph", "shots": 1}, ["graph 0 has label 0.5", "float32"]


def one_float_label_among_integers():
    labels = [torch.tensor([i % 2]) for i in range(12)]
    labels[4] = torch.tensor([1.7])
    return {"dataset": graphs(labels), "task": "graph", "shots": 1}, ["graph 4 has label 1.7"]


def negative_graph_label():
    labels = [torch.tensor([i % 2]) for i in range(12)]
    labels[5] = torch.tensor([-1])
    return {"dataset": Graphs(graphs(labels)), "task": "graph", "shots": 1}, ["graph 5 has label -1"]


def an_edge_past_the_last_node():
    (graph,) = one_graph(torch.tensor([0, 1] * 6))
    graph.edge_index[1, 3] = 12
    return {"dataset": [graph], "task": "node", "shots": 1}, ["edge_index holds node 12, outside 0..11"]


def a_graph_with_a_negative_edge_index():
    labels = [torch.tensor([i % 2]) for i in range(12)]
    dataset = graphs(labels)
    dataset[6].edge_index = torch.tensor([[0, -1], [1, 2]])
    return {"dataset": dataset, "task": "graph", "shots": 1}, ["graph 6: edge_index holds node -1, outside 0..2"]


def ego_graphs_of_unlabelled_nodes():
    y = torch.tensor([0, 1] * 6)
    y[7] = -1
    return {"dataset": one_graph(y), "task": "node", "shots": 1, "ego_hops": 1}, ["node 7 has label -1"]


LABEL_CASES = [
    negative_node_labels,
    one_hot_node_labels,
    multi_task_graph_labels,
    float_graph_labels,
    one_float_label_among_integers,
    negative_graph_label,
    ego_graphs_of_unlabelled_nodes,
    an_edge_past_the_last_node,
    a_graph_with_a_negative_edge_index,
]


@pytest.mark.parametrize("case", LABEL_CASES, ids=[case.__name__ for case in LABEL_CASES])
def test_labels_that_are_not_one_class_index_each_are_refused_naming_the_first(case):
    torch.manual_seed(0)
    arguments, culprits = case()
    data = GraphDataModule(**arguments)
    with pytest.raises(DatasetError) as error:
        data.setup("fit")
    for culprit in culprits:
        assert culprit in str(error.value)


@pytest.mark.parametrize("dtype", [torch.long, torch.uint8])
def test_integer_class_indices_are_accepted(dtype):
    torch.manual_seed(0)
    node = GraphDataModule(one_graph(torch.tensor([0, 1, 2] * 4, dtype=dtype)), task="node", shots=1)
    node.setup("fit")
    assert node.classnames == ["class 0", "class 1", "class 2"]
    labels = [torch.tensor([i % 2], dtype=dtype) for i in range(12)]
    graph = GraphDataModule(Graphs(graphs(labels)), task="graph", shots=2)
    graph.setup("fit")
    assert graph.num_classes == 2 and len(graph._splits["train"]) == 4


# -- point clouds ---------------------------------------------------------------------------------------------------
def write_modelnet(root, sizes):
    root.mkdir()
    (root / "modelnet40_shape_names.txt").write_text("airplane\nbed\n")
    shapes = []
    for i, points in enumerate(sizes):
        name = ("airplane", "bed")[i % 2]
        (root / name).mkdir(exist_ok=True)
        shape = f"{name}_{i:04d}"
        cloud = np.random.default_rng(i).random((points, 6))
        np.savetxt(root / name / f"{shape}.txt", cloud, delimiter=",", fmt="%.4f")
        shapes.append(shape)
    for split in ("train", "test"):
        (root / f"modelnet40_{split}.txt").write_text("\n".join(shapes) + "\n")
    return root


def test_a_truncated_modelnet40_file_is_refused_at_setup_naming_it_and_its_count(tmp_path):
    root = write_modelnet(tmp_path / "modelnet", [50, 50, 37, 50])
    data = PointCloudDataModule("modelnet40", str(root), num_points=32, train_pool=32, batch_size=4)
    with pytest.raises(DatasetError, match="airplane_0002.txt has 37 points where other files give 50") as error:
        data.setup("fit")
    assert "1 of the 4 files modelnet40_train.txt lists" in str(error.value)
    equal = PointCloudDataModule("modelnet40", str(write_modelnet(tmp_path / "ok", [50] * 4)), num_points=32)
    equal.setup("fit")
    assert next(iter(equal.train_dataloader()))["points"].shape == (4, 50, 3)


def test_shapenet55_clouds_missing_from_disk_are_refused_at_setup(tmp_path):
    root = tmp_path / "ShapeNet55-34"
    (root / "ShapeNet-55").mkdir(parents=True)
    (root / "shapenet_pc").mkdir()
    np.save(root / "shapenet_pc" / "02691156-a.npy", np.random.default_rng(0).random((64, 3)).astype(np.float32))
    listed = ["02691156-a.npy", *(f"03001627-missing{i}.npy" for i in range(4))]
    (root / "ShapeNet-55" / "train.txt").write_text("\n".join(listed) + "\n")
    (root / "ShapeNet-55" / "test.txt").write_text("02691156-a.npy\n")
    data = PointCloudDataModule("shapenet55", str(root), num_points=32, train_pool=32, batch_size=2)
    with pytest.raises(DatasetError, match="4 of the 5 clouds ShapeNet-55 train.txt lists are missing") as error:
        data.setup("fit")
    assert str(root / "shapenet_pc") in str(error.value) and "03001627-missing0.npy" in str(error.value)


def test_a_modelnet40_file_with_a_nan_coordinate_is_refused_naming_the_line(tmp_path):
    root = write_modelnet(tmp_path / "modelnet", [50] * 4)
    path = root / "bed" / "bed_0001.txt"
    lines = path.read_text().splitlines()
    lines[6] = "nan," + lines[6].split(",", 1)[1]
    path.write_text("\n".join(lines) + "\n")
    data = PointCloudDataModule("modelnet40", str(root), num_points=32, train_pool=32, batch_size=4)
    with pytest.raises(DatasetError, match=r"bed_0001.txt: line 7 has a non-finite coordinate \(1 lines\)"):
        data.setup("fit")


@pytest.mark.parametrize(
    ("labels", "culprit"), [([0.0, 2.7, 1.0], "not whole numbers, e.g. 2.7"), ([0, 1, 2], "cloud 1 has a non-finite")]
)
def test_scanobjectnn_fractional_labels_and_nan_clouds_are_refused(tmp_path, labels, culprit):
    h5py = pytest.importorskip("h5py")
    from lightning_prompts.data.point_clouds import read_scanobjectnn

    folder = tmp_path / "h5_files" / "main_split"
    folder.mkdir(parents=True)
    data = np.random.default_rng(0).random((3, 16, 3)).astype(np.float32)
    if culprit.startswith("cloud"):
        data[1, 5, 2] = np.inf
    with h5py.File(folder / "training_objectdataset_augmentedrot_scale75.h5", "w") as file:
        file["data"], file["label"] = data, np.asarray(labels)
    with pytest.raises(DatasetError, match=culprit):
        read_scanobjectnn(tmp_path / "h5_files", "pb_t50_rs", "training")
