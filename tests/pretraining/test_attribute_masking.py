"""Attribute masking (Pretrain-GNNs ``pretrain_masking.py``): the per-molecule mask count, the mask token,
the loss against a re-computation, and an exported encoder in the official plain state-dict format."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer
from torch.nn import functional as F
from torch_geometric.data import Batch

from lightning_prompts.backbones.molecule_gin import MoleculeGIN
from lightning_prompts.data.molecules import MoleculeNetDataModule, smiles_to_graph
from lightning_prompts.pretraining.attribute_masking import AttributeMasking, sample_masked_atoms

pytest.importorskip("rdkit")
MOLECULES = ["CC(=O)Oc1ccccc1C(=O)O", "CCO", "c1ccccc1", "C#N", "OCC1OC(O)C(O)C(O)C1O"]


def test_each_molecule_masks_int_rate_times_atoms_plus_one():
    torch.manual_seed(0)
    batch = Batch.from_data_list([smiles_to_graph(s) for s in MOLECULES])
    counts = torch.bincount(batch.batch)
    for _ in range(5):
        masked = sample_masked_atoms(batch.batch, counts, 0.15)
        per_molecule = torch.bincount(batch.batch[masked], minlength=len(MOLECULES))
        assert per_molecule.tolist() == [int(n * 0.15 + 1) for n in counts.tolist()]  # aspirin 13 atoms: 2
    draws = torch.stack([sample_masked_atoms(batch.batch, counts, 0.15) for _ in range(400)]).float().mean(0)
    first = batch.batch == 0
    assert torch.allclose(draws[first], torch.full_like(draws[first], 2 / 13), atol=0.06)  # uniform in a molecule


def test_loss_predicts_the_masked_atom_types_from_the_mask_token():
    torch.manual_seed(1)
    module = AttributeMasking(MoleculeGIN(num_layers=2, emb_dim=8))
    batch = Batch.from_data_list([smiles_to_graph(s) for s in MOLECULES])
    masked = torch.zeros(batch.num_nodes, dtype=torch.bool)
    masked[[0, 3, 14, 16]] = True
    loss, accuracy = module.masked_atom_loss(batch, masked)
    x = batch.x.clone()
    x[masked] = torch.tensor([119, 0])  # the official MaskAtom(num_atom_type=119): atom 119, chirality 0
    nodes = module.encoder(x, batch.edge_index, batch.edge_attr)
    logits = nodes[masked] @ module.atom_predictor.weight.t() + module.atom_predictor.bias
    assert logits.shape[1] == 119
    torch.testing.assert_close(loss, F.cross_entropy(logits, batch.x[masked, 0]))
    assert torch.equal(batch.x, Batch.from_data_list([smiles_to_graph(s) for s in MOLECULES]).x)  # input untouched
    assert 0.0 <= accuracy.item() <= 1.0


def test_pretraining_writes_an_encoder_molecule_gin_loads(tmp_path, trainer_kwargs):
    rows = ["smiles", *(s for s in MOLECULES * 4)]
    csv = tmp_path / "zinc.csv"
    csv.write_text("\n".join(rows) + "\n")
    data = MoleculeNetDataModule(str(csv), tasks=[], split="random", batch_size=4)
    assert data.classnames == [] and data.graphs[0].y.shape == (1, 0)
    path = tmp_path / "masking.pth"
    module = AttributeMasking(MoleculeGIN(num_layers=2, emb_dim=8), encoder_path=str(path))
    before = module.encoder.gnns[0].mlp[0].weight.detach().clone()
    Trainer(max_steps=3, **trainer_kwargs).fit(module, data)
    assert not torch.equal(module.encoder.gnns[0].mlp[0].weight, before)
    saved = torch.load(path, weights_only=True)
    assert "x_embedding1.weight" in saved and "gnns.0.edge_embedding1.weight" in saved  # the official keys
    loaded = MoleculeGIN(str(path), num_layers=2, emb_dim=8)
    for key, value in module.encoder.state_dict().items():
        assert torch.equal(loaded.encoder.state_dict()[key], value), key
