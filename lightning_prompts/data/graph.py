"""Node and graph classification from PyG dataset objects, with few-shot splits.

Three ways to read a dataset:

* ``task="graph"``: a dataset of graphs, each with one label ``y``;
* ``task="node"``: one graph, transductive node classification; every batch is the whole graph
  with ``target_mask`` marking the split's nodes;
* ``task="node"`` with ``ego_hops=k``: each node becomes its k-hop ego-graph labelled with the
  node's class, turning node classification into graph classification (as ProG does); this is
  also what :class:`~lightning_prompts.pretraining.GraphCL` pre-trains on for node datasets.

Few-shot splits draw ``shots`` training and ``val_shots`` validation examples per class with a
``random.Random(seed)``, identical on every DDP rank; all remaining examples are the test set. RELIEF's node-level
protocol (ProG's) instead draws ``val_size`` and ``test_size`` examples at random from those left after the
training shots, keeps only nodes whose ego-graph has ``ego_size`` = [min, max] nodes, and reduces the node features
to ``svd_features`` columns (PyG's ``SVDFeatureReduction``: ``U[:, :k] diag(S[:k])``, no centring).
``shots=-1`` keeps a node dataset's own ``train/val/test_mask`` (e.g. Planetoid's public split) or
splits graphs 80/10/10. ``shots=0`` is the split of self-supervised pre-training, which reads no label: every
example trains except ``val_size`` (default a tenth) drawn at random to validate the pre-training loss (ProG
pre-trains on every node's subgraph; Planetoid's public split would give it 140 of Cora's 2,708).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from lightning_prompts.data.arguments import check_at_least
from lightning_prompts.data.graph_precision import GraphBatchesInTrainerPrecision
from lightning_prompts.data.processes import evaluation_sampler
from lightning_prompts.data.pyg_files import files_read_as_data
from lightning_prompts.errors import ConfigurationError, DatasetError
from lightning_prompts.registry import register_datamodule

Task = Literal["node", "graph"]


def instantiate_dataset(dataset: Any) -> Any:
    """A PyG dataset from an instance or a ``{"class_path", "init_args"}`` mapping naming a dataset class of
    ``torch_geometric.datasets`` (nothing else is imported from a mapping; pass other datasets as instances)."""
    if isinstance(dataset, Mapping) and "class_path" in dataset:
        cls = pyg_dataset_class(str(dataset["class_path"]))
        try:
            with files_read_as_data(str(dataset["class_path"])):
                return cls(**dict(dataset.get("init_args") or {}))
        except Exception as error:  # a PyG dataset that must download fails here when offline
            raise DatasetError(
                f"Could not build dataset {dataset['class_path']}: {error} (its files are read as data only: "
                f"weights-only torch files, no pickled objects but arrays and sparse matrices)"
            ) from error
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


def check_node_features(data: Any, where: str, labels: bool = True) -> None:
    """Node features, and (``labels``) labels: every split but pre-training's (``shots=0``) reads them."""
    if getattr(data, "x", None) is None:
        raise DatasetError(
            f"{where} has no node features (data.x is None). Graph prompts act on node features; add "
            f"them first, e.g. with torch_geometric.transforms.OneHotDegree or Constant."
        )
    if labels and getattr(data, "y", None) is None:
        raise DatasetError(
            f"{where} has no labels (data.y is None); only self-supervised pre-training (shots=0) reads none."
        )


#: The label dtypes cross-entropy takes as class indices (PyG's TUDataset and Planetoid store torch.long).
CLASS_INDEX_DTYPES = (torch.long, torch.uint8)


def check_class_indices(labels: torch.Tensor, where: str, unit: str, first: int = 0) -> torch.Tensor:
    """``labels`` if they are class indices (``CLASS_INDEX_DTYPES``, >= 0); ``first``: the node or graph
    (``unit``) that ``labels[0]`` belongs to, for the message.

    A float label is a regression target or a class that ``int()`` would truncate, and a negative one (often -1,
    "unlabelled") would become a class of its own in the splits and an index error in the loss."""
    if labels.dtype not in CLASS_INDEX_DTYPES:
        raise DatasetError(
            f"{where}: {unit} {first} has label {labels[0].item():g} of dtype {labels.dtype}; labels must be class "
            f"indices of dtype torch.long. Convert classes with data.y = data.y.long(); regression is not supported."
        )
    negative = (labels < 0).nonzero().view(-1)
    if len(negative):
        index = int(negative[0])
        raise DatasetError(
            f"{where}: {unit} {first + index} has label {int(labels[index])} ({len(negative)} {unit}s have a negative "
            f"label); labels must be class indices 0, 1, 2, …. Drop or relabel unlabelled {unit}s first."
        )
    return labels


def check_edges(graph: Any, where: str) -> None:
    """Every edge joins two of ``graph``'s nodes: an index past the last node fails deep inside message passing
    (or silently reads another graph's node once batched)."""
    edge_index = getattr(graph, "edge_index", None)
    if edge_index is None or edge_index.numel() == 0:
        return
    low, high = int(edge_index.min()), int(edge_index.max())
    if low < 0 or high >= graph.num_nodes:
        raise DatasetError(
            f"{where}: edge_index holds node {low if low < 0 else high}, outside 0..{graph.num_nodes - 1} "
            f"({graph.num_nodes} nodes); rebuild its edges (torch_geometric's data.validate() shows the same)."
        )


def stratified_split(
    labels: Sequence[int],
    shots: int,
    val_shots: int,
    seed: int,
    where: str,
    eligible: Sequence[int] | None = None,
    sizes: tuple[int, int | None] | None = None,
) -> tuple[list[int], list[int], list[int]]:
    """Per class ``shots`` train and ``val_shots`` val indices; the rest is test. Only ``eligible`` indices (default
    all) take part. With ``sizes = (val_size, test_size)`` validation is instead ``val_size`` indices drawn at random
    from those left after the training shots, and test the next ``test_size`` of them (``None``: all the rest)."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for index in range(len(labels)) if eligible is None else eligible:
        by_class.setdefault(int(labels[index]), []).append(index)
    per_class_val = 0 if sizes is not None else val_shots
    train, val = [], []
    for label, indices in sorted(by_class.items()):
        if len(indices) < shots + per_class_val:
            raise DatasetError(
                f"{where}: class {label} has {len(indices)} examples, fewer than the {shots} training + "
                f"{per_class_val} validation shots requested."
            )
        chosen = rng.sample(indices, shots + per_class_val)
        train.extend(chosen[:shots])
        val.extend(chosen[shots:])
    taken = set(train) | set(val)
    rest = [i for i in sorted(i for indices in by_class.values() for i in indices) if i not in taken]
    if sizes is None:
        return sorted(train), sorted(val), rest
    val_size, test_size = sizes
    wanted = val_size + (test_size or 0)
    if len(rest) < wanted:
        raise DatasetError(f"{where}: {len(rest)} examples left after the training shots, fewer than the {wanted} "
                           f"validation + test examples requested.")  # fmt: skip
    rng.shuffle(rest)
    test = rest[val_size:] if test_size is None else rest[val_size:wanted]
    return sorted(train), sorted(rest[:val_size]), sorted(test)


@register_datamodule()
class GraphDataModule(GraphBatchesInTrainerPrecision, LightningDataModule):
    """Few-shot node or graph classification on a PyG dataset.

    Args:
        dataset: ``{class_path, init_args}`` of a ``torch_geometric.datasets`` class, e.g.
            ``{class_path: torch_geometric.datasets.Planetoid, init_args: {root: data/Planetoid, name: Cora}}``
            (from Python, a dataset instance works too). The mapping stays a mapping through the config
            parser and only a PyG dataset class is built from it, so a config can name nothing else.
        task: ``"node"`` or ``"graph"`` classification.
        shots: training examples per class (``-1``: the dataset's own split, or 80/10/10 for graphs; ``0``: every
            example but ``val_size`` trains, labels unread, for self-supervised pre-training).
        val_shots: validation examples per class (default: ``shots``).
        seed: seed of the few-shot split.
        ego_hops: for node tasks, classify each node's k-hop ego-graph instead of the node in the full graph.
        ego_size: ``[min, max]``: only nodes whose ego-graph has between min and max nodes (both included) are
            examples (RELIEF: Cora 4 hops 5–150, CiteSeer 3 hops 20–150, PubMed 2 hops 50–300).
        val_size, test_size: draw validation (and test; ``None``: all the rest) at random, unstratified, from the
            examples left after the training shots instead of ``val_shots`` per class (RELIEF: 500 and 500). With
            ``shots=0``: the examples held out to validate (default a tenth, at least one); no test set.
        svd_features: reduce node features to this many columns by SVD first (RELIEF: 100); node tasks only.
        edges: ``"as_stored"``, or ``"lower_to_higher"``: keep each edge only from the lower to the higher node
            index (node tasks). RELIEF's processed Cora holds each citation once that way, so its ego-graphs (in-
            neighbours, ``k_hop_subgraph``'s flow) differ from those of PyG's symmetric Cora.
        ego_fanout: sample each ego-graph hop by hop (``[10, 10]``: up to 10 in-neighbours per node per hop, as
            PyG's ``NeighborLoader`` does) instead of inducing it: RELIEF's Amazon Photo and Computers subgraphs.
            ``ego_size`` still filters on the full k-hop size, as the official preprocessing does.
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
        ego_size: tuple[int, int] | None = None,
        val_size: int | None = None,
        test_size: int | None = None,
        svd_features: int | None = None,
        edges: Literal["as_stored", "lower_to_higher"] = "as_stored",
        ego_fanout: list[int] | None = None,
    ) -> None:
        super().__init__()
        if task not in ("node", "graph"):
            raise ValueError(f"task must be 'node' or 'graph', got {task!r}.")
        if ego_hops is not None and task != "node":
            raise ValueError(
                "ego_hops turns node classification into ego-graph classification; use it with task='node'."
            )
        if ego_size is not None and (ego_hops is None or len(ego_size) != 2 or not 1 <= ego_size[0] <= ego_size[1]):
            raise ValueError(f"ego_size must be [min, max] with 1 <= min <= max and needs ego_hops, got {ego_size}.")
        if shots < -1:
            raise ValueError(f"shots must be -1 (the dataset's split), 0 (pre-training) or positive, got {shots}.")
        if shots == 0 and (test_size is not None or (val_size is not None and val_size < 1)):
            raise ValueError(
                "with shots=0 (pre-training) val_size is the held-out examples (>= 1) and there is no test."
            )
        if test_size is not None and val_size is None:
            raise ValueError("test_size needs val_size (both draw from the examples left after the training shots).")
        if svd_features is not None and (task != "node" or svd_features < 1):
            raise ValueError("svd_features reduces one graph's node features: a positive width with task='node'.")
        if edges not in ("as_stored", "lower_to_higher") or (edges != "as_stored" and task != "node"):
            raise ValueError(f"edges must be 'as_stored' or, for task='node', 'lower_to_higher'; got {edges!r}.")
        if ego_fanout is not None and (ego_hops is None or len(ego_fanout) != ego_hops or min(ego_fanout) < 1):
            raise ValueError(f"ego_fanout needs one positive width per hop of ego_hops ({ego_hops}), got {ego_fanout}.")
        check_at_least(batch_size=(batch_size, 1), num_workers=(num_workers, 0))
        if val_shots is not None and val_shots < 1 and shots > 0 and val_size is None:
            raise ValueError(
                f"val_shots must be at least 1 (validation examples per class), got {val_shots}: with none, val/acc, "
                f"which best.ckpt and early stopping read, is never logged."
            )
        self.edges, self.ego_fanout = edges, ego_fanout
        self.dataset = instantiate_dataset(dataset)
        self.task, self.ego_hops = task, ego_hops
        self.ego_size, self.val_size, self.test_size, self.svd_features = ego_size, val_size, test_size, svd_features
        self._graph: Any = None
        self.shots, self.val_shots, self.seed = shots, shots if val_shots is None else val_shots, seed
        self._classnames, self.batch_size, self.num_workers = classnames, batch_size, num_workers
        self._splits: dict[str, Any] | None = None
        where = f"{type(self.dataset).__name__} dataset"
        if len(self.dataset) == 0:
            raise DatasetError(f"{where} is empty.")
        check_node_features(self.dataset[0], where, labels=shots != 0)

    @property
    def graph(self) -> Any:
        """The one graph of a node task (features reduced by ``svd_features``, edges kept as ``edges`` says)."""
        if self._graph is None:
            graph = self.dataset[0]
            if self.svd_features is not None and graph.x.shape[-1] > self.svd_features:
                from torch_geometric.transforms import SVDFeatureReduction

                graph = SVDFeatureReduction(self.svd_features)(graph)
            if self.edges == "lower_to_higher":
                graph.edge_index = graph.edge_index[:, graph.edge_index[0] < graph.edge_index[1]]
            self._graph = graph
        return self._graph

    # -- protocol with the methods ------------------------------------------------------------------
    @property
    def task_level(self) -> Task:
        """What a method classifies: single nodes, or whole graphs (ego-graphs count as graphs)."""
        return "node" if self.task == "node" and self.ego_hops is None else "graph"

    @property
    def num_features(self) -> int:
        return int((self.graph if self.task == "node" else self.dataset[0]).x.shape[-1])

    @property
    def center_nodes(self) -> bool:
        """Whether each graph marks a centre node (``center_index``): the ego-graphs of a node task."""
        return self.task == "node" and self.ego_hops is not None

    @property
    def max_nodes(self) -> int:
        """Nodes of the largest graph a method sees: of the run's splits (the few-shot training draw, validation and
        test; ego-graphs once built), the width RELIEF's official code gives its critic (``max_node_num``)."""
        if self.task == "node" and self.ego_hops is None:
            return int(self.graph.num_nodes)
        self.setup("fit")
        assert self._splits is not None
        return max(int(graph.num_nodes) for split in self._splits.values() for graph in split)

    @functools.cached_property
    def num_classes(self) -> int:
        """``max label + 1``, every class used (checked once: ``classnames`` asks again and again)."""
        labels = self._labels
        count = int(labels.max()) + 1
        missing = sorted(set(range(count)) - set(torch.unique(labels).tolist()))
        if missing:  # a head of `count` classes would train classes that no example has
            raise DatasetError(
                f"{type(self.dataset).__name__} dataset: labels run to {count - 1} but no example has class(es) "
                f"{missing[:10]}{' …' if len(missing) > 10 else ''}; labels must be 0 … C-1, each used. Relabel them "
                f"consecutively."
            )
        return count

    @property
    def classnames(self) -> list[str]:
        if self._classnames is not None:
            if len(self._classnames) != self.num_classes:
                raise DatasetError(f"{len(self._classnames)} classnames for {self.num_classes} classes.")
            return list(self._classnames)
        return [f"class {i}" for i in range(self.num_classes)]

    # -- splits -------------------------------------------------------------------------------------
    @functools.cached_property
    def _labels(self) -> torch.Tensor:
        """One class index per node (node tasks) or graph, checked: cross-entropy reads them as class indices, so a
        -1, a float or a multi-task row would otherwise be drawn into the splits and fail or mislead mid-training.
        Read (and the edges checked) once: ``num_classes`` and ``classnames`` ask for them again and again."""
        where = f"{type(self.dataset).__name__} dataset"
        if self.task == "node":
            graph = self.graph
            if graph.y.numel() != graph.num_nodes:
                raise DatasetError(
                    f"{where}: y has shape {tuple(graph.y.shape)} for {graph.num_nodes} nodes; node classification "
                    f"needs one class index per node (shape [{graph.num_nodes}]). Turn one-hot rows into indices "
                    f"with data.y = data.y.argmax(-1); multi-label node targets are not supported."
                )
            check_edges(graph, where)
            return check_class_indices(graph.y.view(-1), where, "node")
        labels = []
        for index, graph in enumerate(self.dataset):
            check_edges(graph, f"{where}, graph {index}")
            if graph.y is None or graph.y.numel() != 1:
                shape = None if graph.y is None else tuple(graph.y.shape)
                raise DatasetError(
                    f"{where}: graph {index} has y of shape {shape}; graph classification needs one class index "
                    f"per graph (shape [1]). Multi-task labels are not supported: keep one task, e.g. with a "
                    f"transform setting data.y = data.y[:, task]."
                )
            if graph.y.dtype not in CLASS_INDEX_DTYPES:  # refused here, by index: torch.cat would mix the dtypes
                check_class_indices(graph.y.view(1), where, "graph", first=index)
            labels.append(graph.y.view(1))
        return check_class_indices(torch.cat(labels), where, "graph")

    def _split_indices(self) -> dict[str, list[int]]:
        name = type(self.dataset).__name__
        if self.shots == 0:
            return self._pretraining_split(name)
        labels = self._labels.tolist()
        if self.shots > 0:
            sizes = None if self.val_size is None else (self.val_size, self.test_size)
            eligible = None if self.ego_size is None else self.ego_sized_nodes()
            train, val, test = stratified_split(labels, self.shots, self.val_shots, self.seed, name, eligible, sizes)
            return {"train": train, "val": val, "test": test}
        if self.ego_size is not None or self.val_size is not None:
            raise ConfigurationError("ego_size and val_size shape a few-shot split: set shots > 0.")
        if self.task == "node":
            data = self.graph
            masks = {split: getattr(data, f"{split}_mask", None) for split in ("train", "val", "test")}
            if any(mask is None for mask in masks.values()):
                raise DatasetError(f"{name} has no train/val/test masks; set shots > 0 for a few-shot split.")
            return {split: mask.nonzero().view(-1).tolist() for split, mask in masks.items()}
        order = list(range(len(labels)))
        random.Random(self.seed).shuffle(order)
        cut1, cut2 = int(0.8 * len(order)), int(0.9 * len(order))
        return {"train": sorted(order[:cut1]), "val": sorted(order[cut1:cut2]), "test": sorted(order[cut2:])}

    def _pretraining_split(self, name: str) -> dict[str, list[int]]:
        """``shots=0``: every example (every node of a node task, or those of ``ego_size``) but ``val_size`` drawn at
        random trains; the held-out ones validate (and stand as the test split, which pre-training never reads)."""
        count = self.graph.num_nodes if self.task == "node" else len(self.dataset)
        examples = self.ego_sized_nodes() if self.ego_size is not None else list(range(count))
        held = self.val_size if self.val_size is not None else max(1, len(examples) // 10)
        if held >= len(examples):
            raise DatasetError(
                f"{name}: {len(examples)} examples cannot hold out {held} to validate and train on the rest."
            )
        order = list(examples)
        random.Random(self.seed).shuffle(order)
        val = sorted(order[:held])
        return {"train": sorted(order[held:]), "val": val, "test": val}

    def ego_sized_nodes(self) -> list[int]:
        """The nodes whose ``ego_hops``-hop ego-graph has ``ego_size`` nodes (sizes as ``k_hop_subgraph`` counts:
        the nodes that reach the centre in at most ``ego_hops`` edges, itself included).

        All sizes at once from the sparse reachability matrix ``(I + A)^k`` (``A[i, j]`` = 1 for an edge j → i)
        instead of one ``k_hop_subgraph`` per node, which took minutes on PubMed's 19,717 nodes."""
        import numpy as np
        from scipy import sparse

        low, high = self.ego_size
        graph = self.graph
        n = graph.num_nodes
        source, target = graph.edge_index.numpy()
        identity = sparse.identity(n, dtype=bool, format="csr")
        step = (
            identity + sparse.csr_matrix((np.ones(len(source), dtype=bool), (target, source)), shape=(n, n))
        ).astype(bool)
        reach = identity
        for _ in range(self.ego_hops):
            reach = (reach @ step).astype(bool)
        reach.eliminate_zeros()
        sizes = np.diff(reach.indptr)
        return [int(node) for node in np.flatnonzero((sizes >= low) & (sizes <= high))]

    def setup(self, stage: str) -> None:
        if self._splits is not None:
            return
        indices = self._split_indices()
        if self.task == "graph":
            self._splits = {split: self.dataset[torch.tensor(ids, dtype=torch.long)] for split, ids in indices.items()}
        elif self.ego_hops is not None:
            if self.ego_fanout is None:
                self._splits = {split: ego_graphs(self.graph, ids, self.ego_hops) for split, ids in indices.items()}
            else:
                self._splits = {
                    split: sampled_ego_graphs(self.graph, ids, self.ego_fanout, self.seed + offset)
                    for offset, (split, ids) in enumerate(indices.items())
                }
        else:
            graph = self.graph
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
        dataset = self._splits[split]
        sampler = None if shuffle else evaluation_sampler(dataset)
        return GraphLoader(
            dataset, batch_size=self.batch_size, shuffle=shuffle, sampler=sampler, num_workers=self.num_workers
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", False)


def _label_of(graph: Any, center: int) -> dict[str, Any]:
    """``{"y": the centre's class}``, or nothing for an unlabelled graph (pre-training)."""
    return {} if getattr(graph, "y", None) is None else {"y": graph.y[center].view(1)}


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
            Data(x=graph.x[nodes], edge_index=edge_index, center_index=mapping.view(1), **_label_of(graph, center))
        )
    return graphs


def sampled_ego_graphs(graph: Any, centers: Sequence[int], fanout: Sequence[int], seed: int) -> list[Any]:
    """Neighbour-sampled ego-graphs, as PyG's ``NeighborLoader(num_neighbors=fanout)`` draws them one seed node at a
    time (directed sampling, RELIEF's Amazon subgraphs): hop by hop, every node added in the previous hop draws up to
    ``fanout[h]`` of its in-neighbours uniformly without replacement; the subgraph holds the centre (first), the
    nodes reached, and only the sampled edges (neighbour → node). Draws come from a generator seeded by ``seed``."""
    from torch_geometric.data import Data

    generator = torch.Generator().manual_seed(seed)
    source, target = graph.edge_index
    order = torch.argsort(target, stable=True)
    sources = source[order]
    starts = torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(target, minlength=graph.num_nodes).cumsum(0)])
    graphs = []
    for center in centers:
        local = {int(center): 0}
        frontier, edges = [int(center)], []
        for width in fanout:
            reached = []
            for node in frontier:
                neighbours = sources[starts[node] : starts[node + 1]]
                if len(neighbours) > width:
                    neighbours = neighbours[torch.randperm(len(neighbours), generator=generator)[:width]]
                for neighbour in neighbours.tolist():
                    if neighbour not in local:
                        local[neighbour] = len(local)
                        reached.append(neighbour)
                    edges.append((local[neighbour], local[node]))
            frontier = reached
        nodes = torch.tensor(list(local), dtype=torch.long)
        edge_index = torch.tensor(edges, dtype=torch.long).t().reshape(2, -1)
        graphs.append(
            Data(
                x=graph.x[nodes], edge_index=edge_index, center_index=torch.zeros(1).long(), **_label_of(graph, center)
            )
        )
    return graphs


def first_item(items: list[Any]) -> Any:
    return items[0]
