"""MoleculeNet CSVs: featurisation, the official scaffold and random splits, masked BCE and mean ROC-AUC."""

from __future__ import annotations

import math
import random

import pytest
import torch
from lightning.pytorch import Trainer
from torch.nn import functional as F

from lightning_prompts.backbones.molecule_gin import MoleculeGIN
from lightning_prompts.data.molecules import (
    MoleculeNetDataModule,
    random_split,
    read_moleculenet_csv,
    scaffold_split,
    smiles_to_graph,
)
from lightning_prompts.errors import ConfigurationError, DatasetError
from lightning_prompts.methods import GPF
from lightning_prompts.methods.base.graph import masked_binary_cross_entropy
from lightning_prompts.metrics import MultiTaskAUROC

pytest.importorskip("rdkit")


def test_atoms_and_bonds_become_the_pretrain_gnns_indices():
    alanine = smiles_to_graph("C[C@H](N)C(=O)O")
    # atomic number - 1, and chirality (unspecified 0, CW 1, CCW 2)
    assert alanine.x.tolist() == [[5, 0], [5, 2], [6, 0], [5, 0], [7, 0], [7, 0]]
    assert alanine.edge_index.shape == (2, 10)  # 5 bonds, both directions
    assert alanine.edge_attr[alanine.edge_index[0] == 4].tolist() == [[1, 0]]  # C=O is a double bond
    difluoro = smiles_to_graph("F/C=C/F")  # bond direction: none 0, end-up-right 1, end-down-right 2
    assert difluoro.edge_attr.tolist() == [[0, 1], [0, 1], [1, 0], [1, 0], [0, 1], [0, 1]]
    assert smiles_to_graph("c1ccccc1").edge_attr[:, 0].unique().tolist() == [3]  # aromatic
    salt = smiles_to_graph("[Na+].[Cl-]")
    assert salt.x.tolist() == [[10, 0], [16, 0]] and salt.edge_index.shape == (2, 0)
    with pytest.raises(DatasetError, match="cannot parse"):
        smiles_to_graph("C1CC")


# scaffolds: benzene (0, 3, 6, 8), pyridine (1, 4, 7), cyclohexane (2, 9), none (5), thiophene (10)
SMILES = [
    "Cc1ccccc1", "Cc1ccncc1", "OC1CCCCC1", "Oc1ccccc1", "Nc1ccncc1", "CCCC",
    "Clc1ccccc1", "Clc1ccncc1", "Nc1ccccc1", "NC1CCCCC1", "Cc1cccs1",
]  # fmt: skip


def test_scaffold_split_matches_a_hand_computation():
    # sets by (size, first index), largest first: benzene 4, pyridine 3, cyclohexane 2, then the two
    # singletons with the *larger* first index first (thiophene 10, then none 5), as the official sort.
    # 80% of 11 = 8.8: benzene (4) and pyridine (7) train; cyclohexane would make 9 -> validation
    # (7 + 0 + 2 <= 9.9); thiophene fits (8); none would make 9 > 8.8 and 8 + 2 + 1 > 9.9 -> test.
    train, valid, test = scaffold_split(SMILES)
    assert train == [0, 3, 6, 8, 1, 4, 7, 10]
    assert valid == [2, 9]
    assert test == [5]
    # GPF's few-shot protocol: sets fill at most 5 training molecules, the rest of the 80% is dropped
    train, valid, test = scaffold_split(SMILES, train_graphs=5)
    assert train == [0, 3, 6, 8, 10]
    assert (valid, test) == ([2, 9], [5])
    with pytest.raises(ValueError, match="sum to 1"):
        scaffold_split(SMILES, 0.8, 0.1, 0.2)


def test_relief_few_shot_draw_is_the_whole_scaffold_train_share_shuffled_by_the_split_seed(tmp_path):
    # RELIEF's scaffold_split_fewshot: random.seed(seed); random.shuffle(train_idx); train_idx[:number_train]
    path = write_csv(tmp_path / "m.csv", [f"{s},1,0" for s in SMILES])
    data = MoleculeNetDataModule(str(path), train_graphs=5, few_shot_draw="shuffled", seed=2)
    expected = [0, 3, 6, 8, 1, 4, 7, 10]  # the full scaffold training share (hand computation above)
    random.seed(2)
    random.shuffle(expected)
    splits = data.split_indices()
    assert splits["train"] == expected[:5]
    assert (splits["val"], splits["test"]) == ([2, 9], [5])
    assert data.max_nodes == 7  # chlorobenzene and friends: 7 heavy atoms
    with pytest.raises(ConfigurationError, match="few_shot_draw"):
        MoleculeNetDataModule(str(path), train_graphs=5, few_shot_draw="random")


def test_random_split_is_the_official_seeded_shuffle():
    order = list(range(25))
    random.seed(3)
    random.shuffle(order)
    assert random_split(25, seed=3) == (order[:20], order[20:22], order[22:])


def write_csv(path, rows, header="smiles,task_a,task_b"):
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_csv_reading_skips_unparseable_smiles_and_keeps_missing_labels(tmp_path):
    path = write_csv(tmp_path / "data.csv", ["CCO,1,", "not-a-molecule,0,1", "c1ccccc1,0,1"])
    graphs, smiles, tasks, skipped = read_moleculenet_csv(path)
    assert (smiles, tasks, skipped) == (["CCO", "c1ccccc1"], ["task_a", "task_b"], 1)
    assert graphs[0].y.shape == (1, 2) and graphs[0].y[0, 0] == 1 and math.isnan(graphs[0].y[0, 1])
    with pytest.raises(DatasetError, match="not 0, 1 or empty"):
        read_moleculenet_csv(write_csv(tmp_path / "bad.csv", ["CCO,2,1"]))
    with pytest.raises(DatasetError, match="lacks the task columns"):
        read_moleculenet_csv(path, tasks=["NR-AR"])
    with pytest.raises(DatasetError, match="no SMILES column"):
        read_moleculenet_csv(path, smiles_column="mol")
    with pytest.raises(ConfigurationError, match="dataset must be one of"):
        MoleculeNetDataModule(str(path), dataset="qm9")


def test_masked_bce_is_the_official_loss():
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0], [-2.0, 0.0]])
    targets = torch.tensor([[1.0, float("nan")], [0.0, 1.0], [float("nan"), 0.0]])
    # the official code: labels in {-1, 1} with 0 = missing, BCE on (y + 1) / 2, summed over valid / count
    y = torch.nan_to_num(targets.double() * 2 - 1, nan=0.0)
    valid = y**2 > 0
    losses = F.binary_cross_entropy_with_logits(logits.double(), (y + 1) / 2, reduction="none")
    expected = torch.where(valid, losses, torch.zeros_like(losses)).sum() / valid.sum()
    assert torch.isclose(masked_binary_cross_entropy(logits, targets).double(), expected)


def test_mean_roc_auc_over_tasks_with_both_labels():
    metric = MultiTaskAUROC(3)
    nan = float("nan")
    scores = torch.tensor([[0.1, 0.5, 0.3], [0.4, 0.5, 0.2], [0.35, 0.2, 0.9], [0.8, 0.7, 0.1]])
    targets = torch.tensor([[0, 1, 1], [0, 0, nan], [1, 0, 1], [1, nan, 1]])
    metric.update(scores[:2], targets[:2])
    metric.update(scores[2:], targets[2:])
    mean, per_task = metric.compute()
    # task 0: positives {0.35, 0.8} vs negatives {0.1, 0.4}: 3 of 4 pairs ordered -> 0.75
    # task 1: positive 0.5 vs negatives {0.5 (tie: 1/2), 0.2}: (0.5 + 1) / 2 -> 0.75
    # task 2: only positives among the labelled -> left out
    assert per_task[:2].tolist() == [0.75, 0.75] and math.isnan(per_task[2])
    assert mean.item() == 0.75


def molecule_csv(tmp_path):
    rows = [f"{s},{i % 2},{'' if i % 3 == 0 else (i // 2) % 2}" for i, s in enumerate(SMILES * 2)]
    return write_csv(tmp_path / "molecules.csv", rows)


def test_gpf_trains_on_molecules_with_masked_bce_and_logs_roc_auc(tmp_path, trainer_kwargs):
    data = MoleculeNetDataModule(str(molecule_csv(tmp_path)), batch_size=4)
    assert data.classnames == ["task_a", "task_b"]
    method = GPF(MoleculeGIN(num_layers=2, emb_dim=8), data.classnames, objective="masked_bce")
    trainer = Trainer(max_steps=2, **trainer_kwargs)
    trainer.fit(method, data)
    (metrics,) = trainer.validate(method, data)
    assert 0.0 <= metrics["val/roc_auc"] <= 1.0 and metrics["val/tasks_scored"] > 0
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert method.batch_targets(batch).shape == (4, 2)
    wrong = GPF(MoleculeGIN(num_layers=2, emb_dim=8), data.classnames)
    with pytest.raises(ConfigurationError, match="set objective: masked_bce"):
        Trainer(max_steps=1, **trainer_kwargs).fit(wrong, data)


def test_relief_trains_on_molecules_with_the_official_reward_and_logs_roc_auc(tmp_path, trainer_kwargs):
    from lightning_prompts.methods.relief import RELIEF

    data = MoleculeNetDataModule(str(molecule_csv(tmp_path)), train_graphs=8, few_shot_draw="shuffled", batch_size=8)
    settings = {"objective": "masked_bce", "ensemble_size": 2, "ppo_minibatch_size": 8, "ppo_epochs": 2}
    method = RELIEF(MoleculeGIN(num_layers=2, emb_dim=8), data.classnames, max_nodes=7, **settings)
    trainer = Trainer(max_epochs=1, **trainer_kwargs)
    trainer.fit(method, data)
    assert trainer.global_step > 1  # PPO updates and the head steps, all in one training batch
    (metrics,) = trainer.validate(method, data)
    assert 0.0 <= metrics["val/roc_auc"] <= 1.0
    too_small = RELIEF(MoleculeGIN(num_layers=2, emb_dim=8), data.classnames, max_nodes=5, **settings)
    with pytest.raises(ConfigurationError, match="largest graph has 7 nodes .*max_nodes: 7"):
        Trainer(max_epochs=1, **trainer_kwargs).fit(too_small, data)
