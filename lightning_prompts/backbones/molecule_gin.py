"""The molecule GIN of "Strategies for Pre-training Graph Neural Networks" (Hu et al., ICLR 2020), the
encoder behind GPF's released checkpoints.

Atoms enter as two integer columns (atom-type index, chirality index) that two embedding tables turn
into ``emb_dim`` features; every layer adds bond embeddings (bond type + bond direction) to the
messages, with self-loops of bond type 4, sums them, and applies a two-layer MLP, BatchNorm and ReLU
(no ReLU after the last layer); the node embeddings are the last layer's output (``JK="last"``).

The module tree repeats the official one (``x_embedding1/2``, ``gnns.<i>.mlp``,
``gnns.<i>.edge_embedding1/2``, ``batch_norms.<i>``), so the ``.pth`` files of the
``snap-stanford/pretrain-gnns`` and ``LuckyTiger123/GPF`` repositories (``chem/pretrained_models/
{infomax,edgepred,masking,contextpred,gcl}.pth``, plain state dicts) load as they are, read with
``torch.load(weights_only=True)``. Block hooks edit the features entering each layer, so GPF's prompt
lands where the official code adds it: after the atom embedding, before layer 0.

The ``bio`` (protein-association) encoder of the same papers has another layer (edge features through a linear
map, concatenated messages): :class:`~lightning_prompts.backbones.bio_gin.BioGIN`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_prompts.backbones.pretrain_gnns import PretrainGNNsBackbone
from lightning_prompts.registry import register_backbone

#: Embedding rows of the official code: 118 elements + padding + the attribute-masking token.
NUM_ATOM_TYPES = 120
NUM_CHIRALITY_TAGS = 3
#: Single, double, triple, aromatic, the self-loop type (4) and the masking token (5).
NUM_BOND_TYPES = 6
NUM_BOND_DIRECTIONS = 3
SELF_LOOP_BOND_TYPE = 4


class BondGINLayer(nn.Module):
    """One GIN layer with bond embeddings added to the messages (sum aggregation over in-edges and a
    self-loop), then ``Linear(d, 2d) → ReLU → Linear(2d, d)``."""

    def __init__(self, emb_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(emb_dim, 2 * emb_dim), nn.ReLU(), nn.Linear(2 * emb_dim, emb_dim))
        self.edge_embedding1 = nn.Embedding(NUM_BOND_TYPES, emb_dim)
        self.edge_embedding2 = nn.Embedding(NUM_BOND_DIRECTIONS, emb_dim)
        nn.init.xavier_uniform_(self.edge_embedding1.weight)
        nn.init.xavier_uniform_(self.edge_embedding2.weight)

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        num_nodes = x.shape[0]
        loops = torch.arange(num_nodes, device=x.device)
        source = torch.cat([edge_index[0], loops])
        target = torch.cat([edge_index[1], loops])
        loop_attr = torch.zeros(num_nodes, 2, dtype=edge_attr.dtype, device=edge_attr.device)
        loop_attr[:, 0] = SELF_LOOP_BOND_TYPE
        attr = torch.cat([edge_attr, loop_attr])
        bonds = self.edge_embedding1(attr[:, 0]) + self.edge_embedding2(attr[:, 1])
        messages = x[source] + bonds
        summed = messages.new_zeros(x.shape).index_add_(0, target, messages)  # bf16 x, fp32 messages under autocast
        return self.mlp(summed)


class MoleculeGINEncoder(nn.Module):
    """Atom embeddings and ``num_layers`` :class:`BondGINLayer` with BatchNorm; parameter names as in the
    official ``GNN`` class (see the module docstring)."""

    def __init__(self, num_layers: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        if num_layers < 2:
            raise ValueError(f"num_layers must be at least 2 (as in the official encoder), got {num_layers}.")
        self.dropout = dropout
        self.x_embedding1 = nn.Embedding(NUM_ATOM_TYPES, emb_dim)
        self.x_embedding2 = nn.Embedding(NUM_CHIRALITY_TAGS, emb_dim)
        nn.init.xavier_uniform_(self.x_embedding1.weight)
        nn.init.xavier_uniform_(self.x_embedding2.weight)
        self.gnns = nn.ModuleList(BondGINLayer(emb_dim) for _ in range(num_layers))
        self.batch_norms = nn.ModuleList(nn.BatchNorm1d(emb_dim) for _ in range(num_layers))

    def embed_atoms(self, x: Tensor) -> Tensor:
        return self.x_embedding1(x[:, 0]) + self.x_embedding2(x[:, 1])

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        h = self.embed_atoms(x)
        last = len(self.gnns) - 1
        for index, (layer, norm) in enumerate(zip(self.gnns, self.batch_norms)):
            h = norm(layer(h, edge_index, edge_attr))
            h = F.dropout(h if index == last else F.relu(h), self.dropout, training=self.training)
        return h


@register_backbone(family="graph")
class MoleculeGIN(PretrainGNNsBackbone):
    """The frozen molecule GIN of Pretrain-GNNs and GPF (see the module docstring).

    Args:
        checkpoint_path: a ``.pth`` file of the Pretrain-GNNs or GPF repositories (e.g.
            ``chem/pretrained_models/contextpred.pth``; a whole ``GNN_graphpred`` state dict too, its head dropped);
            ``None`` keeps random weights.
        num_layers: message-passing layers (5 in every released checkpoint).
        emb_dim: width of atom, bond and node embeddings (300 in every released checkpoint).
        seed: seed for random initialisation.

    Node features are the two integer columns :func:`lightning_prompts.data.molecules.smiles_to_graph`
    writes (``x``), with bond features ``edge_attr``; prompts edit the ``emb_dim``-wide atom
    embeddings, so :attr:`in_channels` is ``emb_dim`` and :attr:`input_features` is 2.
    """

    encoder_class = MoleculeGINEncoder
    marker_key = "x_embedding1.weight"
    label = "molecule GIN"

    @property
    def input_features(self) -> int:
        """Columns of ``data.x``: atom-type index and chirality index."""
        return 2

    def check_inputs(self, x: Tensor, edge_attr: Tensor | None) -> None:
        if x.dim() != 2 or x.shape[1] != 2 or x.is_floating_point():
            raise ValueError(
                f"{self.name} reads atoms as (N, 2) integer indices (atom type, chirality), got "
                f"{x.dtype} {tuple(x.shape)}; featurise molecules with "
                f"lightning_prompts.data.molecules.smiles_to_graph."
            )
        if edge_attr is None:
            raise ValueError(f"{self.name} needs bond features (data.edge_attr: bond type, bond direction).")
        for name, values, limits in (
            ("atom", x, (NUM_ATOM_TYPES, NUM_CHIRALITY_TAGS)),
            ("bond", edge_attr, (NUM_BOND_TYPES, NUM_BOND_DIRECTIONS)),
        ):
            if values.numel() and (
                values.min() < 0 or (values.max(0).values >= torch.tensor(limits, device=values.device)).any()
            ):
                raise ValueError(f"{name} feature indices outside the embedding tables {limits} of {self.name}.")
