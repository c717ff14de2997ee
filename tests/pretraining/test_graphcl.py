"""GraphCL pre-training: the official NT-Xent, the augmentations, and the encoder hand-off to GNN."""

from __future__ import annotations

import functools
from collections import Counter

import numpy as np
import pytest
import torch
from helpers import official_graphcl_loss, widened
from lightning.pytorch import Trainer, seed_everything
from torch_geometric.data import Batch, Data
from torch_geometric.datasets import FakeDataset

from lightning_prompts.backbones import GNN
from lightning_prompts.data import GraphDataModule
from lightning_prompts.pretraining import GraphCL
from lightning_prompts.pretraining.graph_augmentations import (
    drop_nodes,
    feature_noise,
    mask_nodes,
    permute_edges,
    random_augmentation,
    subgraph,
    uniform_draws,
)
from lightning_prompts.pretraining.graphcl import nt_xent, nt_xent_terms


def test_nt_xent_matches_graphcl():
    z1, z2 = torch.randn(6, 8), torch.randn(6, 8)
    assert torch.allclose(nt_xent(z1, z2, 0.2), official_graphcl_loss(z1, z2, 0.2), atol=1e-5)


def small_batch():
    graphs = [Data(x=torch.randn(n, 3), edge_index=torch.randint(0, n, (2, 2 * n))) for n in (4, 5, 6)]
    return Batch.from_data_list(graphs)


def test_the_module_loss_is_loss_cal_of_the_projected_mean_pooled_views():
    """GraphCL's step written out: the two views (``drop_nodes`` then ``mask_nodes``, drawn in that order), the
    encoder, a mean pool, the two-layer projection head, and ``loss_cal`` at τ = 0.2."""
    from torch_geometric.nn import global_mean_pool

    torch.manual_seed(0)
    module = widened(GraphCL(GNN("gin", in_channels=3, hidden_channels=16, num_layers=2))).eval()
    batch = small_batch()
    torch.manual_seed(1)
    loss = module.contrastive_loss(batch)
    torch.manual_seed(1)
    views = drop_nodes(batch, 0.2), mask_nodes(batch, 0.2)
    projected = [
        module.projection(global_mean_pool(module.encoder(view.x, view.edge_index), view.batch)) for view in views
    ]
    expected = official_graphcl_loss(*projected, 0.2)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    assert abs(expected.item() - torch.log(torch.tensor(2.0)).item()) > 0.05  # not the loss of identical graphs


def test_augmentations_keep_every_graph_and_valid_indices():
    batch = small_batch()
    generator = torch.Generator().manual_seed(0)
    dropped = drop_nodes(batch, 0.5, generator)
    assert dropped.batch.unique().tolist() == [0, 1, 2]
    assert dropped.edge_index.max() < dropped.x.shape[0]
    assert permute_edges(batch, 0.5, generator).edge_index.shape[1] < batch.edge_index.shape[1]
    masked = mask_nodes(batch, 1.0, generator)
    assert not torch.equal(masked.x, batch.x) and masked.x.shape == batch.x.shape
    sub = subgraph(batch, 0.5, generator)
    assert sub.batch.unique().tolist() == [0, 1, 2] and sub.edge_index.max() < sub.x.shape[0]
    single = subgraph(Data(x=torch.randn(4, 3), edge_index=torch.tensor([[0, 1, 2], [1, 2, 3]])), 0.5)
    assert single.num_nodes <= 2 and single.edge_index.shape[1] <= 1  # a seed and one out-neighbour at most
    seeded = [subgraph(batch, 0.5, torch.Generator().manual_seed(3)).edge_index for _ in range(2)]
    assert torch.equal(*seeded)  # the generator decides the draw


def official_unsupervised_subgraph(edge_index: np.ndarray, n: int, rng: np.random.RandomState) -> frozenset:
    """The nodes ``subgraph`` of GraphCL's ``unsupervised_TU/aug.py`` keeps, transcribed (``gsimclr.py`` then drops
    every node left without an edge; the dataset's self-loops keep the chosen ones)."""
    sub_num = int(n * 0.2)
    idx_sub = [rng.randint(n, size=1)[0]]
    idx_neigh = set(edge_index[1][edge_index[0] == idx_sub[0]].tolist())
    count = 0
    while len(idx_sub) <= sub_num:
        count += 1
        if count > n or len(idx_neigh) == 0:
            break
        sample_node = rng.choice(list(idx_neigh))
        if sample_node in idx_sub:
            continue
        idx_sub.append(sample_node)
        idx_neigh.union(set(edge_index[1][edge_index[0] == idx_sub[-1]].tolist()))  # discarded, as in the official
    return frozenset(int(node) for node in idx_sub)


def test_subgraph_draws_the_official_unsupervised_subgraphs():
    """Eleven nodes (a 0.2 share: two neighbours besides the seed): the distribution of kept node sets over many draws
    equals the official function's (total variation); the view is those nodes and the edges among them."""
    pairs = [(0, 1), (1, 2), (2, 3), (3, 4), (1, 5), (5, 6), (6, 2), (1, 7), (7, 8), (8, 9), (9, 10), (10, 1), (4, 0)]
    pairs += [(b, a) for a, b in pairs]
    edge_index = torch.tensor(pairs).T
    copies = 6000
    graph = Data(x=torch.arange(11.0)[:, None], edge_index=edge_index)  # a node's feature is its number
    batch = Batch.from_data_list([graph] * copies)
    view = subgraph(batch, 0.2, torch.Generator().manual_seed(0))
    kept = [frozenset(view.x[view.batch == g, 0].long().tolist()) for g in range(copies)]
    ours = Counter(kept)
    rng = np.random.RandomState(0)
    theirs = Counter(official_unsupervised_subgraph(edge_index.numpy(), 11, rng) for _ in range(copies))
    total_variation = 0.5 * sum(abs(ours[key] - theirs[key]) for key in ours.keys() | theirs.keys()) / copies
    assert total_variation < 0.05, total_variation
    assert len(theirs) > 10  # many distinct subgraphs: the comparison has something to tell apart
    sizes = Counter(len(nodes) for nodes in kept)  # every node has two neighbours or more: seed and two of them,
    assert set(sizes) <= {2, 3} and sizes[3] > 0.99 * copies  # unless n tries drew one neighbour only
    # the view's edges are exactly the original edges among the kept nodes, renumbered
    first = view.batch[view.edge_index[0]] == 0
    numbers = view.x[:, 0].long()
    edges = {(int(a), int(b)) for a, b in numbers[view.edge_index[:, first]].T}
    assert edges == {(a, b) for a, b in pairs if a in kept[0] and b in kept[0]} and edges


def numbered_graphs(copies: int, nodes: int = 6) -> Batch:
    """``copies`` rings of ``nodes`` nodes whose feature is the node's number within its graph, plus 100·graph."""
    ring = torch.tensor([[i, (i + 1) % nodes] for i in range(nodes)] + [[(i + 1) % nodes, i] for i in range(nodes)]).T
    graphs = [Data(x=(torch.arange(nodes) + 100.0 * g)[:, None], edge_index=ring) for g in range(copies)]
    return Batch.from_data_list(graphs)


def test_random_gives_each_graph_the_view_of_one_choice_drawn_uniformly():
    """``none`` or ``mask_nodes`` at ratio 1 (the whole graph noised) per graph: each graph of the view is one of the
    two, about half each; with ``subgraph`` the picks keep their own node counts, and the view stays a valid batch in
    graph order whose edges stay inside their graph."""
    copies = 400
    batch = numbered_graphs(copies)
    view = random_augmentation(batch, 1.0, torch.Generator().manual_seed(0), choices=("none", "mask_nodes"))
    assert torch.equal(view.batch, batch.batch)
    untouched = [bool(torch.equal(view.x[batch.batch == g], batch.x[batch.batch == g])) for g in range(copies)]
    noised = [bool((view.x[batch.batch == g] != batch.x[batch.batch == g]).all()) for g in range(copies)]
    assert all(a != b for a, b in zip(untouched, noised))  # each graph is wholly one view or the other
    assert 0.4 < sum(untouched) / copies < 0.6  # uniform picks (400 graphs: 0.5 ± 0.025)
    assert set(map(tuple, view.edge_index.T.tolist())) == set(map(tuple, batch.edge_index.T.tolist()))

    mixed = random_augmentation(batch, 0.2, torch.Generator().manual_seed(1), choices=("none", "subgraph"))
    sizes = torch.bincount(mixed.batch, minlength=copies)
    assert set(sizes.tolist()) == {6, 2}  # whole, or a seed and one of its two neighbours (int(6 · 0.2) = 1)
    assert (mixed.batch[1:] >= mixed.batch[:-1]).all()  # graph order
    assert torch.equal(mixed.batch[mixed.edge_index[0]], mixed.batch[mixed.edge_index[1]])
    assert ((mixed.x[:, 0] // 100).long() == mixed.batch).all()  # every node sits in its own graph
    whole = sizes == 6
    first_whole = int(torch.nonzero(whole)[0])
    rows = mixed.batch[mixed.edge_index[0]] == first_whole
    assert int(rows.sum()) == 12  # a whole ring keeps its 12 directed edges
    with pytest.raises(ValueError, match="random draws from"):
        random_augmentation(batch, 0.2, choices=("random",))


def test_graphcl_takes_none_and_random_views(trainer_kwargs):
    seed_everything(0, verbose=False)
    dataset = FakeDataset(num_graphs=16, avg_num_nodes=8, num_channels=4, num_classes=2, task="graph")
    data = GraphDataModule(dataset, task="graph", shots=-1, batch_size=8)
    gnn = GNN("gin", in_channels=4, hidden_channels=16, num_layers=2)
    module = GraphCL(gnn, augmentations=("none", "random"), random_choices=("drop_nodes", "subgraph", "mask_nodes"))
    before = [p.detach().clone() for p in module.encoder.parameters()]
    Trainer(max_steps=2, **trainer_kwargs).fit(module, data)
    assert any(not torch.equal(a, b) for a, b in zip(before, module.encoder.parameters()))
    with pytest.raises(ValueError, match="random_choices"):
        GraphCL(gnn, random_choices=("random",))


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


def test_nt_xent_terms_of_each_process_rows_against_the_gathered_views_are_the_global_batchs():
    """A process's rows scored against every process's second views (its positives at its offset) give exactly the
    global batch's terms: what ``gather_negatives`` computes under DDP."""
    z1, z2 = torch.randn(7, 8), torch.randn(7, 8)
    whole = nt_xent_terms(z1, z2, 0.2)
    shares = [nt_xent_terms(z1[:4], z2, 0.2, offset=0), nt_xent_terms(z1[4:], z2, 0.2, offset=4)]
    torch.testing.assert_close(torch.cat(shares), whole)
    assert whole.mean() == pytest.approx(official_graphcl_loss(z1, z2, 0.2).item(), rel=1e-5)
    assert not torch.allclose(shares[1], nt_xent_terms(z1[4:], z2[4:], 0.2))  # own-process negatives differ


def graphcl_on_processes(processes: int, gather_negatives: bool, root) -> tuple[torch.Tensor, float]:
    """GraphCL fitted one epoch on 8 graphs in one global batch (one process, or 4 per process on two), views left
    unaugmented (ratio 0: every process would draw its own masks) and no BatchNorm (which normalises per process);
    the encoder's weights after the step, and ``val/loss`` on 5 held-out graphs (3 + 2 on two processes)."""
    seed_everything(0, verbose=False)
    dataset = FakeDataset(num_graphs=13, avg_num_nodes=6, num_channels=4, num_classes=2, task="graph")
    data = GraphDataModule(dataset, task="graph", shots=0, val_size=5, batch_size=8 // processes)
    torch.manual_seed(1)
    gnn = GNN("gin", in_channels=4, hidden_channels=8, num_layers=2, norm=None)
    module = GraphCL(
        gnn, aug_ratio=0.0, gather_negatives=gather_negatives, optimizer=functools.partial(torch.optim.SGD, lr=0.5)
    )
    trainer = Trainer(strategy="ddp_fork" if processes > 1 else "auto", devices=processes, accelerator="cpu",
                      max_epochs=1, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root))  # fmt: skip
    trainer.fit(module, data)
    weights = torch.cat([p.detach().flatten() for p in module.encoder.parameters()])
    return weights, float(trainer.callback_metrics["val/loss"])


def test_ddp_with_gathered_negatives_is_one_process_on_the_global_batch(tmp_path):
    """Under DDP each process contrasted its graphs against its own share of the batch only; with the negatives
    gathered from every process (the default) the step and the validation loss are one process's on the global
    batch (8 graphs in one step; 4 per process on two)."""
    single, single_val = graphcl_on_processes(1, True, tmp_path / "one")
    gathered, gathered_val = graphcl_on_processes(2, True, tmp_path / "two")
    own, own_val = graphcl_on_processes(2, False, tmp_path / "own")
    torch.manual_seed(1)
    before = torch.cat([p.flatten() for p in GNN("gin", 4, 8, 2, norm=None).encoder.parameters()])
    assert (single - before).abs().max() > 1e-3  # the step moved the encoder
    torch.testing.assert_close(gathered, single, rtol=1e-5, atol=1e-6)
    assert gathered_val == pytest.approx(single_val, abs=2e-5)  # float32 terms summed in another order
    assert (own - single).abs().max() > 1e-4 and own_val != pytest.approx(single_val, rel=1e-3)
