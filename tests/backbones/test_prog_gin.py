"""ProGGIN: a checkpoint written in the official key format (RELIEF's node-level ``GIN``, ProG's) loads with
identical node embeddings; the prompt seam is before layer 0; other shapes and files are refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import GINConv, global_mean_pool

from lightning_prompts.backbones.hooks import BlockHook
from lightning_prompts.backbones.prog_gin import ProGGIN


class OfficialGIN(nn.Module):
    """RELIEF node_level/model.py's GIN, transcribed (JK="last", eval mode: dropout off)."""

    def __init__(self, input_dim, hid_dim, num_layer=2):
        super().__init__()
        conv = lambda i, h: GINConv(nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, h)))  # noqa: E731
        self.conv_layers = nn.ModuleList(
            [conv(input_dim, hid_dim)] + [conv(hid_dim, hid_dim) for _ in range(num_layer - 1)]
        )

    def forward(self, x, edge_index, prompt=None, batch=None):
        if prompt is not None:
            x = x + prompt
        for conv in self.conv_layers[:-1]:
            x = F.dropout(F.leaky_relu(conv(x, edge_index)), 0.5, training=self.training)
        x = self.conv_layers[-1](x, edge_index)
        return x if batch is None else global_mean_pool(x, batch)


class AddToInputs(BlockHook):
    def __init__(self, prompt):
        self.prompt = prompt

    def before_block(self, context, tokens):
        return tokens + self.prompt if context.index == 0 else tokens


def graph(nodes=9, features=10, seed=0):
    generator = torch.Generator().manual_seed(seed)
    edges = torch.randint(0, nodes, (2, 24), generator=generator)
    return 3 * torch.randn(nodes, features, generator=generator), edges


def test_an_official_checkpoint_loads_with_identical_embeddings_and_the_prompt_enters_before_layer_0(tmp_path):
    torch.manual_seed(0)
    official = OfficialGIN(10, 16, num_layer=3).eval()
    path = tmp_path / "GPPT_Tiny.pth"
    torch.save(official.state_dict(), path)
    ours = ProGGIN(in_channels=10, hidden_channels=16, num_layers=3, checkpoint_path=str(path))
    x, edges = graph()
    expected = official(x, edges)
    torch.testing.assert_close(ours.encode_nodes(x, edges), expected)
    assert expected.std() > 0.1  # the embeddings are not trivially equal
    prompt = torch.randn(10)
    torch.testing.assert_close(
        ours.encode_nodes(x, edges, hooks=AddToInputs(prompt)), official(x, edges, prompt=prompt)
    )
    batch = torch.tensor([0] * 4 + [1] * 5)
    torch.testing.assert_close(ours.pool(ours.encode_nodes(x, edges), batch), official(x, edges, batch=batch))
    assert not any(p.requires_grad for p in ours.parameters()) and ours.name == "prog-gin-3x16/GPPT_Tiny.pth"


def test_other_shapes_and_files_are_refused(tmp_path):
    path = tmp_path / "gin.pth"
    torch.save(OfficialGIN(10, 16).state_dict(), path)
    with pytest.raises(ValueError, match="configured with"):
        ProGGIN(in_channels=100, hidden_channels=128, num_layers=2, checkpoint_path=str(path))
    torch.save({"gnns.0.mlp.0.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="is not a ProG GIN"):
        ProGGIN(in_channels=10, hidden_channels=16, checkpoint_path=str(tmp_path / "other.pth"))
    with pytest.raises(ValueError, match="expects 10"):
        ProGGIN(in_channels=10, hidden_channels=16).encode_nodes(torch.zeros(3, 4), torch.zeros(2, 0, dtype=torch.long))
