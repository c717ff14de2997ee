"""Few-shot node classification on one heterogeneous graph (``HeteroData``): HetGPT's setting.

:class:`HeteroGraphDataModule` takes a PyG heterogeneous dataset — the HGB sets ACM, DBLP and IMDB through PyG's
``HGBDataset`` reading its raw files (``<root>/<name>/raw/<NAME>/{info,node,link,label}.dat`` and
``label.dat.test``) from a local folder, or :class:`HeteroSBM`, a generated stand-in — and draws ``shots`` training
and ``val_shots`` validation nodes per class of the ``target`` type from its labelled nodes (HGB: the nodes of
``label.dat``, its ``train_mask``; HGB's test labels are random placeholders, so they are never used); the other
labelled nodes are the test set. Every batch is the whole graph with ``data[target].target_mask`` marking the
split's nodes (transductive, as HetGPT trains). A node type without features (HGB's DBLP venues, …) gets one
constant feature per node, so it is told apart by its links only. HGB's IMDB labels are multi-hot; a node's class
is its lowest-numbered label (the first 1 of its row).
"""

from __future__ import annotations

import random
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from lightning_prompts.data.graph import first_item, instantiate_dataset
from lightning_prompts.errors import DatasetError
from lightning_prompts.registry import register_datamodule


class HeteroSBM:
    """A generated heterogeneous graph: ``papers`` target nodes in ``num_classes`` communities, ``authors`` and
    ``subjects`` attached mostly within a community, weak class-shifted features (the testbed's stand-in for ACM).

    ``dataset[0]`` is the ``HeteroData`` (node types ``paper``, ``author``, ``subject``; edge types
    ``paper–author`` and ``paper–subject`` in both directions).
    """

    def __init__(
        self,
        papers: int = 300,
        authors: int = 150,
        subjects: int = 30,
        num_classes: int = 3,
        features: int = 16,
        within: float = 0.9,
        shift: float = 0.3,
        seed: int = 0,
    ) -> None:
        from torch_geometric.data import HeteroData

        generator = torch.Generator().manual_seed(seed)
        labels = torch.arange(papers) % num_classes
        author_class = torch.arange(authors) % num_classes
        subject_class = torch.arange(subjects) % num_classes
        data = HeteroData()
        for name, count, classes in (("paper", papers, labels), ("author", authors, author_class),
                                     ("subject", subjects, subject_class)):  # fmt: skip
            x = torch.randn(count, features, generator=generator)
            x[torch.arange(count), classes] += shift
            data[name].x = x
        data["paper"].y = labels
        for other, count, classes, links in (
            ("author", authors, author_class, 3),
            ("subject", subjects, subject_class, 1),
        ):
            source, target = [], []
            for paper in range(papers):
                same = torch.rand(links, generator=generator) < within
                pool_same = torch.nonzero(classes == labels[paper]).view(-1)
                for is_same in same.tolist():
                    pool = pool_same if is_same else torch.arange(count)
                    source.append(paper)
                    target.append(int(pool[torch.randint(len(pool), (1,), generator=generator)]))
            edges = torch.tensor([source, target])
            data["paper", "to", other].edge_index = edges
            data[other, "to", "paper"].edge_index = edges.flip(0)
        self.data = data

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> Any:
        return self.data


@register_datamodule()
class HeteroGraphDataModule(LightningDataModule):
    """Few-shot node classification on a heterogeneous graph (see the module docstring).

    Args:
        dataset: a PyG heterogeneous dataset, or ``{"class_path": "HGBDataset", "init_args": {"root": "data/hgb",
            "name": "acm"}}`` (only ``torch_geometric.datasets`` classes are built from a config), or
            :class:`HeteroSBM`.
        synthetic: :class:`HeteroSBM` arguments instead of ``dataset`` (tests, tiny overlays, the testbed).
        target: the node type to classify (ACM ``paper``, DBLP ``author``, IMDB ``movie``).
        shots, val_shots: labelled nodes per class for training and validation (HetGPT: 1, 5 or 20 shots).
        seed: seed of the draw.
        classnames: class names (default ``"class 0"``, …).
    """

    task_level = "node"

    def __init__(
        self,
        dataset: dict[str, Any] | None = None,
        target: str = "paper",
        shots: int = 5,
        val_shots: int | None = None,
        seed: int = 0,
        classnames: list[str] | None = None,
        synthetic: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if (dataset is None) == (synthetic is None):
            raise DatasetError("give either dataset (a PyG heterogeneous dataset) or synthetic (HeteroSBM arguments).")
        self.dataset = HeteroSBM(**synthetic) if synthetic is not None else instantiate_dataset(dataset)
        self.graph = self.dataset[0]
        if target not in self.graph.node_types:
            raise DatasetError(f"target {target!r} is not a node type of the graph ({self.graph.node_types}).")
        store = self.graph[target]
        if "y" not in store:
            raise DatasetError(f"the {target!r} nodes carry no labels (y).")
        for node in self.graph.node_types:  # HGB's featureless types (DBLP venues, …): a constant feature
            if "x" not in self.graph[node]:
                self.graph[node].x = torch.ones(self.graph[node].num_nodes, 1)
        self.target, self.shots, self.seed = target, shots, seed
        self.val_shots = shots if val_shots is None else val_shots
        self._classnames = classnames
        self._splits: dict[str, torch.Tensor] | None = None

    @property
    def labels(self) -> torch.Tensor:
        y = self.graph[self.target].y
        return y.argmax(dim=-1) if y.dim() > 1 else y  # multi-hot (IMDB): its lowest-numbered label

    @property
    def classnames(self) -> list[str]:
        count = int(self.labels[self.labelled()].max()) + 1
        if self._classnames is not None:
            if len(self._classnames) != count:
                raise DatasetError(f"{len(self._classnames)} classnames for {count} classes.")
            return list(self._classnames)
        return [f"class {i}" for i in range(count)]

    def labelled(self) -> torch.Tensor:
        """Indices of the target nodes with a real label (HGB: ``train_mask``, i.e. ``label.dat``)."""
        store = self.graph[self.target]
        mask = getattr(store, "train_mask", None)
        if mask is None:
            mask = self.labels >= 0
        return torch.nonzero(mask).view(-1)

    def split_indices(self) -> dict[str, torch.Tensor]:
        """``shots`` and ``val_shots`` per class, drawn with ``random.Random(seed)``; the rest is test."""
        pool = self.labelled().tolist()
        labels = self.labels
        rng = random.Random(self.seed)
        train: list[int] = []
        val: list[int] = []
        for label in range(len(self.classnames)):
            members = [i for i in pool if int(labels[i]) == label]
            if len(members) < self.shots + self.val_shots:
                raise DatasetError(
                    f"class {label} has {len(members)} labelled {self.target} nodes, fewer than the {self.shots} "
                    f"training + {self.val_shots} validation shots."
                )
            rng.shuffle(members)
            train += members[: self.shots]
            val += members[self.shots : self.shots + self.val_shots]
        test = sorted(set(pool) - set(train) - set(val))
        return {"train": torch.tensor(sorted(train)), "val": torch.tensor(sorted(val)), "test": torch.tensor(test)}

    def setup(self, stage: str) -> None:
        if self._splits is None:
            self._splits = self.split_indices()

    def _view(self, split: str) -> Any:
        assert self._splits is not None, "call setup() first"
        view = self.graph.clone()
        mask = torch.zeros(view[self.target].num_nodes, dtype=torch.bool)
        mask[self._splits[split]] = True
        view[self.target].target_mask = mask
        view[self.target].y = self.labels
        return view

    def _loader(self, split: str) -> DataLoader:
        return DataLoader([self._view(split)], batch_size=1, collate_fn=first_item)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")
