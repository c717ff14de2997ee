"""The molecule GIN against a re-computation of the Pretrain-GNNs / GPF encoder, from a checkpoint
written in the exact key format of the released ``chem/pretrained_models/*.pth`` files."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F
from torch_geometric.data import Batch

from lightning_prompts.backbones.molecule_gin import MoleculeGIN
from lightning_prompts.data.molecules import smiles_to_graph
from lightning_prompts.methods import GPF

pytest.importorskip("rdkit")

MOLECULES = ["C[C@H](N)C(=O)O", "F/C=C/F", "c1ccccc1O", "C#N", "[Na+].[Cl-]"]
LAYERS, WIDTH = 3, 8


def official_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the parameter names of the official ``GNN(num_layer, emb_dim)``, scaled so
    that atoms and layers give clearly different outputs; BatchNorm statistics are not the identity."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    state = {"x_embedding1.weight": rand(120, WIDTH), "x_embedding2.weight": rand(3, WIDTH)}
    for i in range(LAYERS):
        state |= {
            f"gnns.{i}.mlp.0.weight": rand(2 * WIDTH, WIDTH, scale=0.5),
            f"gnns.{i}.mlp.0.bias": rand(2 * WIDTH, scale=0.1),
            f"gnns.{i}.mlp.2.weight": rand(WIDTH, 2 * WIDTH, scale=0.5),
            f"gnns.{i}.mlp.2.bias": rand(WIDTH, scale=0.1),
            f"gnns.{i}.edge_embedding1.weight": rand(6, WIDTH),
            f"gnns.{i}.edge_embedding2.weight": rand(3, WIDTH),
            f"batch_norms.{i}.weight": 1 + rand(WIDTH, scale=0.1),
            f"batch_norms.{i}.bias": rand(WIDTH, scale=0.1),
            f"batch_norms.{i}.running_mean": rand(WIDTH),
            f"batch_norms.{i}.running_var": 1 + rand(WIDTH).abs(),
            f"batch_norms.{i}.num_batches_tracked": torch.tensor(1000),
        }
    return state


def reference_nodes(state, x, edge_index, edge_attr, prompt=None):
    """The official forward in eval mode, edge by edge: atom embeddings (+ the GPF prompt), then per
    layer a sum over in-edges and a self-loop (bond type 4, direction 0) of neighbour + bond embedding,
    the MLP, BatchNorm with running statistics, and ReLU except after the last layer."""
    h = state["x_embedding1.weight"][x[:, 0]] + state["x_embedding2.weight"][x[:, 1]]
    if prompt is not None:
        h = h + prompt
    for i in range(LAYERS):
        types, directions = state[f"gnns.{i}.edge_embedding1.weight"], state[f"gnns.{i}.edge_embedding2.weight"]
        summed = []
        for node in range(h.shape[0]):
            total = h[node] + types[4] + directions[0]
            for e in range(edge_index.shape[1]):
                if int(edge_index[1, e]) == node:
                    total = total + h[int(edge_index[0, e])] + types[edge_attr[e, 0]] + directions[edge_attr[e, 1]]
            summed.append(total)
        a = torch.stack(summed)
        a = F.relu(a @ state[f"gnns.{i}.mlp.0.weight"].t() + state[f"gnns.{i}.mlp.0.bias"])
        a = a @ state[f"gnns.{i}.mlp.2.weight"].t() + state[f"gnns.{i}.mlp.2.bias"]
        mean, var = state[f"batch_norms.{i}.running_mean"], state[f"batch_norms.{i}.running_var"]
        a = (a - mean) / torch.sqrt(var + 1e-5) * state[f"batch_norms.{i}.weight"] + state[f"batch_norms.{i}.bias"]
        h = a if i == LAYERS - 1 else F.relu(a)
    return h


@pytest.fixture(params=["zip", "legacy"])
def checkpoint(request, tmp_path):
    """The released files are 2019-era ``torch.save(gnn.state_dict())`` pickles; test both formats."""
    path = tmp_path / "contextpred.pth"
    torch.save(official_state_dict(), path, _use_new_zipfile_serialization=request.param == "zip")
    return path


def test_released_checkpoint_format_loads_with_identical_outputs(checkpoint):
    gnn = MoleculeGIN(str(checkpoint), num_layers=LAYERS, emb_dim=WIDTH)
    batch = Batch.from_data_list([smiles_to_graph(s) for s in MOLECULES])
    ours = gnn.encode_nodes(batch.x, batch.edge_index, edge_attr=batch.edge_attr)
    expected = reference_nodes(official_state_dict(), batch.x, batch.edge_index, batch.edge_attr)
    assert ours.shape == (batch.num_nodes, WIDTH)
    assert expected.std() > 0.5  # the check is not between near-zero tensors
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_gpf_prompt_enters_after_the_atom_embedding(checkpoint):
    torch.manual_seed(0)  # the head's initialisation too: the check must not depend on the worker's RNG state
    gnn = MoleculeGIN(str(checkpoint), num_layers=LAYERS, emb_dim=WIDTH)
    method = GPF(gnn, ["p_np"], variant="gpf", task="graph", objective="masked_bce")
    with torch.no_grad():  # seeded: the check must not depend on what ran before in the worker
        method.prompt.global_emb.normal_(generator=torch.Generator().manual_seed(0))
    batch = Batch.from_data_list([smiles_to_graph(s) for s in MOLECULES])
    output = method(batch)
    nodes = reference_nodes(
        official_state_dict(), batch.x, batch.edge_index, batch.edge_attr, prompt=method.prompt.global_emb.view(-1)
    )
    pooled = torch.stack([nodes[batch.batch == i].mean(0) for i in range(len(MOLECULES))])
    torch.testing.assert_close(output.pooled_features, pooled, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(output.logits, method.head(pooled))


def test_whole_graph_prediction_model_state_loads_its_encoder(tmp_path):
    path = tmp_path / "finetuned.pth"
    state = {f"gnn.{k}": v for k, v in official_state_dict().items()} | {"graph_pred_linear.0.weight": torch.ones(1, 8)}
    torch.save(state, path)
    gnn = MoleculeGIN(str(path), num_layers=LAYERS, emb_dim=WIDTH)
    torch.testing.assert_close(gnn.encoder.x_embedding1.weight, official_state_dict()["x_embedding1.weight"])


def test_bad_checkpoints_and_inputs_are_refused_with_the_reason(tmp_path, checkpoint):
    with pytest.raises(ValueError, match="3-layer, 8-wide molecule GIN"):
        MoleculeGIN(str(checkpoint), num_layers=5, emb_dim=300)
    with pytest.raises(FileNotFoundError):
        MoleculeGIN(str(tmp_path / "missing.pth"))
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.ones(2)}, other)
    with pytest.raises(ValueError, match="not a Pretrain-GNNs molecule GIN"):
        MoleculeGIN(str(other))
    code = tmp_path / "code.pth"
    torch.save({"x_embedding1.weight": torch.ones(2), "hook": print}, code)
    with pytest.raises(ValueError, match="weights_only"):
        MoleculeGIN(str(code))
    gnn = MoleculeGIN(num_layers=2, emb_dim=4)
    graph = smiles_to_graph("CCO")
    with pytest.raises(ValueError, match="integer indices"):
        gnn.encode_nodes(graph.x.float(), graph.edge_index, edge_attr=graph.edge_attr)
    with pytest.raises(ValueError, match="bond features"):
        gnn.encode_nodes(graph.x, graph.edge_index)
    with pytest.raises(ValueError, match="outside the embedding tables"):
        gnn.encode_nodes(torch.tensor([[5, 3], [5, 0], [7, 0]]), graph.edge_index, edge_attr=graph.edge_attr)
