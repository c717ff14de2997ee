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
from lightning_prompts.data.graph_precision import GraphBatchesInTrainerPrecision
from lightning_prompts.errors import DatasetError
from lightning_prompts.registry import register_datamodule


class HeteroSBM:
    """A generated heterogeneous graph: nodes of every type in ``num_classes`` communities (node ``i`` of a type is
    in community ``i % num_classes``), links drawn mostly within a community, weak class-shifted features; the
    target type carries the community as its label ``y``.

    The default schema is the testbed's stand-in for ACM: ``papers`` target nodes, ``authors`` and ``subjects``,
    each paper linked to 3 authors and 1 subject, both directions typed ``to``. ``nodes``, ``relations`` and
    ``target`` give any other schema (the tiny overlays for DBLP's and IMDB's recipes name theirs), e.g.::

        HeteroSBM(nodes={"author": 40, "paper": 60, "venue": 4}, target="author", featureless=["venue"],
                  relations=[{"edge": ["author", "to", "paper"], "links": 2, "reverse": "to"},
                             {"edge": ["paper", "to", "venue"], "links": 1, "reverse": "to"}])

    Args:
        papers, authors, subjects: node counts of the default schema (ignored when ``nodes`` is given).
        num_classes: communities.
        features: feature size of every node type except ``featureless``.
        within: probability that a link stays within the source node's community.
        shift: added to feature ``c`` of a community-``c`` node.
        seed: seed of every draw.
        nodes: node type → count, in the order their features are drawn.
        relations: ``{"edge": [source, relation, destination], "links": k, "reverse": name}``: every source node
            links to ``k`` destination nodes; ``reverse`` (optional) names the reversed edge type.
        target: the labelled node type.
        featureless: a list of node types without ``x`` (as HGB's DBLP venues and IMDB keywords: the data module
            gives them one constant feature).

    A schema that would draw one edge type twice (a repeated relation, a reverse landing on another relation, a
    relation from a type to itself whose reverse has its name) is refused, as are counts, probabilities and names
    of the wrong kind.

    ``dataset[0]`` is the ``HeteroData``.
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
        nodes: dict[str, int] | None = None,
        relations: list[dict[str, Any]] | None = None,
        target: str = "paper",
        featureless: list[str] | None = None,
    ) -> None:
        from torch_geometric.data import HeteroData

        if nodes is None:
            nodes = {"paper": papers, "author": authors, "subject": subjects}
        if relations is None:
            relations = [
                {"edge": ["paper", "to", "author"], "links": 3, "reverse": "to"},
                {"edge": ["paper", "to", "subject"], "links": 1, "reverse": "to"},
            ]
        featureless = [] if featureless is None else featureless
        self._check_schema(nodes, relations, target, featureless, num_classes, features, within)
        generator = torch.Generator().manual_seed(seed)
        classes = {name: torch.arange(count) % num_classes for name, count in nodes.items()}
        data = HeteroData()
        for name, count in nodes.items():
            if name in featureless:
                data[name].num_nodes = count
                continue
            x = torch.randn(count, features, generator=generator)
            x[torch.arange(count), classes[name]] += shift
            data[name].x = x
        data[target].y = classes[target]
        for relation in relations:
            source_type, name, destination_type = relation["edge"]
            source_classes, destination_classes = classes[source_type], classes[destination_type]
            source, destination = [], []
            for node in range(nodes[source_type]):
                same = torch.rand(relation["links"], generator=generator) < within
                pool_same = torch.nonzero(destination_classes == source_classes[node]).view(-1)
                for is_same in same.tolist():
                    pool = pool_same if is_same else torch.arange(nodes[destination_type])
                    source.append(node)
                    destination.append(int(pool[torch.randint(len(pool), (1,), generator=generator)]))
            edges = torch.tensor([source, destination])
            data[source_type, name, destination_type].edge_index = edges
            if relation.get("reverse") is not None:
                data[destination_type, relation["reverse"], source_type].edge_index = edges.flip(0)
        self.data = data

    @staticmethod
    def _check_schema(
        nodes: Any,
        relations: Any,
        target: str,
        featureless: Any,
        num_classes: Any,
        features: Any,
        within: Any,
    ) -> None:
        """Refuse a schema that would fail later with an obscure error or silently draw another graph."""

        def is_int(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        if not is_int(num_classes) or num_classes < 1:
            raise DatasetError(f"num_classes must be a positive integer, not {num_classes!r}.")
        if not is_int(features) or features < num_classes:
            raise DatasetError(f"features ({features!r}) must be an integer of at least num_classes ({num_classes}): "
                               "feature c carries community c's shift.")  # fmt: skip
        if not isinstance(within, (int, float)) or isinstance(within, bool) or not 0.0 <= within <= 1.0:
            raise DatasetError(f"within is the probability that a link stays in its community: 0 to 1, not {within!r}.")
        if not isinstance(nodes, dict) or not nodes:
            raise DatasetError(
                f"nodes must map each node type to its count, e.g. {{author: 40, paper: 60}}; got {nodes!r}."
            )
        for name, count in nodes.items():
            if not isinstance(name, str):
                raise DatasetError(f"node type {name!r} must be a name (a string).")
            if not is_int(count) or count < num_classes:
                raise DatasetError(f"{count!r} {name!r} nodes cannot hold {num_classes} communities (give an integer "
                                   f"of at least {num_classes}).")  # fmt: skip
        if target not in nodes:
            raise DatasetError(f"target {target!r} is not one of the generated node types ({list(nodes)}).")
        if not isinstance(featureless, (list, tuple)):
            raise DatasetError(f"featureless must be a list of node types, e.g. [venue]; got {featureless!r}.")
        for name in featureless:
            if name not in nodes:
                raise DatasetError(f"featureless type {name!r} is not one of the node types ({list(nodes)}).")
        if target in featureless:
            raise DatasetError(f"the target type {target!r} cannot be featureless.")
        if not isinstance(relations, (list, tuple)):
            raise DatasetError(f"relations must be a list of {{edge: [source, relation, destination], links: k}}; "
                               f"got {relations!r}.")  # fmt: skip
        drawn: dict[tuple[str, str, str], str] = {}  # every edge type, once: a second would overwrite the first
        for relation in relations:
            if not isinstance(relation, dict):
                raise DatasetError(
                    f"relation {relation!r} must be {{edge: [source, relation, destination], links: k}}."
                )
            unknown = set(relation) - {"edge", "links", "reverse"}
            if unknown:
                raise DatasetError(f"relation {relation}: unknown keys {sorted(unknown)} (edge, links, reverse).")
            edge = relation.get("edge")
            if not isinstance(edge, (list, tuple)) or len(edge) != 3 or not all(isinstance(e, str) for e in edge):
                raise DatasetError(f"relation {relation}: edge must be [source, relation, destination].")
            for end in (edge[0], edge[2]):
                if end not in nodes:
                    raise DatasetError(f"relation {list(edge)}: {end!r} is not one of the node types ({list(nodes)}).")
            links = relation.get("links")
            if not is_int(links) or links < 1:
                raise DatasetError(f"relation {list(edge)}: links must be a positive integer, not {links!r}.")
            reverse = relation.get("reverse")
            if reverse is not None and not isinstance(reverse, str):
                raise DatasetError(f"relation {list(edge)}: reverse names the reversed relation (a string), not "
                                   f"{reverse!r}.")  # fmt: skip
            types = [(tuple(edge), f"relation {list(edge)}")]
            if reverse is not None:
                types.append(((edge[2], reverse, edge[0]), f"the reverse of {list(edge)}"))
            for edge_type, origin in types:
                if edge_type in drawn:
                    raise DatasetError(f"edge type {list(edge_type)} is drawn twice ({drawn[edge_type]}, {origin}): "
                                       "one would overwrite the other.")  # fmt: skip
                drawn[edge_type] = origin

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> Any:
        return self.data


@register_datamodule()
class HeteroGraphDataModule(GraphBatchesInTrainerPrecision, LightningDataModule):
    """Few-shot node classification on a heterogeneous graph (see the module docstring).

    Args:
        dataset: a PyG heterogeneous dataset, or ``{"class_path": "HGBDataset", "init_args": {"root": "data/hgb",
            "name": "acm"}}`` (only ``torch_geometric.datasets`` classes are built from a config), or
            :class:`HeteroSBM`.
        synthetic: :class:`HeteroSBM` arguments instead of ``dataset`` (tests, tiny overlays, the testbed); the
            generated graph labels the ``target`` type.
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
        if synthetic is not None:
            if synthetic.get("target", target) != target:
                raise DatasetError(f"synthetic labels {synthetic['target']!r} nodes but the data module's target is "
                                   f"{target!r}: give target once, to the data module.")  # fmt: skip
            self.dataset = HeteroSBM(**{**synthetic, "target": target})
        else:
            self.dataset = instantiate_dataset(dataset)
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
        if shots < 1 or self.val_shots < 1:
            raise DatasetError(
                f"shots and val_shots must be at least 1 labelled node per class, got {shots} and {self.val_shots}."
            )
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
        """Indices of the target nodes with a real label (HGB: ``train_mask``, i.e. ``label.dat``); a multi-hot
        row without any label (whose first 1 would read as class 0) is never one."""
        store = self.graph[self.target]
        y = store.y
        has_label = y.sum(dim=-1) > 0 if y.dim() > 1 else y >= 0
        mask = getattr(store, "train_mask", None)
        return torch.nonzero(has_label if mask is None else mask & has_label).view(-1)

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
        splits = {"train": sorted(train), "val": sorted(val), "test": test}
        return {name: torch.tensor(indices, dtype=torch.long) for name, indices in splits.items()}

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
        assert self._splits is not None, "call setup() first"
        if not len(self._splits[split]):  # only the test split can be empty: the shots took every labelled node
            raise DatasetError(
                f"no labelled {self.target} nodes are left for the {split} split after {self.shots} training and "
                f"{self.val_shots} validation shots per class."
            )
        return DataLoader([self._view(split)], batch_size=1, collate_fn=first_item)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")
