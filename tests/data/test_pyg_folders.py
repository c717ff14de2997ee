"""PyG datasets built from local folders: Planetoid's raw format reads, and no file of the folder can run code
(raw pickles, processed torch files), which PyG's own loaders would let it."""

from __future__ import annotations

import collections
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sparse
import torch
from helpers import CodeInPickle

from lightning_prompts.data.graph import GraphDataModule, instantiate_dataset
from lightning_prompts.errors import DatasetError

NODES, FEATURES, CLASSES, TRAIN, TEST = 540, 5, 3, 6, 30  # Planetoid validates on the 500 nodes after y


def write_planetoid(root: Path, protocol: int = 2) -> dict[str, object]:
    """Kipf's ``ind.cora.*`` files (what PyG's Planetoid reads from ``<root>/Cora/raw``) for a small graph:
    sparse features, one-hot labels, an adjacency dict and the test nodes' indices."""
    rng = np.random.default_rng(0)
    features = (rng.random((NODES, FEATURES)) > 0.5).astype(np.float32)
    labels = np.eye(CLASSES, dtype=np.int64)[np.arange(NODES) % CLASSES]
    test_index = list(range(NODES - TEST, NODES))
    graph = collections.defaultdict(list, {i: [(i + 1) % NODES, (i + 3) % NODES] for i in range(NODES)})
    raw = root / "Cora" / "raw"
    raw.mkdir(parents=True)
    parts = {
        "x": sparse.csr_matrix(features[:TRAIN]),
        "allx": sparse.csr_matrix(features[: NODES - TEST]),
        "tx": sparse.csr_matrix(features[NODES - TEST :]),
        "y": labels[:TRAIN],
        "ally": labels[: NODES - TEST],
        "ty": labels[NODES - TEST :],
        "graph": graph,
    }
    for name, value in parts.items():
        (raw / f"ind.cora.{name}").write_bytes(pickle.dumps(value, protocol=protocol))
    (raw / "ind.cora.test.index").write_text("\n".join(map(str, test_index)) + "\n")
    return {"features": features, "labels": labels.argmax(1), "graph": graph}


def planetoid(root: Path):
    return instantiate_dataset({"class_path": "Planetoid", "init_args": {"root": str(root), "name": "Cora"}})


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_planetoid_reads_its_raw_format_from_a_local_folder(tmp_path, protocol):
    written = write_planetoid(tmp_path, protocol)
    data = planetoid(tmp_path)[0]
    assert torch.equal(data.x, torch.from_numpy(written["features"]))
    assert torch.equal(data.y, torch.from_numpy(written["labels"]))
    edges = {(int(a), int(b)) for a, b in data.edge_index.t()}
    expected = {(i, j) for i, targets in written["graph"].items() for j in targets}
    assert edges == expected
    assert int(data.train_mask.sum()) == TRAIN and int(data.test_mask.sum()) == TEST
    again = planetoid(tmp_path)[0]  # the second time from processed/, read as weights only
    assert torch.equal(again.x, data.x) and torch.equal(again.edge_index, data.edge_index)
    module = GraphDataModule({"class_path": "Planetoid", "init_args": {"root": str(tmp_path), "name": "Cora"}},
                             task="node", shots=1, val_shots=1)  # fmt: skip
    module.setup("fit")
    assert module.classnames == ["class 0", "class 1", "class 2"]
    assert {split: len(nodes) for split, nodes in module._split_indices().items()} == {
        "train": 3,
        "val": 3,
        "test": 534,
    }


def test_a_hostile_raw_pickle_runs_no_code(tmp_path):
    write_planetoid(tmp_path)
    marker = tmp_path / "pwned"
    (tmp_path / "Cora" / "raw" / "ind.cora.ally").write_bytes(pickle.dumps(CodeInPickle(marker), protocol=2))
    with pytest.raises(DatasetError, match=r"Planetoid.*system.*not allowed"):
        planetoid(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["pre_transform.pt", "pre_filter.pt", "data.pt"])
def test_a_hostile_processed_file_runs_no_code(tmp_path, name):
    write_planetoid(tmp_path)
    planetoid(tmp_path)  # processes the raw files into processed/
    marker = tmp_path / "pwned"
    processed = tmp_path / "Cora" / "processed"
    torch.save({"payload": CodeInPickle(marker)}, processed / name)
    with pytest.raises(DatasetError, match="(?i)weights.only"):
        planetoid(tmp_path)
    assert not marker.exists()
    shutil.rmtree(processed)  # with the processed folder gone, the raw files build it again
    assert planetoid(tmp_path)[0].num_nodes == NODES


def test_the_loaders_are_restored_after_a_build_and_after_a_refusal(tmp_path):
    originals = (torch.load, np.load, pickle.load, pickle.loads)
    write_planetoid(tmp_path / "good")
    planetoid(tmp_path / "good")
    with pytest.raises(DatasetError):
        planetoid(tmp_path / "missing")  # no raw files, nothing to download offline
    assert (torch.load, np.load, pickle.load, pickle.loads) == originals
