"""Edge masking of the bio GIN (Pretrain-GNNs ``bio/pretrain_masking.py`` and ``MaskEdge``): the loss against a
transcription of the official step on fixed masked edges, the per-graph draw, and the encoder hand-off to BioGIN."""

from __future__ import annotations

import pytest
import torch
from helpers import pretrain_and_reload_the_bio_encoder, unlabelled_bio_data
from torch_geometric.data import Batch, Data

from lightning_prompts.backbones import BioGIN
from lightning_prompts.pretraining.edge_masking import EdgeMasking


def ego_network(edges: list[tuple[int, int]], nodes: int, seed: int) -> Data:
    """Edges stored as the bio dataset stores them: (i, j) then (j, i), with the same multi-hot channels."""
    generator = torch.Generator().manual_seed(seed)
    pairs = torch.tensor(edges).t()
    channels = torch.randint(0, 2, (len(edges), 7), generator=generator).float()
    channels[:, int(torch.randint(0, 7, (1,), generator=generator))] = 1  # at least one channel set
    features = torch.cat([channels, torch.zeros(len(edges), 2)], dim=1).repeat_interleave(2, dim=0)
    return Data(x=torch.ones(nodes, 1), edge_index=torch.stack([pairs, pairs.flip(0)], 2).reshape(2, -1),
                edge_attr=features)  # fmt: skip


def official_step(module: EdgeMasking, batch: Batch, masked_edge_idx: list[int]) -> torch.Tensor:
    """MaskEdge (both directions get [0]*8 + [1]; labels are the first direction's features) and the train step:
    ``linear_pred_edges(node_rep[u] + node_rep[v])`` against ``argmax(mask_edge_label)``, cross-entropy."""
    edge_attr = batch.edge_attr.clone()
    labels = torch.cat([edge_attr[i].view(1, -1) for i in masked_edge_idx])
    for i in masked_edge_idx + [i + 1 for i in masked_edge_idx]:
        edge_attr[i] = torch.tensor([0, 0, 0, 0, 0, 0, 0, 0, 1], dtype=torch.float)
    node_rep = module.encoder(batch.x, batch.edge_index, edge_attr)
    masked_edge_index = batch.edge_index[:, masked_edge_idx]
    pred_edge = module.edge_predictor(node_rep[masked_edge_index[0]] + node_rep[masked_edge_index[1]])
    return torch.nn.functional.cross_entropy(pred_edge, torch.argmax(labels, dim=1))


def test_the_loss_is_the_official_masked_edge_step():
    torch.manual_seed(0)
    module = EdgeMasking(BioGIN(num_layers=2, emb_dim=8))
    with torch.no_grad():
        module.edge_predictor.weight.normal_(std=1.0)  # edge types score differently
    batch = Batch.from_data_list([ego_network([(0, 1), (1, 2), (2, 3)], 4, 0), ego_network([(0, 1), (0, 2)], 3, 1)])
    masked = [2, 6]  # the second edge of the first graph, the first of the second (offset by the first's 6 rows)
    loss, _ = module.masked_edge_loss(batch, torch.tensor(masked))
    expected = official_step(module, batch, masked)
    torch.testing.assert_close(loss, expected)
    assert expected.item() > 0.1


def test_each_graph_masks_int_of_15_percent_of_its_edges_plus_one_first_directions_only():
    torch.manual_seed(1)
    module = EdgeMasking(BioGIN(num_layers=2, emb_dim=8))
    graphs = [ego_network([(i, i + 1) for i in range(n)], n + 1, n) for n in (3, 7, 20)]
    batch = Batch.from_data_list(graphs)
    first = module.draw_masked_edges(batch)
    assert bool((first % 2 == 0).all()) and len(set(first.tolist())) == len(first)
    owners = batch.batch[batch.edge_index[0, first]]
    assert torch.bincount(owners, minlength=3).tolist() == [int(n * 0.15 + 1) for n in (3, 7, 20)]


def test_pretraining_writes_an_encoder_bio_gin_loads(tmp_path, trainer_kwargs):
    data = unlabelled_bio_data(tmp_path)
    path = tmp_path / "masking.pth"
    torch.manual_seed(0)
    module = EdgeMasking(BioGIN(num_layers=2, emb_dim=8), encoder_path=str(path))
    pretrain_and_reload_the_bio_encoder(module, data, path, trainer_kwargs)
    with pytest.raises(TypeError, match="pre-trains a BioGIN"):
        from lightning_prompts.backbones.molecule_gin import MoleculeGIN

        EdgeMasking(MoleculeGIN(num_layers=2, emb_dim=8))
