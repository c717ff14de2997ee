"""GraphCL pre-training: the official NT-Xent, the augmentations, and the encoder hand-off to GNN."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from torch_geometric.data import Batch, Data
from torch_geometric.datasets import FakeDataset

from lightning_prompts.backbones import GNN
from lightning_prompts.data import GraphDataModule
from lightning_prompts.pretraining import GraphCL
from lightning_prompts.pretraining.graphcl import (
    drop_nodes,
    feature_noise,
    mask_nodes,
    nt_xent,
    permute_edges,
    uniform_draws,
)


def official_loss_cal(x, x_aug, temperature):
    """GraphCL's loss_cal (unsupervised_TU), re-written."""
    batch_size = x.shape[0]
    x_abs, x_aug_abs = x.norm(dim=1), x_aug.norm(dim=1)
    sim_matrix = torch.einsum("ik,jk->ij", x, x_aug) / torch.einsum("i,j->ij", x_abs, x_aug_abs)
    sim_matrix = torch.exp(sim_matrix / temperature)
    pos_sim = sim_matrix[range(batch_size), range(batch_size)]
    loss = pos_sim / (sim_matrix.sum(dim=1) - pos_sim)
    return -torch.log(loss).mean()


def test_nt_xent_matches_graphcl():
    z1, z2 = torch.randn(6, 8), torch.randn(6, 8)
    assert torch.allclose(nt_xent(z1, z2, 0.2), official_loss_cal(z1, z2, 0.2), atol=1e-5)


def small_batch():
    graphs = [Data(x=torch.randn(n, 3), edge_index=torch.randint(0, n, (2, 2 * n))) for n in (4, 5, 6)]
    return Batch.from_data_list(graphs)


def test_augmentations_keep_every_graph_and_valid_indices():
    batch = small_batch()
    generator = torch.Generator().manual_seed(0)
    dropped = drop_nodes(batch, 0.5, generator)
    assert dropped.batch.unique().tolist() == [0, 1, 2]
    assert dropped.edge_index.max() < dropped.x.shape[0]
    assert permute_edges(batch, 0.5, generator).edge_index.shape[1] < batch.edge_index.shape[1]
    masked = mask_nodes(batch, 1.0, generator)
    assert not torch.equal(masked.x, batch.x) and masked.x.shape == batch.x.shape


def test_augmentation_draws_come_from_the_cpu_generator_and_land_on_the_batch_device():
    """A CUDA batch once got CPU masks (a device error on the first GPU run); the draws are made on the CPU
    (the same views for a seed on any device, resumed by the checkpointed CPU state) and moved."""
    draws = uniform_draws(5, torch.device("cpu"), torch.Generator().manual_seed(4))
    assert torch.equal(draws, torch.rand(5, generator=torch.Generator().manual_seed(4)))
    assert uniform_draws(5, torch.device("meta")).device.type == "meta"
    like = torch.empty(0, dtype=torch.float64, device="meta")
    noise = feature_noise(3, 2, like)
    assert noise.device.type == "meta" and noise.dtype == torch.float64 and noise.shape == (3, 2)
    expected = 0.5 + 0.5 * torch.randn(3, 2, generator=torch.Generator().manual_seed(2))
    assert torch.equal(feature_noise(3, 2, torch.empty(0), torch.Generator().manual_seed(2)), expected)


def test_pretrain_then_load_as_frozen_backbone(trainer_kwargs, tmp_path):
    seed_everything(0, verbose=False)  # FakeDataset draws from Python's and torch's global generators
    dataset = FakeDataset(num_graphs=16, avg_num_nodes=8, num_channels=4, num_classes=2, task="graph")
    data = GraphDataModule(dataset, task="graph", shots=-1, batch_size=8)
    path = tmp_path / "encoder.pt"
    module = GraphCL(GNN("gin", in_channels=4, hidden_channels=16, num_layers=2), encoder_path=str(path))
    Trainer(max_epochs=2, **trainer_kwargs).fit(module, data)
    assert path.is_file()
    gnn = GNN("gin", in_channels=4, hidden_channels=16, num_layers=2, checkpoint_path=str(path))
    for (name, trained), (_, loaded) in zip(module.encoder.state_dict().items(), gnn.encoder.state_dict().items()):
        assert torch.equal(trained, loaded), name
    with pytest.raises(ValueError, match="another architecture"):
        GNN("gin", in_channels=4, hidden_channels=32, num_layers=2, checkpoint_path=str(path))
