"""The protein-association ("bio") GIN of "Strategies for Pre-training Graph Neural Networks" (Hu et al., ICLR
2020), the encoder behind GPF's ``bio/pretrained_models/*.pth`` checkpoints.

Nodes enter as one integer flag (``x`` ``(N, 1)``, 0 or 1: the ego-network's centre) that an embedding table of two
rows turns into ``emb_dim`` features; every layer maps the 9-dim edge features linearly to ``emb_dim`` (self-loops
carry the one-hot self-loop attribute, index 7), concatenates them to the neighbour's features, sums the messages
and applies ``Linear(2d, 2d) → BatchNorm → ReLU → Linear(2d, d)``; ReLU between layers (none after the last); the
node embeddings are the last layer's output. There is no BatchNorm between layers, unlike the molecule GIN.

The module tree repeats the official one (``gnns.<i>.mlp``, ``gnns.<i>.edge_encoder``,
``gnns.0.input_node_embeddings``), so the released plain state dicts load as they are (``weights_only=True``). The
input embedding is taken before layer 0 here (the official layer 0 embeds inside its forward), so a block hook
before layer 0 — GPF's prompt — lands where GPF's ``bio`` code adds it: on the embedded nodes.

The bio *dataset* (STRING ego-networks) is read from its processed file, without unpickling code, by
:class:`~lightning_prompts.data.bio.BioDataModule`; graphs of your own are PyG ``Data`` with ``x`` ``(N, 1)`` and
``edge_attr`` ``(E, 9)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_prompts.backbones.pretrain_gnns import PretrainGNNsBackbone
from lightning_prompts.registry import register_backbone

EDGE_FEATURES = 9
SELF_LOOP_FEATURE = 7


class BioGINLayer(nn.Module):
    """One bio GIN layer: messages ``[x_j ‖ W e_ij]`` summed over in-edges and a self-loop, then the MLP."""

    def __init__(self, emb_dim: int, input_layer: bool = False) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(2 * emb_dim, 2 * emb_dim), nn.BatchNorm1d(2 * emb_dim), nn.ReLU(), nn.Linear(2 * emb_dim, emb_dim)
        )
        self.edge_encoder = nn.Linear(EDGE_FEATURES, emb_dim)
        if input_layer:
            self.input_node_embeddings = nn.Embedding(2, emb_dim)
            nn.init.xavier_uniform_(self.input_node_embeddings.weight)

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        num_nodes = x.shape[0]
        loops = torch.arange(num_nodes, device=x.device)
        source, target = torch.cat([edge_index[0], loops]), torch.cat([edge_index[1], loops])
        loop_attr = torch.zeros(num_nodes, EDGE_FEATURES, dtype=edge_attr.dtype, device=edge_attr.device)
        loop_attr[:, SELF_LOOP_FEATURE] = 1
        edges = self.edge_encoder(torch.cat([edge_attr, loop_attr]).to(x.dtype))
        messages = torch.cat([x[source], edges], dim=1)
        summed = messages.new_zeros(num_nodes, messages.shape[1]).index_add_(0, target, messages)
        return self.mlp(summed)


class BioGINEncoder(nn.Module):
    """The node embedding table and ``num_layers`` :class:`BioGINLayer` (see the module docstring)."""

    def __init__(self, num_layers: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        if num_layers < 2:
            raise ValueError(f"num_layers must be at least 2 (as in the official encoder), got {num_layers}.")
        self.dropout = dropout
        self.gnns = nn.ModuleList(BioGINLayer(emb_dim, input_layer=index == 0) for index in range(num_layers))

    def embed_nodes(self, x: Tensor) -> Tensor:
        return self.gnns[0].input_node_embeddings(x.to(torch.int64).view(-1))

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        h = self.embed_nodes(x)  # before layer 0, so a hook on layer 0 sees the embedded nodes
        last = len(self.gnns) - 1
        for index, layer in enumerate(self.gnns):
            h = layer(h, edge_index, edge_attr)
            h = F.dropout(h if index == last else F.relu(h), self.dropout, training=self.training)
        return h


@register_backbone(family="graph")
class BioGIN(PretrainGNNsBackbone):
    """The frozen bio GIN of Pretrain-GNNs and GPF (see the module docstring).

    Args:
        checkpoint_path: a ``.pth`` of the Pretrain-GNNs or GPF repositories (``bio/pretrained_models/
            contextpred.pth`` …; a whole ``GNN_graphpred`` state dict too, its head dropped); ``None``: random.
        num_layers: message-passing layers (5 in the released checkpoints).
        emb_dim: width (300 in the released checkpoints).
        seed: seed of the random initialisation.
    """

    encoder_class = BioGINEncoder
    marker_key = "gnns.0.input_node_embeddings.weight"
    label = "bio GIN"

    @property
    def input_features(self) -> int:
        """Columns of ``data.x``: the centre flag."""
        return 1

    def check_inputs(self, x: Tensor, edge_attr: Tensor | None) -> None:
        if x.dim() != 2 or x.shape[1] != 1 or x.is_floating_point() and not torch.equal(x, x.round()):
            raise ValueError(f"{self.name} reads nodes as (N, 1) 0/1 flags, got {x.dtype} {tuple(x.shape)}.")
        if edge_attr is None or edge_attr.dim() != 2 or edge_attr.shape[1] != EDGE_FEATURES:
            raise ValueError(f"{self.name} needs 9-dim edge features (data.edge_attr), as the STRING graphs carry.")
