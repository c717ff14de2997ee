"""Pre-training losses that average over a varying number of terms per batch (real tokens, masked atoms, edge
pairs) must train alike on one process and on several: under DDP each process's share of the global batch holds
a different count, and DDP averages the processes' gradients. Each loss divides its sum by the global count
(:func:`~lightning_prompts.utils.distributed.global_batch_mean`); here two processes are simulated (each share's
loss with the collective's count summed over both shares, DDP's mean of the two gradients) and compared with
one process on the whole batch. Each case fails with per-process means (the shares' counts differ)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch

import lightning_prompts.utils.distributed as distributed
from lightning_prompts.pretraining.edge_prediction import edge_prediction_loss
from lightning_prompts.pretraining.post_distillation import distillation_loss


def ddp_gradient(monkeypatch, loss_of: Callable[[int], torch.Tensor], parameter: torch.Tensor, shares: int):
    """The gradient DDP averages over ``shares`` processes, each computing ``loss_of(its index)``."""
    monkeypatch.setattr(distributed, "process_count_and_rank", lambda: (shares, 0))
    asked: list[list[torch.Tensor]] = []
    for share in range(shares):  # the counts each process hands the collective, in the order it asks
        own: list[torch.Tensor] = []
        monkeypatch.setattr(distributed.dist, "all_reduce", lambda count, own=own: own.append(count.clone()))
        loss_of(share)
        asked.append(own)
    averaged = torch.zeros_like(parameter)
    for share in range(shares):
        calls = iter(range(len(asked[share])))

        def all_reduce(count, calls=calls):
            call = next(calls)
            count.copy_(sum(counts[call] for counts in asked))

        monkeypatch.setattr(distributed.dist, "all_reduce", all_reduce)
        parameter.grad = None
        loss_of(share).backward()
        averaged += parameter.grad / shares
    monkeypatch.undo()
    return averaged


def one_process_gradient(loss: torch.Tensor, parameter: torch.Tensor) -> torch.Tensor:
    parameter.grad = None
    loss.backward()
    return parameter.grad.clone()


def test_post_distillation_averages_over_the_global_batchs_tokens(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    vocabulary, width, length = 11, 6, 5
    hidden = torch.randn(4, length, width, generator=generator)
    teacher = torch.randn(4, length, vocabulary, generator=generator) * 3
    ids = torch.randint(0, vocabulary, (4, length), generator=generator)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])  # 10 and 3 tokens
    weight = (torch.randn(width, vocabulary, generator=generator) * 2).requires_grad_(True)
    rows: Sequence[slice] = (slice(0, 2), slice(2, 4))

    def loss_of(part: slice) -> torch.Tensor:
        logits = hidden[part] @ weight
        return distillation_loss(
            logits, teacher[part], ids[part], mask[part], 2.0, 0.5, 0.5, 0.3, 0.2, logits, teacher[part]
        )["loss"]

    expected = one_process_gradient(loss_of(slice(None)), weight)
    averaged = ddp_gradient(monkeypatch, lambda share: loss_of(rows[share]), weight, 2)
    torch.testing.assert_close(averaged, expected, rtol=1e-5, atol=1e-6)


def test_edge_prediction_averages_over_the_global_batchs_pairs(monkeypatch):
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(9, 4, generator=generator)
    weight = torch.randn(4, 4, generator=generator).requires_grad_(True)
    positives = [torch.tensor([[0, 1, 2], [1, 2, 3]]), torch.tensor([[6], [7]])]  # 3 and 1 edges
    negatives = [torch.tensor([[0, 3, 1, 0, 2], [2, 4, 4, 3, 4]]), torch.tensor([[5, 6], [8, 8]])]

    def loss_of(share: int | None) -> torch.Tensor:
        pos = torch.cat(positives, 1) if share is None else positives[share]
        neg = torch.cat(negatives, 1) if share is None else negatives[share]
        return edge_prediction_loss(features @ weight, pos, neg)

    expected = one_process_gradient(loss_of(None), weight)
    torch.testing.assert_close(ddp_gradient(monkeypatch, loss_of, weight, 2), expected, rtol=1e-5, atol=1e-6)


def test_attribute_masking_averages_over_the_global_batchs_masked_atoms(monkeypatch):
    pytest.importorskip("rdkit")
    from torch_geometric.data import Batch

    from lightning_prompts.backbones.molecule_gin import MoleculeGIN
    from lightning_prompts.data.molecules import smiles_to_graph
    from lightning_prompts.pretraining.attribute_masking import AttributeMasking

    torch.manual_seed(0)
    # eval mode: BatchNorm's batch statistics would differ between a share and the whole batch anyway
    module = AttributeMasking(MoleculeGIN(num_layers=2, emb_dim=8)).eval()
    shares = [["CC(=O)Oc1ccccc1C(=O)O", "OCC1OC(O)C(O)C(O)C1O"], ["CCO"]]
    masked_atoms = {"CC(=O)Oc1ccccc1C(=O)O": [0, 3, 7], "OCC1OC(O)C(O)C(O)C1O": [1, 4], "CCO": [2]}  # 5 and 1

    def loss_of(share: int | None) -> torch.Tensor:
        molecules = [m for part in shares for m in part] if share is None else shares[share]
        graphs = [smiles_to_graph(m) for m in molecules]
        masked = torch.cat(
            [torch.isin(torch.arange(g.num_nodes), torch.tensor(masked_atoms[m])) for m, g in zip(molecules, graphs)]
        )
        return module.masked_atom_loss(Batch.from_data_list(graphs), masked)[0]

    parameter = module.atom_predictor.weight
    expected = one_process_gradient(loss_of(None), parameter)
    torch.testing.assert_close(ddp_gradient(monkeypatch, loss_of, parameter, 2), expected, rtol=1e-5, atol=1e-6)
