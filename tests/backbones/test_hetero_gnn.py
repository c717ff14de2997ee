"""The heterogeneous GNN's forward written out with plain tensor operations: a linear map per node type (after the
type's feature prompt), then per layer one GraphSAGE convolution per edge type (mean of the sources, ``lin_l`` with
bias, plus ``lin_r`` of the destination itself), summed per destination type, ReLU between layers; a type no edge
reaches keeps its state."""

from __future__ import annotations

import torch
from helpers import widened

from lightning_prompts.backbones.hetero_gnn import HeteroGNN

EDGES = [("paper", "to", "author"), ("author", "to", "paper"), ("paper", "cites", "paper")]


def sage(conv, source: torch.Tensor, target: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    """PyG's SAGEConv (mean aggregation, root weight, no normalisation) by hand."""
    total = torch.zeros_like(target).index_add_(0, edge_index[1], source[edge_index[0]])
    count = torch.bincount(edge_index[1], minlength=target.shape[0]).clamp_min(1)[:, None]
    return conv.lin_l(total / count) + conv.lin_r(target)


def test_encode_nodes_is_per_type_projections_then_summed_sage_convolutions():
    torch.manual_seed(0)
    gnn = HeteroGNN({"paper": 5, "author": 3, "venue": 2}, [list(e) for e in EDGES], hidden_channels=6, num_layers=2)
    widened(gnn.encoder)
    x = {"paper": torch.randn(7, 5), "author": torch.randn(4, 3), "venue": torch.randn(2, 2)}
    edges = {
        EDGES[0]: torch.tensor([[0, 1, 2, 3, 6], [0, 0, 1, 2, 3]]),
        EDGES[1]: torch.tensor([[0, 1, 3], [4, 5, 6]]),
        EDGES[2]: torch.tensor([[0, 1, 2, 5], [1, 2, 3, 6]]),
    }
    shift = torch.randn(3)
    with torch.no_grad():
        ours = gnn.encode_nodes(x, edges, feature_prompts={"author": lambda features: features + shift})
        encoder = gnn.encoder
        hidden = {node: encoder.inputs[node](value + (shift if node == "author" else 0)) for node, value in x.items()}
        for index, conv in enumerate(encoder.convs):
            out = {node: torch.zeros_like(value) for node, value in hidden.items()}
            for edge_type in EDGES:
                source, _, target = edge_type
                out[target] += sage(conv.convs[edge_type], hidden[source], hidden[target], edges[edge_type])
            out["venue"] = hidden["venue"]  # no edge reaches it
            hidden = {node: value.relu() for node, value in out.items()} if index == 0 else out
    for node in x:
        torch.testing.assert_close(ours[node], hidden[node], atol=1e-5, rtol=1e-5)
    assert ours["author"][3].abs().sum() > 0 and not torch.allclose(ours["paper"][0], ours["paper"][4])
