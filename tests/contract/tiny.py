"""Each family's tiny backbone and a batch for it: what the contract suite runs every method on."""

from __future__ import annotations

import copy
import functools
from typing import Any

import torch

from lightning_prompts.batch import IMAGE, IMAGE_VIEW2, INDEX, LABEL, MASK, POINTS, TASK, TEXT

CLASSNAMES = ["cat", "dog", "bird", "fish"]


@functools.cache
def _backbone(family: str) -> Any:
    if family == "clip":
        from lightning_prompts.backbones import OpenCLIP

        return OpenCLIP("tiny", pretrained=None)
    if family == "vit":
        from lightning_prompts.backbones import TimmViT

        return TimmViT("tiny")
    if family == "text":
        from lightning_prompts.backbones import HFText

        return HFText("tiny-bert")
    if family == "graph":
        from lightning_prompts.backbones import GNN

        return GNN(in_channels=8, hidden_channels=16, num_layers=2)
    if family == "hetero":
        from lightning_prompts.backbones.hetero_gnn import HeteroGNN

        edges = [["paper", "to", "author"], ["author", "to", "paper"]]
        return HeteroGNN({"paper": 6, "author": 5}, edges, hidden_channels=16, num_layers=2)
    if family == "points":
        from lightning_prompts.backbones.point_mae import PointMAE

        return PointMAE(num_patches=8, patch_size=8, width=16, depth=2, num_heads=2)
    raise KeyError(f"no tiny backbone for family {family!r}; add one to tests/contract/tiny.py")


def backbone(family: str, name: str | None = None) -> Any:
    """A fresh copy of the family's tiny backbone (methods may unfreeze or resize parts of it); ``name``
    picks another tiny text model (``"tiny-gpt2"``: a causal LM)."""
    if name is not None:
        from lightning_prompts.backbones import HFText

        return HFText(name, task="causal-lm" if "gpt2" in name or "gemma" in name else "sequence-classification")
    return copy.deepcopy(_backbone(family))


def batch(family: str, size: int = 2) -> Any:
    """A training batch with every optional key the family's data modules can provide."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(size) % 2
    if family in ("clip", "vit"):
        images = torch.randn(size, 3, 32, 32, generator=generator)
        return {
            IMAGE: images,
            IMAGE_VIEW2: torch.randn(size, 3, 32, 32, generator=generator),
            MASK: (torch.rand(size, 1, 32, 32, generator=generator) > 0.5).float(),
            LABEL: labels,
            INDEX: torch.arange(size),
            TASK: torch.zeros(size, dtype=torch.long),
        }
    if family == "text":
        return {TEXT: ["a wonderful and moving film", "a dull film"][:size], LABEL: labels}
    if family == "graph":
        from torch_geometric.data import Batch, Data

        graphs = []
        for index in range(size):
            x = torch.randn(5, 8, generator=generator)
            edges = torch.tensor([[0, 1, 2, 3, 1, 2, 3, 4], [1, 2, 3, 4, 0, 1, 2, 3]])
            graphs.append(Data(x=x, edge_index=edges, y=labels[index : index + 1]))
        return Batch.from_data_list(graphs)
    if family == "hetero":
        from torch_geometric.data import HeteroData

        data = HeteroData()
        data["paper"].x = 3 * torch.randn(5, 6, generator=generator)
        data["author"].x = 3 * torch.randn(4, 5, generator=generator)
        edges = torch.tensor([[0, 1, 2, 3, 4, 0], [0, 1, 2, 3, 0, 3]])
        data["paper", "to", "author"].edge_index = edges
        data["author", "to", "paper"].edge_index = edges.flip(0)
        data["paper"].y = torch.tensor([0, 1, 0, 1, 1])
        data["paper"].target_mask = torch.arange(5) < size
        return data
    if family == "points":
        return {POINTS: torch.randn(size, 64, 3, generator=generator), LABEL: labels}
    raise KeyError(family)
