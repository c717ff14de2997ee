"""Context prediction (Pretrain-GNNs ``pretrain_contextpred.py``): the substructure/context extraction against a
transcription of the official ``ExtractSubstructureContextPair`` (networkx), the cbow and skipgram losses against
a transcription of the official ``train``, and an exported encoder in the official plain state-dict format."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import networkx as nx
import pytest
import torch
from helpers import widened
from lightning.pytorch import Trainer
from torch.nn import functional as F
from torch_geometric.data import Batch

from lightning_prompts.backbones.molecule_gin import MoleculeGIN
from lightning_prompts.data.molecules import MoleculeNetDataModule, smiles_to_graph
from lightning_prompts.pretraining.context_prediction import (
    ContextPrediction,
    cyclic_shift,
    substructure_context_pair,
)

pytest.importorskip("rdkit")
LONG = ["CCCCCCCCCCCCC(=O)O", "OCCCCCCCCCCN", "c1ccccc1CCCCCCCCC", "CC(C)CCCCCCCCCCCCO"]


def official_sets(data, root, k, l1, l2):
    """``ExtractSubstructureContextPair``'s node sets, transcribed with networkx as the official code."""
    graph = nx.Graph()
    graph.add_nodes_from(range(data.num_nodes))
    graph.add_edges_from(data.edge_index.t().tolist())
    substruct = set(nx.single_source_shortest_path_length(graph, root, k).keys())
    l1_nodes = set(nx.single_source_shortest_path_length(graph, root, l1).keys())
    l2_nodes = set(nx.single_source_shortest_path_length(graph, root, l2).keys())
    context = l1_nodes.symmetric_difference(l2_nodes)
    return substruct, context, context & substruct


def test_substructure_and_context_are_the_official_hop_rings():
    for smiles in LONG:
        molecule = smiles_to_graph(smiles)
        molecule.x = torch.cat([molecule.x, torch.arange(molecule.num_nodes)[:, None]], dim=1)  # node ids ride along
        for root in range(molecule.num_nodes):
            pair = substructure_context_pair(molecule, root, 5, 4, 7)
            substruct, context, overlap = official_sets(molecule, root, 5, 4, 7)
            if not context:
                assert pair is None
                continue
            assert set(pair["x_substruct"][:, 2].tolist()) == substruct
            assert set(pair["x_context"][:, 2].tolist()) == context
            assert int(pair["x_substruct"][pair["center_substruct_idx"], 2]) == root
            assert set(pair["x_context"][pair["overlap_context_substruct_idx"], 2].tolist()) == overlap
            # the subgraphs keep exactly the bonds among their atoms, with their features
            ids = pair["x_context"][:, 2]
            kept = {(int(ids[a]), int(ids[b])) for a, b in pair["edge_index_context"].t().tolist()}
            assert kept == {(a, b) for a, b in molecule.edge_index.t().tolist() if a in context and b in context}


def test_cyclic_shift_is_the_official_cycle_index():
    assert cyclic_shift(5, 1).tolist() == [1, 2, 3, 4, 0]
    assert cyclic_shift(5, 2).tolist() == [2, 3, 4, 0, 1]


def official_train_step(module: ContextPrediction, pairs: list[dict], mode: str, neg_samples: int):
    """The official ``train`` (chem and bio alike) on the collated ``pairs``: substructure and context batches, centres
    and anchors offset per graph, negatives by cyclic shifts, ``loss_pos + neg_samples · loss_neg`` in float64, and
    the accuracy ``0.5 · (share of positives > 0 + share of negatives < 0)``. Returns loss, accuracy and both scores."""
    encode = module.encoder
    sub = [encode(p["x_substruct"], p["edge_index_substruct"], p["edge_attr_substruct"])[p["center_substruct_idx"]]
           for p in pairs]  # fmt: skip
    substruct_rep = torch.cat(sub)
    overlapped = [module.context_encoder(p["x_context"], p["edge_index_context"], p["edge_attr_context"])[
        p["overlap_context_substruct_idx"]] for p in pairs]  # fmt: skip
    if mode == "cbow":
        context_rep = torch.stack([o.mean(0) for o in overlapped])
        neg = torch.cat([context_rep[cyclic_shift(len(context_rep), i + 1)] for i in range(neg_samples)])
        pred_pos = (substruct_rep * context_rep).sum(1)
        pred_neg = (substruct_rep.repeat((neg_samples, 1)) * neg).sum(1)
    else:
        sizes = [len(o) for o in overlapped]
        node_rep = torch.cat(overlapped)
        expanded = torch.cat([substruct_rep[i].repeat((sizes[i], 1)) for i in range(len(pairs))])
        pred_pos = (expanded * node_rep).sum(1)
        shifted = []
        for i in range(neg_samples):
            rep = substruct_rep[cyclic_shift(len(substruct_rep), i + 1)]
            shifted.append(torch.cat([rep[j].repeat((sizes[j], 1)) for j in range(len(pairs))]))
        pred_neg = (torch.cat(shifted) * node_rep.repeat((neg_samples, 1))).sum(1)
    loss = F.binary_cross_entropy_with_logits(pred_pos.double(), torch.ones(len(pred_pos)).double())
    loss = loss + neg_samples * F.binary_cross_entropy_with_logits(
        pred_neg.double(), torch.zeros(len(pred_neg)).double()
    )
    accuracy = 0.5 * ((pred_pos > 0).float().mean() + (pred_neg < 0).float().mean())
    return loss.float(), accuracy, pred_pos, pred_neg


def check_context_loss(module: ContextPrediction, graphs: list, official_pair, expected_pairs: int) -> None:
    """The module's ``context_loss`` on the batch of ``graphs`` (roots drawn by Python's ``random``) against
    :func:`official_train_step` on the pairs ``official_pair(graph, root)`` gives for the same roots."""
    random.seed(5)
    loss, accuracy = module.context_loss(Batch.from_data_list(graphs))
    random.seed(5)  # the same roots, drawn as the official transform draws them
    pairs = [official_pair(g, random.sample(range(g.num_nodes), 1)[0]) for g in graphs]
    pairs = [p for p in pairs if p is not None]  # the official batching skips graphs without a context
    assert len(pairs) == expected_pairs
    expected, expected_accuracy, pred_pos, pred_neg = official_train_step(module, pairs, module.mode, 2)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(accuracy, expected_accuracy)
    assert pred_pos.std() > 0.05 and pred_neg.std() > 0.05  # the scores differ: the comparison can fail


@pytest.mark.parametrize("mode", ["cbow", "skipgram"])
def test_the_loss_is_the_official_train_step(mode):
    """Molecules of varied neighbourhoods and methane, which has no context and is skipped."""
    torch.manual_seed(0)
    module = ContextPrediction(MoleculeGIN(num_layers=2, emb_dim=8), context_size=2, mode=mode, neg_samples=2)
    widened(module, std=0.3).eval()  # BatchNorm on running statistics: graph by graph equals the batch
    drugs = [
        "CC(=O)Nc1ccc(O)cc1",
        "CN1C=NC2=C1C(=O)N(C(=O)N2C)C",
        "CC(C)Cc1ccc(cc1)C(C)C(=O)O",
        "OC(=O)c1ccccc1OC(C)=O",
    ]
    molecules = [smiles_to_graph(s) for s in [*drugs, "C"]]
    check_context_loss(module, molecules, lambda m, root: substructure_context_pair(m, root, 2, 1, 3), len(drugs))


def test_pretraining_writes_an_encoder_molecule_gin_loads(tmp_path, trainer_kwargs):
    csv = tmp_path / "zinc.csv"
    csv.write_text("\n".join(["smiles", *(LONG * 4), "CCO"]) + "\n")  # ethanol has no context: skipped
    data = MoleculeNetDataModule(str(csv), tasks=[], split="random", batch_size=8)
    path = tmp_path / "contextpred.pth"
    module = ContextPrediction(MoleculeGIN(num_layers=2, emb_dim=8), encoder_path=str(path))
    before = module.encoder.gnns[0].mlp[0].weight.detach().clone()
    Trainer(max_steps=3, **trainer_kwargs).fit(module, data)
    assert not torch.equal(module.encoder.gnns[0].mlp[0].weight, before)
    saved = torch.load(path, weights_only=True)
    assert "x_embedding1.weight" in saved and not any(k.startswith("context") for k in saved)  # substructure GIN
    loaded = MoleculeGIN(str(path), num_layers=2, emb_dim=8)
    for key, value in module.encoder.state_dict().items():
        assert torch.equal(loaded.encoder.state_dict()[key], value), key


def test_a_batch_without_context_still_joins_ddps_gradient_all_reduce(monkeypatch):
    """One process skips a batch without context as the official batching does; under DDP a skipped step would
    leave the other processes waiting in the gradient all-reduce, so the step is a zero loss on every parameter."""
    module = ContextPrediction(MoleculeGIN(num_layers=2, emb_dim=8), context_size=2)
    monkeypatch.setattr(module, "context_loss", lambda batch: None)
    module._trainer = SimpleNamespace(world_size=1)
    assert module.training_step(None, 0) is None
    module._trainer = SimpleNamespace(world_size=2)
    loss = module.training_step(None, 0)
    assert loss.item() == 0.0
    loss.backward()
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and not p.grad.any() for p in trainable)


def test_validation_with_no_context_ring_says_why_its_loss_is_nan(tmp_path, trainer_kwargs):
    """Molecules too small for the context ring are skipped (as the official batching does); an epoch that skipped
    them all logs NaN and says why, rather than leaving a checkpoint monitor a NaN to puzzle over."""
    csv = tmp_path / "small.csv"
    csv.write_text("\n".join(["smiles", *(["CCO", "CCN", "CO"] * 10)]) + "\n")  # 2-3 atoms: nothing 3 hops away
    data = MoleculeNetDataModule(str(csv), tasks=[], split="random", batch_size=4)
    module = ContextPrediction(MoleculeGIN(num_layers=3, emb_dim=8), context_size=2)
    with pytest.warns(UserWarning, match=r"val/loss: no validation sample.*l1 = 2 hops.*too small \(k = 3\)"):
        (metrics,) = Trainer(**trainer_kwargs).validate(module, data)
    assert torch.isnan(torch.tensor(metrics["val/loss"])) and torch.isnan(torch.tensor(metrics["val/context_acc"]))


def official_bio_sets(data, root, l1):
    """The bio ``ExtractSubstructureContextPair``'s context: ``range(num_atoms)`` less the nodes within ``l1`` hops
    of the root (networkx on the graph made from the stored edges, as ``graph_data_obj_to_nx``)."""
    graph = nx.Graph()
    edges = data.edge_index[:, ::2].t().tolist()
    graph.add_edges_from(edges)
    near = set(nx.single_source_shortest_path_length(graph, root, l1).keys())
    return near.symmetric_difference(set(range(data.num_nodes)))


def test_the_bio_context_is_the_official_one_and_the_substructure_the_whole_ego_network():
    from lightning_prompts.data.bio import read_bio_dataset
    from lightning_prompts.pretraining.context_prediction import bio_context_pair

    graphs = read_bio_dataset(Path(__file__).resolve().parents[2] / "recipes" / "_tiny" / "bio")
    checked = 0
    for index in range(len(graphs)):
        graph = graphs[index]
        if len(set(graph.edge_index.reshape(-1).tolist())) < graph.num_nodes:
            continue  # a node without an association: the official code fails on it (real ego-networks have none)
        graph.x = torch.cat([graph.x, torch.arange(graph.num_nodes, dtype=torch.float)[:, None]], dim=1)  # node ids
        for root in range(graph.num_nodes):
            for l1 in (1, 2):
                pair = bio_context_pair(graph, root, l1)
                context = official_bio_sets(graph, root, l1)
                if not context:
                    assert pair is None
                    continue
                checked += 1
                assert set(pair["x_context"][:, 1].long().tolist()) == context
                assert torch.equal(pair["x_substruct"], graph.x) and int(pair["center_substruct_idx"]) == int(
                    graph.center_index)  # fmt: skip
                assert pair["overlap_context_substruct_idx"].tolist() == list(range(len(context)))
                ids = pair["x_context"][:, 1].long()
                kept = {(int(ids[a]), int(ids[b])) for a, b in pair["edge_index_context"].t().tolist()}
                assert kept == {(a, b) for a, b in graph.edge_index.t().tolist() if a in context and b in context}
    assert checked > 50


def test_bio_context_prediction_trains_and_writes_an_encoder_bio_gin_loads(tmp_path, trainer_kwargs):
    from helpers import pretrain_and_reload_the_bio_encoder, unlabelled_bio_data

    from lightning_prompts.backbones import BioGIN
    from lightning_prompts.pretraining.context_prediction import BioContextPrediction

    data = unlabelled_bio_data(tmp_path)
    path = tmp_path / "contextpred.pth"
    torch.manual_seed(0)
    module = BioContextPrediction(BioGIN(num_layers=2, emb_dim=8), root="center", encoder_path=str(path))
    assert len(module.context_encoder.gnns) == 3 and module.l1 == 1
    data.setup("fit")
    assert module.pairs(next(iter(data.train_dataloader())))  # some ego-networks reach past one hop
    trainer = pretrain_and_reload_the_bio_encoder(module, data, path, trainer_kwargs)
    state = module.encoder.state_dict()
    trainer.save_checkpoint(tmp_path / "bio.ckpt")
    reloaded = BioContextPrediction.load_from_checkpoint(tmp_path / "bio.ckpt", weights_only=True)
    assert (reloaded.root, reloaded.l1, len(reloaded.context_encoder.gnns)) == ("center", 1, 3)
    torch.testing.assert_close(reloaded.encoder.state_dict(), state)
    with pytest.raises(TypeError, match="BioContextPrediction pre-trains a BioGIN backbone, got MoleculeGIN"):
        BioContextPrediction(MoleculeGIN(num_layers=2, emb_dim=8))


@pytest.mark.parametrize("mode", ["cbow", "skipgram"])
def test_the_bio_loss_is_the_official_train_step(mode):
    """``bio/pretrain_contextpred.py``'s ``train`` is the chem one on the bio pairs (pinned above to networkx)."""
    from lightning_prompts.backbones import BioGIN
    from lightning_prompts.data.bio import read_bio_dataset
    from lightning_prompts.pretraining.context_prediction import BioContextPrediction, bio_context_pair

    torch.manual_seed(0)
    module = BioContextPrediction(BioGIN(num_layers=2, emb_dim=8), mode=mode, neg_samples=2)
    widened(module, std=0.5).eval()
    dataset = read_bio_dataset(Path(__file__).resolve().parents[2] / "recipes" / "_tiny" / "bio")
    graphs = [dataset[i] for i in range(16)]
    random.seed(5)
    with_context = sum(bio_context_pair(g, random.sample(range(g.num_nodes), 1)[0], 1) is not None for g in graphs)
    assert 2 < with_context < len(graphs)  # some ego-networks are skipped, enough remain
    check_context_loss(module, graphs, lambda g, root: bio_context_pair(g, root, 1), with_context)
