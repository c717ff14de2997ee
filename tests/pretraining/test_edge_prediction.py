"""Edge prediction (Pretrain-GNNs ``pretrain_edgepred.py``): positive and negative pairs, the loss against
a hand computation, and encoders that load back into both graph backbones."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from torch_geometric.data import Batch, Data
from torch_geometric.datasets import FakeDataset

from lightning_prompts.backbones.gnn import GNN
from lightning_prompts.data import GraphDataModule
from lightning_prompts.pretraining.edge_prediction import EdgePrediction, negative_pairs, positive_pairs


def test_positive_pairs_are_each_undirected_edge_once():
    edges = torch.tensor([[0, 1, 1, 2, 3, 3, 2], [1, 0, 2, 1, 3, 0, 1]])  # a repeat, a self-loop, a one-way edge
    assert positive_pairs(edges).t().tolist() == [[0, 1], [0, 3], [1, 2]]


def test_negative_pairs_are_non_edges_inside_each_graph():
    torch.manual_seed(0)
    graphs = [Data(x=torch.zeros(n, 1), edge_index=torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])) for n in (6, 9)]
    batch = Batch.from_data_list(graphs)
    counts = torch.tensor([2, 2])
    pairs = negative_pairs(batch.edge_index, batch.batch, counts)
    edges = set(map(tuple, batch.edge_index.t().tolist()))
    listed = [tuple(p) for p in pairs.t().tolist()]
    assert len(listed) == 4 and len(set(listed)) == 4
    assert all(u != v and (u, v) not in edges and batch.batch[u] == batch.batch[v] for u, v in listed)
    assert torch.bincount(batch.batch[pairs[0]]).tolist() == [2, 2]  # one negative per edge of each graph


def test_loss_is_bce_on_dot_products_of_positive_and_negative_pairs():
    seed_everything(0, verbose=False)
    gnn = GNN("gin", in_channels=4, hidden_channels=8, num_layers=2, norm=None)
    module = EdgePrediction(gnn).eval()
    data = Data(x=torch.randn(5, 4), edge_index=torch.tensor([[0, 1, 1, 2, 3, 4], [1, 0, 2, 1, 4, 3]]))
    negatives = torch.tensor([[0, 2, 1], [3, 4, 4]])
    z = module.encoder(data.x, data.edge_index)
    positive = torch.stack([z[0] @ z[1], z[1] @ z[2], z[3] @ z[4]])
    negative = torch.stack([z[0] @ z[3], z[2] @ z[4], z[1] @ z[4]])
    expected = -torch.log(torch.sigmoid(positive)).mean() - torch.log(1 - torch.sigmoid(negative)).mean()
    torch.testing.assert_close(module.loss(data, negatives), expected)


def test_pretrained_gnn_and_molecule_gin_load_back(tmp_path, trainer_kwargs):
    seed_everything(0, verbose=False)
    dataset = FakeDataset(num_graphs=12, avg_num_nodes=8, num_channels=5, num_classes=2, task="graph")
    data = GraphDataModule(dataset, task="graph", shots=2, val_shots=1, batch_size=4)
    path = tmp_path / "edgepred.pt"
    module = EdgePrediction(GNN("gin", in_channels=5, hidden_channels=8, num_layers=2), encoder_path=str(path))
    Trainer(max_steps=3, **trainer_kwargs).fit(module, data)
    loaded = GNN("gin", in_channels=5, hidden_channels=8, num_layers=2, checkpoint_path=str(path))
    for key, value in module.encoder.state_dict().items():
        assert torch.equal(loaded.encoder.state_dict()[key], value), key

    pytest.importorskip("rdkit")
    from lightning_prompts.backbones.molecule_gin import MoleculeGIN
    from lightning_prompts.data.molecules import smiles_to_graph

    molecules = Batch.from_data_list([smiles_to_graph(s) for s in ["CCO", "c1ccccc1", "CC(=O)O"]])
    gin = EdgePrediction(MoleculeGIN(num_layers=2, emb_dim=8))
    assert torch.isfinite(gin.loss(molecules))
    gin.export_encoder(tmp_path / "edgepred.pth")
    MoleculeGIN(str(tmp_path / "edgepred.pth"), num_layers=2, emb_dim=8)
    with pytest.raises(TypeError, match="GNN, MoleculeGIN or BioGIN"):
        from lightning_prompts.backbones.point_mae import PointMAE

        EdgePrediction(PointMAE(num_patches=4, patch_size=4, width=8, depth=1, num_heads=2))


def test_the_bio_gin_pre_trains_on_the_unlabelled_ego_networks_as_the_official_edgepred(tmp_path, trainer_kwargs):
    """bio/pretrain_edgepred.py: positives are every stored edge pair once (``edge_index[:, ::2]``, each edge stored
    both ways), scored by the bio GIN's node embeddings; the encoder written as a plain state dict BioGIN loads."""
    from helpers import pretrain_and_reload_the_bio_encoder, unlabelled_bio_data

    from lightning_prompts.backbones import BioGIN

    data = unlabelled_bio_data(tmp_path)
    torch.manual_seed(0)
    module = EdgePrediction(BioGIN(num_layers=2, emb_dim=8), encoder_path=str(tmp_path / "edgepred.pth")).eval()
    edge_attr = torch.cat([torch.randint(0, 2, (3, 7)).float(), torch.zeros(3, 2)], dim=1).repeat_interleave(2, 0)
    graph = Data(x=torch.ones(5, 1), edge_index=torch.tensor([[0, 1, 1, 2, 3, 4], [1, 0, 2, 1, 4, 3]]),
                 edge_attr=edge_attr)  # fmt: skip
    negatives = torch.tensor([[0, 2], [3, 4]])
    z = module.encoder(graph.x, graph.edge_index, graph.edge_attr)
    stored = graph.edge_index[:, ::2]
    positive = (z[stored[0]] * z[stored[1]]).sum(dim=1)
    negative = (z[negatives[0]] * z[negatives[1]]).sum(dim=1)
    expected = -torch.log(torch.sigmoid(positive)).mean() - torch.log(1 - torch.sigmoid(negative)).mean()
    torch.testing.assert_close(module.loss(graph, negatives), expected)
    assert data.classnames == [] and "y" not in data.graphs[0]  # the unsupervised dataset has no labels
    pretrain_and_reload_the_bio_encoder(module.train(), data, tmp_path / "edgepred.pth", trainer_kwargs)
