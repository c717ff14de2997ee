"""The bio GIN against a transcription of the official Pretrain-GNNs ``bio/model.py`` (``GINConv`` and ``GNN``), from
a checkpoint written in the released files' exact key format, with GPF's prompt where GPF's ``bio`` code adds it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Batch, Data
from torch_geometric.utils import add_self_loops

from lightning_prompts.backbones.bio_gin import BioGIN
from lightning_prompts.methods import GPF

LAYERS, WIDTH = 3, 8


def official_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with the released files' keys (bio/model_gin/*.pth), BatchNorm statistics included."""
    g = torch.Generator().manual_seed(seed)
    state = {"gnns.0.input_node_embeddings.weight": torch.randn(2, WIDTH, generator=g)}
    for i in range(LAYERS):
        p = f"gnns.{i}."
        shapes = {
            "mlp.0.weight": (2 * WIDTH, 2 * WIDTH), "mlp.0.bias": (2 * WIDTH,), "mlp.1.weight": (2 * WIDTH,),
            "mlp.1.bias": (2 * WIDTH,), "mlp.1.running_mean": (2 * WIDTH,), "mlp.3.weight": (WIDTH, 2 * WIDTH),
            "mlp.3.bias": (WIDTH,), "edge_encoder.weight": (WIDTH, 9), "edge_encoder.bias": (WIDTH,),
        }  # fmt: skip
        state |= {p + name: torch.randn(shape, generator=g) / 2 for name, shape in shapes.items()}
        state[p + "mlp.1.running_var"] = 0.5 + torch.rand(2 * WIDTH, generator=g)
        state[p + "mlp.1.num_batches_tracked"] = torch.tensor(100)
    return state


def official_forward(state, x, edge_index, edge_attr, prompt=None):
    """GNN.forward of bio/model.py with GINConv in eval mode (dropout 0, BatchNorm running statistics)."""
    h = x
    for i in range(LAYERS):
        p = f"gnns.{i}."
        loops, _ = add_self_loops(edge_index, num_nodes=h.size(0))
        loop_attr = torch.zeros(h.size(0), 9)
        loop_attr[:, 7] = 1
        edges = F.linear(
            torch.cat((edge_attr, loop_attr), 0), state[p + "edge_encoder.weight"], state[p + "edge_encoder.bias"]
        )
        if i == 0:
            h = F.embedding(h.to(torch.int64).view(-1), state["gnns.0.input_node_embeddings.weight"])
            if prompt is not None:
                h = h + prompt  # GPF's bio GINConv: x = prompt.add(x) after the input embedding
        messages = torch.cat([h[loops[0]], edges], dim=1)
        out = torch.zeros(h.size(0), 2 * WIDTH).index_add_(0, loops[1], messages)
        out = F.linear(out, state[p + "mlp.0.weight"], state[p + "mlp.0.bias"])
        out = F.batch_norm(out, state[p + "mlp.1.running_mean"], state[p + "mlp.1.running_var"],
                           state[p + "mlp.1.weight"], state[p + "mlp.1.bias"], training=False)  # fmt: skip
        out = F.linear(F.relu(out), state[p + "mlp.3.weight"], state[p + "mlp.3.bias"])
        h = out if i == LAYERS - 1 else F.relu(out)
    return h


def ego_graph(seed: int = 0) -> Data:
    g = torch.Generator().manual_seed(seed)
    edges = torch.tensor([[0, 1, 1, 2, 2, 3, 0, 4], [1, 0, 2, 1, 3, 2, 4, 0]])
    attr = torch.zeros(8, 9)
    attr[torch.arange(8), torch.randint(0, 7, (8,), generator=g)] = 1
    return Data(x=torch.tensor([[1], [0], [0], [0], [0]]), edge_index=edges, edge_attr=attr, y=torch.tensor([1]))


@pytest.mark.parametrize("prefix", ["", "gnn."])
def test_a_checkpoint_in_the_released_key_format_gives_the_official_embeddings(tmp_path, prefix):
    state = official_state()
    path = tmp_path / "contextpred.pth"
    torch.save({prefix + k: v for k, v in state.items()}, path)  # plain, or a whole GNN_graphpred (keys under gnn.)
    backbone = BioGIN(str(path), num_layers=LAYERS, emb_dim=WIDTH)
    data = ego_graph()
    ours = backbone.encode_nodes(data.x, data.edge_index, edge_attr=data.edge_attr)
    torch.testing.assert_close(ours, official_forward(state, data.x, data.edge_index, data.edge_attr))
    with pytest.raises(ValueError, match="3-layer, 8-wide bio GIN"):
        BioGIN(str(path), num_layers=5, emb_dim=WIDTH)


def test_gpf_prompts_the_embedded_nodes_as_gpfs_bio_code_does(tmp_path):
    state = official_state(1)
    path = tmp_path / "bio.pth"
    torch.save(state, path)
    method = GPF(BioGIN(str(path), num_layers=LAYERS, emb_dim=WIDTH), ["no", "yes"], variant="gpf", task="graph").eval()
    batch = Batch.from_data_list([ego_graph(0), ego_graph(1)])
    with torch.no_grad():
        pooled = method(batch).pooled_features
        nodes = official_forward(state, batch.x, batch.edge_index, batch.edge_attr, prompt=method.prompt.global_emb)
    torch.testing.assert_close(pooled, torch.stack([nodes[:5].mean(0), nodes[5:].mean(0)]))
    with pytest.raises(ValueError, match="9-dim edge features"):
        method.backbone.encode_nodes(batch.x, batch.edge_index, edge_attr=batch.edge_attr[:, :4])
