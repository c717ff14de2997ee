"""Pretrain-GNNs' biology dataset: its processed file (PyG 1.0's collated Data, torch's legacy format) read without
unpickling code, the species split against a transcription of the official ``splitters.py`` and GPF's few-shot draw,
the centre-node readout against the official ``GNN_graphpred``, and one ROC-AUC per test set."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from helpers import CodeInPickle, bio_ego_networks, unlabelled_bio_networks, write_processed_bio
from lightning.pytorch import Trainer
from sklearn.metrics import roc_auc_score
from torch_geometric.data import Batch

from lightning_prompts.backbones import BioGIN
from lightning_prompts.data.bio import (
    TEST_SPECIES,
    TRAIN_VALID_SPECIES,
    BioDataModule,
    read_bio_dataset,
    species_split_indices,
)
from lightning_prompts.errors import ConfigurationError, DatasetError
from lightning_prompts.methods import GPF

TINY = Path(__file__).resolve().parents[2] / "recipes" / "_tiny" / "bio"


def test_the_processed_file_reads_as_pretrain_gnns_wrote_it(tmp_path):
    networks = bio_ego_networks(train=5, test=3, tasks=4)
    graphs = read_bio_dataset(write_processed_bio(tmp_path / "processed" / "geometric_data_processed.pt", networks))
    assert len(graphs) == 8 and read_bio_dataset(tmp_path)[7].species_id.item() == TEST_SPECIES[0]  # folder: same
    for graph, network in zip(graphs, networks, strict=True):
        assert torch.equal(graph.x, network["x"]) and torch.equal(graph.edge_index, network["edge_index"])
        assert torch.equal(graph.edge_attr, network["edge_attr"])
        assert torch.equal(graph.center_index, network["center_node_idx"])
        assert torch.equal(graph.y, network["go_target_downstream"].float().view(1, 4))
        assert "go_target_pretrain" not in graph  # the pre-training labels are not the downstream tasks
    # batching offsets each centre to its graph's nodes, as the official BatchFinetune does for center_node_idx
    first = [graphs[i] for i in range(3)]
    batch = Batch.from_data_list(first)
    offsets = torch.tensor([0, graphs[0].num_nodes, graphs[0].num_nodes + graphs[1].num_nodes])
    assert torch.equal(batch.center_index, torch.cat([g.center_index for g in first]) + offsets)


def test_the_shipped_tiny_dataset_is_the_helpers():
    """recipes/_tiny/bio (the recipes' overlay) is ``write_processed_bio(bio_ego_networks(28, 12))``."""
    graphs, networks = read_bio_dataset(TINY), bio_ego_networks(28, 12)
    assert len(graphs) == len(networks) == 40
    for graph, network in zip(graphs, networks, strict=True):
        assert torch.equal(graph.edge_index, network["edge_index"])
        assert torch.equal(graph.y.view(-1).long(), network["go_target_downstream"])


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy_format", "zip_format"])
def test_a_file_that_would_run_code_is_refused_without_running_it(legacy, tmp_path):
    path, marker = tmp_path / "geometric_data_processed.pt", tmp_path / "ran"
    torch.save((CodeInPickle(marker), {}), path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(DatasetError, match="could not be read as the processed bio dataset"):
        read_bio_dataset(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("edge_index", lambda net: net["edge_index"] + 10, r"graph 1: edge_index holds nodes outside"),
        ("go_target_downstream", lambda net: net["go_target_downstream"] + 2, r"graph 1: .*values other than 0/1"),
        ("center_node_idx", lambda net: net["center_node_idx"] + 10, r"graph 1: center_node_idx"),
        ("edge_attr", lambda net: net["edge_attr"][:-1], r"graph 1: edge_attr has another number of rows"),
    ],
)
def test_a_malformed_graph_is_named(field, value, message, tmp_path):
    networks = bio_ego_networks(train=3, test=1)
    networks[1][field] = value(networks[1])
    with pytest.raises(DatasetError, match=message):
        read_bio_dataset(write_processed_bio(tmp_path / "data.pt", networks))


def test_the_unsupervised_dataset_reads_without_labels_and_a_missing_field_is_named(tmp_path):
    """dataset/unsupervised (pre-training) has no GO-term labels: its graphs have no ``y`` and no task names."""
    unlabelled = unlabelled_bio_networks(8, 2)
    data = BioDataModule(str(write_processed_bio(tmp_path / "unsupervised.pt", unlabelled)), split="random")
    data.setup("fit")
    assert data.classnames == [] and len(data.graphs) == 10 and "y" not in data.graphs[3]
    assert torch.equal(data.graphs[3].edge_index, unlabelled[3]["edge_index"])
    no_centres = [{k: v for k, v in net.items() if k != "center_node_idx"} for net in unlabelled]
    with pytest.raises(DatasetError, match=r"lacks \['center_node_idx'\].*dataset/unsupervised"):
        read_bio_dataset(write_processed_bio(tmp_path / "data.pt", no_centres))
    with pytest.raises(DatasetError, match="does not exist: give the processed bio dataset"):
        read_bio_dataset(tmp_path / "nowhere")


def official_species_protocol(species: list[int], seed: int, shots: int | None) -> dict[str, list[int]]:
    """``species_split``, then ``random_split`` (85/15, ``frac_test=0``) or GPF's ``random_split_abs_value``, and the
    halving of the test species, transcribed from pretrain-gnns' and GPF's ``splitters.py`` (global ``random``)."""
    ids = torch.tensor(species)
    train_valid_mask = torch.zeros(len(ids), dtype=torch.uint8)
    for s in [3702, 6239, 511145, 7227, 10090, 4932, 7955]:
        train_valid_mask += ids == s
    test_mask = torch.zeros(len(ids), dtype=torch.uint8)
    for s in [9606]:
        test_mask += ids == s
    train_valid = torch.arange(len(ids))[train_valid_mask.bool()].tolist()  # dataset[byte_tensor]: file order
    test = torch.arange(len(ids))[test_mask.bool()].tolist()
    n = len(train_valid)
    random.seed(seed)
    all_idx = list(range(n))
    random.shuffle(all_idx)
    if shots is None:
        train_idx = all_idx[: int(0.85 * n)]
        valid_idx = all_idx[int(0.85 * n) : int(0.15 * n) + int(0.85 * n)]
    else:
        train_idx = all_idx[:shots]
        valid_idx = all_idx[int((1 - 0.15 - 0) * n) : int((1 - 0) * n)]
    m = len(test)
    random.seed(seed)
    test_idx = list(range(m))
    random.shuffle(test_idx)
    return {
        "train": [train_valid[i] for i in train_idx],
        "val": [train_valid[i] for i in valid_idx],
        "broad": [test[i] for i in test_idx[: int(0.5 * m)]],
        "none": [test[i] for i in test_idx[int(0.5 * m) : int(0.5 * m) + int(0.5 * m)]],
    }


@pytest.mark.parametrize("shots", [None, 5])
def test_the_species_split_is_the_official_one(shots):
    generator = random.Random(3)
    species = [generator.choice(TRAIN_VALID_SPECIES + TEST_SPECIES * 3) for _ in range(61)]  # interleaved
    ours = species_split_indices(species, 42, shots, "file")
    assert ours == official_species_protocol(species, 42, shots)
    count = sum(s in TRAIN_VALID_SPECIES for s in species)
    assert len(ours["train"]) == (shots or int(0.85 * count))
    assert len(ours["val"]) == (count - int(0.85 * count) if shots else int(0.15 * count))
    assert all(species[i] == 9606 for i in ours["broad"] + ours["none"]) and ours["broad"] and ours["none"]
    assert ours != species_split_indices(species, 0, shots, "file")  # the seed draws


def test_a_species_outside_the_split_is_named():
    with pytest.raises(DatasetError, match=r"species \[1234\].*use split: random"):
        species_split_indices([3702, 9606, 1234], 42, None, "file")


def test_shots_need_the_species_split():
    with pytest.raises(ConfigurationError, match="needs split='species'"):
        BioDataModule(str(TINY), split="random", shots=5)


def tiny_gpf(**options) -> GPF:
    torch.manual_seed(0)
    return GPF(BioGIN(num_layers=2, emb_dim=8), [f"go_task_{i}" for i in range(3)], objective="masked_bce", **options)


def test_the_centre_readout_is_the_official_gnn_graphpreds():
    """GNN_graphpred (bio): ``[mean pool ‖ node_representation[center_node_idx]]`` into the head, per graph."""
    module = tiny_gpf(center_node=True, variant="gpf-plus", num_bases=3).eval()
    with torch.no_grad():
        module.prompt.bases.normal_(std=1.0)  # a prompt that moves the embeddings
    graphs = [read_bio_dataset(TINY)[i] for i in range(4)]
    with torch.no_grad():
        logits = module(Batch.from_data_list(graphs)).logits
        expected = []
        for graph in graphs:  # one graph at a time: no batching offsets
            nodes = module.backbone.encode_nodes(graph.x, graph.edge_index, hooks=module.block_hooks(),
                                                 edge_attr=graph.edge_attr)  # fmt: skip
            expected.append(module.head(torch.cat([nodes.mean(dim=0), nodes[graph.center_index.item()]])))
    assert module.head[0].in_features == 16  # twice the 8-wide embeddings
    torch.testing.assert_close(logits, torch.stack(expected), rtol=1e-5, atol=1e-6)
    assert logits.std(dim=0).min() > 1e-3  # the graphs score differently


def test_the_centre_readout_needs_graphs_that_mark_a_centre(tmp_path, trainer_kwargs):
    from lightning_prompts.data import GraphDataModule

    with pytest.raises(ValueError, match="needs task='graph'"):
        tiny_gpf(center_node=True, task="node")
    fake = {"num_graphs": 8, "task": "graph", "num_channels": 1}
    data = GraphDataModule({"class_path": "torch_geometric.datasets.FakeDataset", "init_args": fake}, task="graph")
    module = GPF(BioGIN(num_layers=2, emb_dim=8), data.classnames, center_node=True)
    with pytest.raises(ConfigurationError, match="mark no centre node"):
        module.check_ready("fit", [], data)


def test_each_test_set_is_scored_on_its_own_and_predict_covers_both(trainer_kwargs):
    module = tiny_gpf(center_node=True)
    with torch.no_grad():
        module.head[0].weight.normal_(std=1.0)
    data = BioDataModule(str(TINY), batch_size=4, eval_batch_size=4)
    (broad, none) = Trainer(**trainer_kwargs).test(module, data)
    results = broad | none
    data.setup("test")
    for name in ("broad", "none"):
        graphs = list(data._splits[name])
        with torch.no_grad():
            scores = module(Batch.from_data_list(graphs)).logits
        labels = torch.cat([graph.y for graph in graphs])
        aucs = [roc_auc_score(labels[:, t], scores[:, t]) for t in range(3) if 0 < labels[:, t].sum() < len(graphs)]
        assert results[f"test/roc_auc_{name}"] == pytest.approx(sum(aucs) / len(aucs), abs=1e-6)
        assert results[f"test/tasks_scored_{name}"] == pytest.approx(len(aucs) / 3)
    assert results["test/roc_auc_broad"] != results["test/roc_auc_none"]
    predictions = Trainer(**trainer_kwargs).predict(module, data)
    assert sum(len(batch["logits"]) for batch in predictions) == 12  # 6 broad, then 6 none


def test_a_node_tasks_ego_graphs_read_their_centre_too():
    """GraphDataModule's ego-graphs mark the node they classify (``center_index``): ``center_node`` reads it."""
    from lightning_prompts.backbones import GNN
    from lightning_prompts.data import GraphDataModule

    fake = {"num_graphs": 1, "task": "node", "num_channels": 4, "avg_num_nodes": 40, "num_classes": 3}
    data = GraphDataModule({"class_path": "torch_geometric.datasets.FakeDataset", "init_args": fake}, task="node",
                           ego_hops=1, shots=2)  # fmt: skip
    module = GPF(GNN("gin", 4, 8, 2), data.classnames, center_node=True)
    module.check_ready("fit", [], data)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    output = module(batch)
    assert output.logits.shape == (6, 3) and output.pooled_features.shape == (6, 16)
    torch.testing.assert_close(output.pooled_features[:, 8:], output.node_embeddings[batch.center_index])
