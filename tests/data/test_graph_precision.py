"""Graph batches in the Trainer's precision (``lightning_prompts.data.graph_precision``)."""

from __future__ import annotations

import types

import torch
from torch_geometric.data import Data


def test_graph_batches_take_the_trainers_true_precision_without_changing_the_stored_graph():
    """Lightning converts the floating tensors of tensors, mappings and sequences under '-true' precisions, not
    of PyG graphs: the graph data modules convert those after the transfer, on a copy."""
    from lightning.pytorch.plugins.precision import HalfPrecision, MixedPrecision
    from torch_geometric.data import HeteroData

    from lightning_prompts.data.graph_precision import graphs_in_trainer_precision

    graph = Data(x=torch.randn(4, 3), edge_index=torch.tensor([[0, 1], [1, 2]]), y=torch.tensor([1]))
    typed = HeteroData()
    typed["paper"].x, typed["author"].x = torch.randn(3, 2), torch.randn(2, 5)
    typed["author", "writes", "paper"].edge_index = torch.tensor([[0, 1], [2, 0]])
    half = types.SimpleNamespace(precision_plugin=HalfPrecision("bf16-true"))
    converted = graphs_in_trainer_precision({"graph": graph, "typed": [typed]}, half)
    assert converted["graph"].x.dtype == torch.bfloat16
    assert torch.equal(converted["graph"].x, graph.x.bfloat16())
    assert converted["graph"].edge_index.dtype == converted["graph"].y.dtype == torch.long  # integers stay
    assert {x.dtype for x in converted["typed"][0].x_dict.values()} == {torch.bfloat16}
    assert graph.x.dtype == typed["paper"].x.dtype == typed["author"].x.dtype == torch.float32  # stored graph kept
    mixed = types.SimpleNamespace(precision_plugin=MixedPrecision("bf16-mixed", "cpu"))
    assert graphs_in_trainer_precision(graph, mixed) is graph  # autocast converts; the batch is left alone
    assert graphs_in_trainer_precision(graph, None) is graph  # outside a Trainer
