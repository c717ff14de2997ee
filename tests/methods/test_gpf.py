"""GPF / GPF-plus formulas against the official code's, and node/graph classification on a frozen GNN."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from torch_geometric.data import Data
from torch_geometric.datasets import FakeDataset, KarateClub

from lightning_prompts.backbones import GNN
from lightning_prompts.data import GraphDataModule
from lightning_prompts.errors import DatasetError
from lightning_prompts.methods import GPF
from lightning_prompts.prompts import GPFPlusPrompt, GPFPrompt


def test_gpf_adds_one_vector_to_every_node():
    prompt = GPFPrompt(6)
    x = torch.randn(5, 6)
    assert torch.equal(prompt(x), x + prompt.global_emb.expand(5, -1))
    bound = math.sqrt(6 / (1 + 6))
    assert prompt.global_emb.abs().max() <= bound


def test_gpf_plus_mixes_bases_with_a_per_node_softmax():
    prompt = GPFPlusPrompt(6, num_bases=4)
    x = torch.randn(5, 6)
    score = x @ prompt.scorer.weight.t() + prompt.scorer.bias  # the official code's self.a(x)
    weight = torch.exp(score) / torch.exp(score).sum(dim=1, keepdim=True)
    expected = x + weight @ prompt.bases
    assert torch.allclose(prompt(x), expected, atol=1e-6)


def graph_data(**kwargs):
    seed_everything(0, verbose=False)  # FakeDataset draws from Python's and torch's global generators
    dataset = FakeDataset(num_graphs=24, avg_num_nodes=8, num_channels=5, num_classes=2, task="graph")
    return GraphDataModule(dataset, task="graph", shots=4, val_shots=2, batch_size=4, **kwargs)


def test_graph_classification_trains_only_prompt_and_head(trainer_kwargs):
    data = graph_data()
    gnn = GNN("gin", in_channels=5, hidden_channels=16, num_layers=2)
    running_mean = gnn.encoder.norms[0].module.running_mean.clone()
    method = GPF(gnn, data.classnames, variant="gpf-plus", num_bases=3, task="graph")
    before = method.prompt.bases.detach().clone()
    Trainer(max_steps=3, **trainer_kwargs).fit(method, data)
    assert not torch.equal(method.prompt.bases, before)
    assert torch.equal(gnn.encoder.norms[0].module.running_mean, running_mean)  # BatchNorm statistics untouched
    assert {n for n, p in method.named_parameters() if p.requires_grad} == {
        "prompt.bases",
        "prompt.scorer.weight",
        "prompt.scorer.bias",
        "head.0.weight",
        "head.0.bias",
    }


def test_node_classification_scores_only_the_split_nodes(trainer_kwargs):
    data = GraphDataModule(KarateClub(), task="node", shots=1, val_shots=1)
    method = GPF(GNN("gcn", in_channels=34, hidden_channels=8, num_layers=2, norm=None), data.classnames, task="node")
    Trainer(max_steps=2, **trainer_kwargs).fit(method, data)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert method(batch).logits.shape == (4, 4)  # one training node per class
    assert sorted(method.batch_targets(batch).tolist()) == [0, 1, 2, 3]


def test_ego_graphs_turn_nodes_into_graphs(trainer_kwargs):
    data = GraphDataModule(KarateClub(), task="node", shots=2, val_shots=1, ego_hops=1, batch_size=4)
    assert data.task_level == "graph"
    method = GPF(GNN("gin", in_channels=34, hidden_channels=8, num_layers=2), data.classnames, task="graph")
    Trainer(max_steps=2, **trainer_kwargs).fit(method, data)
    with pytest.raises(ValueError, match="configured for task='node'"):
        wrong = GPF(GNN("gin", in_channels=34, hidden_channels=8, num_layers=2), data.classnames, task="node")
        Trainer(max_steps=1, **trainer_kwargs).fit(wrong, data)


def test_graph_without_node_features_is_rejected():
    graphs = [Data(edge_index=torch.tensor([[0, 1], [1, 0]]), y=torch.tensor([0]), num_nodes=2)]
    with pytest.raises(DatasetError, match="no node features"):
        GraphDataModule(graphs, task="graph")


def test_feature_width_mismatch_is_named():
    gnn = GNN("gin", in_channels=5, hidden_channels=8, num_layers=2)
    with pytest.raises(ValueError, match="expects 5"):
        gnn.encode_nodes(torch.randn(3, 4), torch.tensor([[0, 1], [1, 2]]))


def test_linear_probe_trains_only_its_head_on_the_unprompted_encoder(trainer_kwargs):
    from lightning_prompts.methods.graph_linear_probe import GraphLinearProbe

    data = graph_data()
    gnn = GNN("gin", in_channels=5, hidden_channels=16, num_layers=2)
    method = GraphLinearProbe(gnn, data.classnames, task="graph").eval()
    assert method.prompt is None and [g["name"] for g in method.param_groups()] == ["head"]
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    pooled = GNN.pool(gnn.encode_nodes(batch.x, batch.edge_index), batch.batch, "mean")
    torch.testing.assert_close(method(batch).logits, method.head(pooled))
    Trainer(max_steps=2, **trainer_kwargs).fit(method, data)


def test_full_fine_tuning_trains_the_gnn_and_the_head_and_keeps_batchnorm_statistics(trainer_kwargs, tmp_path):
    from lightning_prompts.methods.graph_fine_tuning import GraphFineTuning

    data = graph_data()
    gnn = GNN("gin", in_channels=5, hidden_channels=16, num_layers=2)
    weight = gnn.encoder.convs[0].nn.lins[0].weight.detach().clone()
    running_mean = gnn.encoder.norms[0].module.running_mean.clone()
    method = GraphFineTuning(gnn, data.classnames, task="graph")
    assert [g["name"] for g in method.param_groups()] == ["backbone", "head"]
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    with torch.no_grad():  # Pretrain-GNNs' GNN_graphpred: a linear head on the mean-pooled node embeddings
        pooled = GNN.pool(gnn.encode_nodes(batch.x, batch.edge_index), batch.batch, "mean")
        torch.testing.assert_close(method.eval()(batch).logits, method.head(pooled))
    Trainer(max_steps=3, **trainer_kwargs).fit(method, data)
    assert not torch.equal(gnn.encoder.convs[0].nn.lins[0].weight, weight)  # the GNN trained
    assert torch.equal(gnn.encoder.norms[0].module.running_mean, running_mean)
    assert "backbone.encoder.convs.0.nn.lins.0.weight" in method.trainable_state_keys()
    path = method.export_prompt(tmp_path / "fine_tuned.safetensors")  # the fine-tuned GNN travels in the file
    fresh = GraphFineTuning(GNN("gin", in_channels=5, hidden_channels=16, num_layers=2), data.classnames)
    fresh.load_prompt(path)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(batch).logits, method.eval()(batch).logits)
