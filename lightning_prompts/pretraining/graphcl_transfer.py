"""GraphCL as its transfer-learning code pre-trains the Pretrain-GNNs encoders (You, Chen, Sui, Chen, Wang, Shen —
"Graph Contrastive Learning with Augmentations", NeurIPS 2020; ``transferLearning_MoleculeNet_PPI/{chem,bio}/
pretrain_graphcl.py`` of github.com/Shen-Lab/GraphCL), the pre-training behind the ``gcl.pth`` checkpoints GPF
prompts, molecule and protein alike.

Every graph of a batch is augmented twice (the README's ``--aug1 random --aug2 random``: each view of each graph
takes node dropping or a subgraph, for the proteins also edge removal, at ratio 0.2; see
:mod:`~lightning_prompts.pretraining.transfer_augmentations`); the GIN, a mean pool and a two-layer projection head
(``emb → emb → emb`` with a ReLU) map both views to vectors, and the NT-Xent of the official ``loss_cl`` (one
direction, the positive left out of the denominator, τ = 0.1) pulls the two views of a graph together against the
batch's other graphs. Adam, lr 1e-3, no weight decay, batch 256, no dropout; the released models are the encoder
after 80 epochs (``graphcl_80.pth``). Under DDP the other graphs are those of every process's batch
(``gather_negatives``, as :class:`~lightning_prompts.pretraining.graphcl.GraphCL`). At the end of ``fit`` the encoder
is written as a plain state dict, for ``MoleculeGIN`` or ``BioGIN(checkpoint_path=...)``.

Where this differs from running the official script: the two views of a graph are drawn independently from one
generator (the official code draws them with NumPy in the worker processes of two data loaders, so how independent
they are depends on how the PyTorch version seeds NumPy in workers); and the molecule loader's ``mask_nodes`` (it
averages integer atom features, which PyTorch refuses) and ``permute_edges`` (it adds edges carrying other edges'
bond features) are not offered for molecules — the bio loader's edge removal is, for either GIN.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_prompts.backbones.base import build_backbone
from lightning_prompts.backbones.bio_gin import BioGIN
from lightning_prompts.backbones.pretrain_gnns import PretrainGNNsBackbone
from lightning_prompts.pretraining.base import EncoderPretraining
from lightning_prompts.pretraining.graphcl import ContrastiveSteps, contrast_views, projection_head
from lightning_prompts.pretraining.transfer_augmentations import (
    AUGMENTATIONS,
    Masks,
    TransferAugmentation,
    random_augmentation,
    view_of,
)
from lightning_prompts.registry import register_pretraining

#: what ``random`` draws from and whether a subgraph grows from every chosen node, per official loader
MOLECULE_LOADER = (("drop_nodes", "subgraph"), False)
PROTEIN_LOADER = (("drop_nodes", "subgraph", "permute_edges"), True)


@register_pretraining(
    family="graph",
    title="GraphCL (Pretrain-GNNs transfer)",
    paper="You, Chen, Sui, Chen, Wang, Shen, NeurIPS 2020 — Graph Contrastive Learning with Augmentations",
    code="Shen-Lab/GraphCL",
    docs="methods/gpf.md",
    recipes="gpf",
    overlay="graph_moleculenet",
)
class PretrainGNNsGraphCL(ContrastiveSteps, EncoderPretraining):
    """Pre-train a molecule or bio GIN with GraphCL's transfer-learning code (see the module docstring).

    Args:
        backbone: the :class:`~lightning_prompts.backbones.molecule_gin.MoleculeGIN` or
            :class:`~lightning_prompts.backbones.bio_gin.BioGIN` to pre-train (its weights are copied into a trainable
            encoder).
        augmentations: the augmentation of each view: ``drop_nodes``, ``subgraph``, ``permute_edges``, ``none`` or
            ``random`` (one of ``random_choices`` per graph).
        aug_ratio: each augmentation's strength (0.2).
        random_choices: what ``random`` draws from (``None``: the official loader's — node dropping and subgraph
            for molecules, and edge removal for proteins).
        subgraph_grows: whether a subgraph draws from the neighbours of every chosen node or of its seed only
            (``None``: the official loader's — the seed's for molecules, every chosen node's for proteins).
        temperature: NT-Xent temperature τ (0.1).
        encoder_path: where to write the encoder at the end of ``fit`` (``None``: don't).
        optimizer: optimizer factory (default Adam, lr 1e-3, no weight decay).
        gather_negatives: under DDP, contrast each graph against every process's graphs (``True``) or its own
            process's only.
    """

    def __init__(
        self,
        backbone: PretrainGNNsBackbone,
        augmentations: Sequence[TransferAugmentation] = ("random", "random"),
        aug_ratio: float = 0.2,
        random_choices: Sequence[TransferAugmentation] | None = None,
        subgraph_grows: bool | None = None,
        temperature: float = 0.1,
        encoder_path: str | None = None,
        optimizer: Callable[[Any], Optimizer] | None = None,
        gather_negatives: bool = True,
    ) -> None:
        super().__init__()
        frozen = build_backbone(backbone)
        if not isinstance(frozen, PretrainGNNsBackbone):
            raise TypeError(f"PretrainGNNsGraphCL pre-trains a MoleculeGIN or BioGIN, got {type(frozen).__name__}.")
        self.save_hyperparameters(ignore=["optimizer", "backbone"])
        self.hparams["backbone"] = frozen.config()
        official_choices, official_growth = PROTEIN_LOADER if isinstance(frozen, BioGIN) else MOLECULE_LOADER
        choices = list(official_choices if random_choices is None else random_choices)
        if len(augmentations) != 2 or any(name not in (*AUGMENTATIONS, "random") for name in augmentations):
            raise ValueError(
                f"augmentations must be two of {sorted((*AUGMENTATIONS, 'random'))}, got {list(augmentations)}."
            )
        if not choices or any(name not in AUGMENTATIONS for name in choices):
            raise ValueError(f"random_choices must be some of {sorted(AUGMENTATIONS)}, got {choices}.")
        if not 0.0 <= aug_ratio <= 1.0:
            raise ValueError(f"aug_ratio must lie in [0, 1], got {aug_ratio}.")
        self.augmentations, self.random_choices = list(augmentations), choices
        self.subgraph_grows = official_growth if subgraph_grows is None else subgraph_grows
        self.aug_ratio, self.temperature, self.gather_negatives = aug_ratio, temperature, gather_negatives
        self.encoder = frozen.trainable_encoder()
        self.projection = projection_head(frozen.emb_dim)
        self.encoder_path = encoder_path
        self.use_optimizer(optimizer, functools.partial(torch.optim.Adam, lr=1e-3))

    def augment(self, data: Any, name: str) -> Masks:
        """The nodes and edges of ``data`` one view keeps under augmentation ``name``."""
        graphs = int(data.num_graphs)
        if name == "random":
            return random_augmentation(
                data.edge_index, data.batch, graphs, self.aug_ratio, self.random_choices, self.subgraph_grows
            )
        return AUGMENTATIONS[name](data.edge_index, data.batch, graphs, self.aug_ratio, self.subgraph_grows)

    def embed(self, data: Any, masks: Masks) -> Tensor:
        """The projected, mean-pooled embedding of every graph's view."""
        from torch_geometric.nn import global_mean_pool

        x, edge_index, edge_attr, batch = view_of(data, *masks)
        nodes = self.encoder(x, edge_index, edge_attr)
        return self.projection(global_mean_pool(nodes, batch, size=int(data.num_graphs)))

    def views_loss(self, data: Any, first: Masks, second: Masks) -> Tensor:
        """The NT-Xent between the views ``first`` and ``second`` of ``data``."""
        return contrast_views(
            self.embed(data, first), self.embed(data, second), self.temperature, self.gather_negatives
        )

    def contrastive_loss(self, data: Any) -> Tensor:
        first, second = (self.augment(data, name) for name in self.augmentations)
        return self.views_loss(data, first, second)

    def export_encoder(self, path: str | Path) -> Path:
        """Write the encoder for ``MoleculeGIN`` or ``BioGIN(checkpoint_path=path)``, as the official script does."""
        return self.save_plain_encoder(path)
