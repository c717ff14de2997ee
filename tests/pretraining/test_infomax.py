"""Deep Graph Infomax as Pretrain-GNNs trains it (``pretrain_deepgraphinfomax.py``, chem and bio): the loss against a
transcription of the official ``Discriminator`` and train step, and the encoder hand-off to both GINs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import pretrain_and_reload_the_bio_encoder, unlabelled_bio_data
from torch_geometric.data import Batch
from torch_geometric.nn import global_mean_pool

from lightning_prompts.backbones import BioGIN
from lightning_prompts.data.bio import read_bio_dataset
from lightning_prompts.pretraining.infomax import DeepGraphInfomax


def official_loss(module: DeepGraphInfomax, batch: Batch) -> torch.Tensor:
    """The official train step: ``summary = sigmoid(mean pool)``, ``Discriminator(x, s) = sum(x * (s @ W))``,
    negatives from ``summary_emb[cycle_index(len, 1)]``, ``BCEWithLogitsLoss`` on each (means over nodes)."""
    node_emb = module.encoder(batch.x, batch.edge_index, batch.edge_attr)
    summary_emb = torch.sigmoid(global_mean_pool(node_emb, batch.batch))
    arr = torch.arange(len(summary_emb)) + 1
    arr[-1:] = torch.arange(1)
    positive_score = torch.sum(node_emb * torch.matmul(summary_emb[batch.batch], module.discriminator), dim=1)
    negative_score = torch.sum(node_emb * torch.matmul(summary_emb[arr][batch.batch], module.discriminator), dim=1)
    loss = torch.nn.BCEWithLogitsLoss()
    return loss(positive_score, torch.ones_like(positive_score)) + loss(
        negative_score, torch.zeros_like(negative_score)
    )


def test_the_loss_is_the_official_train_step():
    torch.manual_seed(0)
    module = DeepGraphInfomax(BioGIN(num_layers=2, emb_dim=8))
    assert module.discriminator.abs().max() <= 1 / 8**0.5  # PyG's uniform(size, weight): ±1/√d
    graphs = read_bio_dataset(Path(__file__).resolve().parents[2] / "recipes" / "_tiny" / "bio")
    batch = Batch.from_data_list([graphs[i] for i in range(5)])
    loss, accuracy = module.infomax_loss(batch)
    expected = official_loss(module, batch)
    torch.testing.assert_close(loss, expected)
    assert 0 <= accuracy.item() <= 1 and expected.item() > 0.1


def test_a_molecule_gin_and_a_bio_gin_pretrain_and_load_back(tmp_path, trainer_kwargs):
    data = unlabelled_bio_data(tmp_path)
    path = tmp_path / "infomax.pth"
    torch.manual_seed(0)
    module = DeepGraphInfomax(BioGIN(num_layers=2, emb_dim=8), encoder_path=str(path))
    pretrain_and_reload_the_bio_encoder(module, data, path, trainer_kwargs)

    pytest.importorskip("rdkit")
    from lightning_prompts.backbones.molecule_gin import MoleculeGIN
    from lightning_prompts.data.molecules import smiles_to_graph

    molecules = Batch.from_data_list([smiles_to_graph(s) for s in ["CCO", "c1ccccc1", "CC(=O)O"]])
    gin = DeepGraphInfomax(MoleculeGIN(num_layers=2, emb_dim=8))
    torch.testing.assert_close(gin.infomax_loss(molecules)[0], official_loss(gin, molecules))
    gin.export_encoder(tmp_path / "chem.pth")
    MoleculeGIN(str(tmp_path / "chem.pth"), num_layers=2, emb_dim=8)
    with pytest.raises(TypeError, match="MoleculeGIN or BioGIN"):
        from lightning_prompts.backbones import GNN

        DeepGraphInfomax(GNN("gin", 4, 8, 2))
