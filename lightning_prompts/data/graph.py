"""Node and graph classification from PyG dataset objects, with few-shot splits.

Three ways to read a dataset:

* ``task="graph"``: a dataset of graphs, each with one label ``y``;
* ``task="node"``: one graph, transductive node classification; every batch is the whole graph
  with ``target_mask`` marking the split's nodes;
* ``task="node"`` with ``ego_hops=k``: each node becomes its k-hop ego-graph labelled with the
  node's class, turning node classification into graph classification (as ProG does); this is
  also what :class:`~lightning_prompts.pretraining.GraphCL` pre-trains on for node datasets.

Few-shot splits draw ``shots`` training and ``val_shots`` validation examples per class with a
``random.Random(seed)``, identical on every DDP rank; all remaining examples are the test set.
``shots=-1`` keeps a node dataset's own ``train/val/test_mask`` (e.g. Planetoid's public split) or
splits graphs 80/10/10.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from lightning_prompts.errors import ConfigurationError, DatasetError
from lightning_prompts.registry import register_datamodule

Task = Literal["node", "graph"]


def instantiate_dataset(dataset: Any) -> Any:
    """A PyG dataset from an instance or a ``{"class_path", "init_args"}`` mapping naming a dataset class of
    ``torch_geometric.datasets`` (nothing else is imported from a mapping; pass other datasets as instances)."""
    if isinstance(dataset, Mapping) and "class_path" in dataset:
        cls = pyg_dataset_class(str(dataset["class_path"]))
        try:
            return cls(**dict(dataset.get("init_args") or {}))
        except Exception as error:  # a PyG dataset that must download fails here when offline
            raise DatasetError(f"Could not build dataset {dataset['class_path']}: {error}") from error
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise ConfigurationError(
            f"dataset must be a PyG dataset or a {{class_path, init_args}} mapping, got {type(dataset).__name__}; to "
            f"change one of its arguments, give the whole dataset mapping (class_path and init_args) in a config file."
        )
    return dataset


def pyg_dataset_class(class_path: str) -> type:
    """The ``torch_geometric.datasets`` class ``class_path`` names (full path or bare name)."""
    import importlib

    from torch_geometric.data import Dataset

    module, _, name = class_path.rpartition(".")
    module = module or "torch_geometric.datasets"
    trusted = module == "torch_geometric.datasets" or module.startswith("torch_geometric.datasets.")
    cls = getattr(importlib.import_module(module), name, None) if trusted else None
    if not (isinstance(cls, type) and issubclass(cls, Dataset)):
        raise ConfigurationError(
            f"dataset class_path {class_path!r} is not a dataset of torch_geometric.datasets; build other datasets "
            f"in Python and pass the instance (GraphDataModule(dataset=MyDataset(...)))."
        )
    return cls


def check_node_features(data: Any, where: str) -> None:
    if getattr(data, "x", None) is None:
        raise DatasetError(
            f"{where} has no node features (data.x is None). Graph prompts act on node features; add "
            f"them first, e.g. with torch_geometric.transforms.OneHotDegree or Constant."
        )
    if getattr(data, "y", None) is None:
        raise DatasetError(f"{where} has no labels (data.y is None).")


def stratified_split(
    labels: Sequence[int], shots: int, val_shots: int, seed: int, where: str
) -> tuple[list[int], list[int], list[int]]:
    """Per class ``shots`` train and ``val_shots`` val indices; the rest is test."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(index)
    train, val = [], []
    for label, indices in sorted(by_class.items()):
        if len(indices) < shots + val_shots:
            raise DatasetError(
                f"{where}: class {label} has {len(indices)} examples, fewer than the {shots} training + {val_shots} "
                f"validation shots requested."
            )
        chosen = rng.sample(indices, shots + val_shots)
        train.extend(chosen[:shots])
        val.extend(chosen[shots:])
    taken = set(train) | set(val)
    return sorted(train), sorted(val), [i for i in range(len(labels)) if i not in taken]


@register_datamodule()
class GraphDataModule(LightningDataModule):
    """Few-shot node or graph classification on a PyG dataset.

    Args:
        dataset: ``{class_path, init_args}`` of a ``torch_geometric.datasets`` class, e.g.
            ``{class_path: torch_geometric.datasets.Planetoid, init_args: {root: data/Planetoid, name: Cora}}``
            (from Python, a dataset instance works too). The mapping stays a mapping through the config
            parser and only a PyG dataset class is built from it, so a config can name nothing else.
        task: ``"node"`` or ``"graph"`` classification.
        shots: training examples per class (``-1``: the dataset's own split, or 80/10/10 for graphs).
        val_shots: validation examples per class (default: ``shots``).
        seed: seed of the few-shot split.
        ego_hops: for node tasks, classify each node's k-hop ego-graph instead of the node in the full graph.
        classnames: class names (default ``"class 0"``, ``"class 1"``, …).
        batch_size: graphs per batch (graph tasks and ego-graphs).
        num_workers: loader workers.
    """

    def __init__(
        self,
        dataset: dict[str, Any],
        task: Task = "node",
        shots: int = 5,
        val_shots: int | None = None,
        seed: int = 0,
        ego_hops: int | None = None,
        classnames: list[str] | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if task not in ("node", "graph"):
            raise ValueError(f"task must be 'node' or 'graph', got {task!r}.")
        if ego_hops is not None and task != "node":
            raise ValueError(
                "ego_hops turns node classification into ego-graph classification; use it with task='node'."
            )
        self.dataset = instantiate_dataset(dataset)
        self.task, self.ego_hops = task, ego_hops
        self.shots, self.val_shots, self.seed = shots, shots if val_shots is None else val_shots, seed
        self._classnames, self.batch_size, self.num_workers = classnames, batch_size, num_workers
        self._splits: dict[str, Any] | None = None
        where = f"{type(self.dataset).__name__} dataset"
        if len(self.dataset) == 0:
            raise DatasetError(f"{where} is empty.")
        check_node_features(self.dataset[0], where)

    # -- protocol with the methods ------------------------------------------------------------------
    @property
    def task_level(self) -> Task:
        """What a method classifies: single nodes, or whole graphs (ego-graphs count as graphs)."""
        return "node" if self.task == "node" and self.ego_hops is None else "graph"

    @property
    def num_features(self) -> int:
        return int(self.dataset[0].x.shape[-1])

    @property
    def max_nodes(self) -> int:
        """Nodes of the largest graph a method sees (ego-graphs once built; RELIEF sizes its critic by it)."""
        if self.task == "graph":
            return max(int(graph.num_nodes) for graph in self.dataset)
        if self.ego_hops is None:
            return int(self.dataset[0].num_nodes)
        self.setup("fit")
        return max(int(graph.num_nodes) for split in self._splits.values() for graph in split)

    @property
    def num_classes(self) -> int:
        labels = self._labels()
        return int(labels.max()) + 1

    @property
    def classnames(self) -> list[str]:
        if self._classnames is not None:
            if len(self._classnames) != self.num_classes:
                raise DatasetError(f"{len(self._classnames)} classnames for {self.num_classes} classes.")
            return list(self._classnames)
        return [f"class {i}" for i in range(self.num_classes)]

    # -- splits -------------------------------------------------------------------------------------
    def _labels(self) -> torch.Tensor:
        if self.task == "node":
            return self.dataset[0].y.view(-1)
        return torch.cat([graph.y.view(-1)[:1] for graph in self.dataset])

    def _split_indices(self) -> dict[str, list[int]]:
        labels = self._labels().tolist()
        name = type(self.dataset).__name__
        if self.shots > 0:
            train, val, test = stratified_split(labels, self.shots, self.val_shots, self.seed, name)
            return {"train": train, "val": val, "test": test}
        if self.task == "node":
            data = self.dataset[0]
            masks = {split: getattr(data, f"{split}_mask", None) for split in ("train", "val", "test")}
            if any(mask is None for mask in masks.values()):
                raise DatasetError(f"{name} has no train/val/test masks; set shots > 0 for a few-shot split.")
            return {split: mask.nonzero().view(-1).tolist() for split, mask in masks.items()}
        order = list(range(len(labels)))
        random.Random(self.seed).shuffle(order)
        cut1, cut2 = int(0.8 * len(order)), int(0.9 * len(order))
        return {"train": sorted(order[:cut1]), "val": sorted(order[cut1:cut2]), "test": sorted(order[cut2:])}

    def setup(self, stage: str) -> None:
        if self._splits is not None:
            return
        indices = self._split_indices()
        if self.task == "graph":
            self._splits = {split: self.dataset[torch.tensor(ids, dtype=torch.long)] for split, ids in indices.items()}
        elif self.ego_hops is not None:
            self._splits = {split: ego_graphs(self.dataset[0], ids, self.ego_hops) for split, ids in indices.items()}
        else:
            graph = self.dataset[0]
            self._splits = {}
            for split, ids in indices.items():
                view = graph.clone()
                mask = torch.zeros(graph.num_nodes, dtype=torch.bool)
                mask[torch.tensor(ids, dtype=torch.long)] = True
                view.target_mask = mask
                self._splits[split] = [view]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        assert self._splits is not None, "call setup() first"
        from torch_geometric.loader import DataLoader as GraphLoader

        if self.task_level == "node":  # one full graph per batch
            return DataLoader(self._splits[split], batch_size=1, collate_fn=first_item, num_workers=self.num_workers)
        return GraphLoader(
            self._splits[split], batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", False)


def ego_graphs(graph: Any, centers: Sequence[int], hops: int) -> list[Any]:
    """The ``hops``-hop induced subgraph around each center node, labelled with the center's class."""
    from torch_geometric.data import Data
    from torch_geometric.utils import k_hop_subgraph

    graphs = []
    for center in centers:
        nodes, edge_index, mapping, _ = k_hop_subgraph(
            int(center), hops, graph.edge_index, relabel_nodes=True, num_nodes=graph.num_nodes
        )
        graphs.append(
            Data(x=graph.x[nodes], edge_index=edge_index, y=graph.y[center].view(1), center_index=mapping.view(1))
        )
    return graphs


def first_item(items: list[Any]) -> Any:
    return items[0]
