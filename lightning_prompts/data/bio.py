"""Pretrain-GNNs' biology dataset: protein ego-networks with GO-term labels, read from its processed file without
running code from it, and split as Pretrain-GNNs and GPF split it.

The data archive of "Strategies for Pre-training Graph Neural Networks" (Hu et al., ICLR 2020;
``bio_dataset.zip`` of snap-stanford/pretrain-gnns, which GPF's ``bio`` scripts read) holds
``dataset/supervised/processed/geometric_data_processed.pt``: 88k ego-networks of STRING protein association
graphs from 8 species, saved in 2019 by ``torch.save`` as one collated PyG ``Data`` and its slices (PyG 1.0's
``InMemoryDataset``). Each graph has ``x`` ``(N, 1)`` (all ones), ``edge_attr`` ``(E, 9)`` (7 association
channels, then the self-loop and mask flags, zero), ``center_node_idx`` (the ego-network's centre), ``species_id``
and ``go_target_downstream`` (40 binary GO-term labels of the centre protein, the downstream tasks).

Reading: the file is loaded with ``torch.load(weights_only=True)``: tensors and plain containers only, no code. The
pickled ``Data`` object is accepted as a plain attribute holder (its class is not imported from the file), which
also reads files that PyG 2's own ``Data`` cannot load (``'Data' object has no attribute '_store'``). Every graph is
checked (shapes, node indices in range, 0/1 labels) before it is used.

Splits (official ``splitters.py`` and GPF's ``prompt_tuning_{full,few}_shot.py``, ``--seed`` 42):

* ``species`` (the papers' protocol): graphs of 7 species (3702, 6239, 511145, 7227, 10090, 4932, 7955) train and
  validate, human (9606) tests. The first are shuffled by ``random.seed(seed)``: the first 85% train and the next
  15% validate (``random_split`` with ``frac_test=0``); with ``shots`` (GPF's few-shot, 50) the first ``shots``
  train and the validation slice is ``[int((1 - 0.15) n), n)``. The human graphs are shuffled by the same seed and
  halved into two test sets, ``broad`` and ``none`` (the official ``test_easy``/``test_hard`` loaders); both are
  scored, each on its own.
* ``random``: the official 80/10/10 random split of every graph, one test set.

``dataset/unsupervised`` (the ego-networks of 50 species, no labels) reads the same way, for pre-training a
``BioGIN`` (edge prediction, edge masking, context prediction, Infomax, GraphCL:
``recipes/gpf/bio/pretrain_*.yaml``) with ``split: random``: the official scripts train on every graph; here a
tenth validates the pre-training loss, as the molecule pre-training recipes do.

The 40 labels are the 0/1 ``go_target_downstream`` of the centre (no missing labels): multi-task binary
cross-entropy (``objective: masked_bce``, which equals the official ``BCEWithLogitsLoss`` when nothing is missing)
and the mean ROC-AUC over the tasks with both classes. The official model reads the graph through the mean of its
node embeddings concatenated with the centre's: ``center_node: true`` on the graph methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from lightning_prompts.data.graph_precision import GraphBatchesInTrainerPrecision
from lightning_prompts.data.molecules import random_split
from lightning_prompts.data.processes import evaluation_sampler
from lightning_prompts.errors import ConfigurationError, DatasetError
from lightning_prompts.registry import register_datamodule

#: the processed file under the official dataset folder (``dataset/supervised``)
PROCESSED_FILE = Path("processed") / "geometric_data_processed.pt"
#: species that train and validate, and the one that tests (the official ``species_split`` defaults)
TRAIN_VALID_SPECIES = (3702, 6239, 511145, 7227, 10090, 4932, 7955)
TEST_SPECIES = (9606,)
#: stored fields every ego-network has, and its downstream labels (the supervised dataset only)
FIELDS = ("x", "edge_index", "edge_attr", "center_node_idx", "species_id")
LABELS = "go_target_downstream"
EDGE_FEATURES = 9


class StoredData:
    """What the pickled PyG ``Data`` of the processed file becomes on loading: a holder of its attributes."""


def _load_collated(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The collated fields and the slices of a processed file, loaded as tensors and containers only."""
    try:
        # PyG 2 marks its own Data class safe for weights_only loading and may resolve the name to it; either way
        # the state lands in the object's __dict__, which is all that is read
        with torch.serialization.safe_globals([(StoredData, "torch_geometric.data.data.Data")]):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types; the message is what the user needs
        raise DatasetError(
            f"{path} could not be read as the processed bio dataset (tensors and a PyG Data only; nothing else "
            f"is loaded): {error}"
        ) from error
    if not (isinstance(loaded, tuple) and len(loaded) == 2 and isinstance(loaded[1], dict)):
        raise DatasetError(f"{path} does not hold (data, slices) as PyG's InMemoryDataset saves them.")
    stored, slices = loaded
    fields = dict(vars(stored)) if hasattr(stored, "__dict__") else {}
    return fields, slices


def _stored(key: str, fields: dict[str, Any], slices: dict[str, Any]) -> bool:
    return isinstance(fields.get(key), Tensor) and isinstance(slices.get(key), Tensor)


def _check_slices(path: Path, fields: dict[str, Any], slices: dict[str, Any]) -> int:
    """The number of graphs, after checking every needed field (and the labels, when stored) and its slices."""
    missing = [key for key in FIELDS if not _stored(key, fields, slices)]
    if missing:
        raise DatasetError(
            f"{path} lacks {missing} (with their slices): a processed bio dataset (dataset/supervised, or "
            f"dataset/unsupervised for pre-training) has {list(FIELDS)}."
        )
    count = len(slices["x"]) - 1
    for key in [*FIELDS, *([LABELS] if _stored(LABELS, fields, slices) else [])]:
        cuts = slices[key]
        length = fields[key].shape[1 if key == "edge_index" else 0]
        if len(cuts) != count + 1 or cuts[0] != 0 or cuts[-1] != length or bool((cuts[1:] < cuts[:-1]).any()):
            raise DatasetError(f"{path}: the slices of {key!r} do not cut its {length} entries into {count} graphs.")
    if count < 1:
        raise DatasetError(f"{path} holds no graph.")
    return count


def _first(bad: Tensor) -> int | None:
    """The index of the first ``True`` of a per-graph flag, ``None`` if none."""
    hits = torch.nonzero(bad).view(-1)
    return int(hits[0]) if len(hits) else None


def _check_graphs(path: Path, fields: dict[str, Tensor], slices: dict[str, Tensor], count: int) -> None:
    """Every graph's shapes, node indices and labels, checked on the collated tensors at once (the dataset holds
    88k graphs); the first graph at fault is named."""
    x, edge_index, edge_attr = fields["x"], fields["edge_index"], fields["edge_attr"]
    if x.dim() != 2 or x.shape[1] != 1 or edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise DatasetError(
            f"{path}: x is {tuple(x.shape)} and edge_index {tuple(edge_index.shape)}, not (N, 1), (2, E)."
        )
    if edge_attr.dim() != 2 or edge_attr.shape[1] != EDGE_FEATURES:
        raise DatasetError(f"{path}: edge_attr is {tuple(edge_attr.shape)}, not (E, {EDGE_FEATURES}).")
    sizes = {key: slices[key][1:] - slices[key][:-1] for key in FIELDS}
    nodes, edges = sizes["x"], sizes["edge_index"]
    owner = torch.repeat_interleave(torch.arange(count), edges)  # the graph of each edge
    outside = torch.zeros(count, dtype=torch.bool)
    if edges.sum() > 0:
        outside[owner[(edge_index.min(dim=0).values < 0) | (edge_index.max(dim=0).values >= nodes[owner])]] = True
    single_center = sizes["center_node_idx"] == 1
    center = torch.zeros(count, dtype=torch.long)
    center[single_center] = fields["center_node_idx"][slices["center_node_idx"][:-1][single_center]].long()
    problems = [
        (nodes == 0, "it has no node"),
        (sizes["edge_attr"] != edges, "edge_attr has another number of rows than edge_index has edges"),
        (outside, "edge_index holds nodes outside the graph's"),
        (~single_center | (center < 0) | (center >= nodes), "center_node_idx is not one of the graph's nodes"),
        (sizes["species_id"] != 1, "species_id is not one entry"),
    ]
    if _stored(LABELS, fields, slices):
        per_graph = slices[LABELS][1:] - slices[LABELS][:-1]
        tasks, labels = int(per_graph[0]), fields[LABELS]
        not_binary = torch.zeros(count, dtype=torch.bool)
        not_binary[torch.repeat_interleave(torch.arange(count), per_graph)[(labels != 0) & (labels != 1)]] = True
        problems += [
            (per_graph != tasks, f"{LABELS} has other than {tasks} entries"),
            (not_binary, f"{LABELS} holds values other than 0/1"),
        ]
    for bad, problem in problems:
        first = _first(bad)
        if first is not None:
            raise DatasetError(f"{path}: graph {first}: {problem}.")


class BioEgoNetworks(Dataset):
    """The ego-networks of a processed bio dataset, each made when it is asked for (PyG ``Data`` with ``x``,
    ``edge_index``, ``edge_attr``, ``center_index`` (the centre, which PyG's batching offsets), ``species_id`` and,
    in the supervised dataset, ``y`` ``(1, tasks)``, float 0/1): views of the collated tensors, as PyG's
    ``InMemoryDataset`` serves them. ``tasks`` is 0 for the unsupervised dataset."""

    def __init__(self, fields: dict[str, Tensor], slices: dict[str, Tensor]) -> None:
        self.x, self.edge_attr = fields["x"].float(), fields["edge_attr"].float()
        self.edge_index, self.center = fields["edge_index"].long(), fields["center_node_idx"].long()
        self.species = fields["species_id"].long()
        labelled = _stored(LABELS, fields, slices)
        self.labels = fields[LABELS].float() if labelled else None
        self.cut = {key: slices[key].tolist() for key in [*FIELDS, *([LABELS] if labelled else [])]}
        self.tasks = int(slices[LABELS][1]) if labelled else 0

    def __len__(self) -> int:
        return len(self.cut["x"]) - 1

    def __getitem__(self, index: int) -> Any:
        from torch_geometric.data import Data

        if not -len(self) <= index < len(self):
            raise IndexError(f"graph {index} of {len(self)}")
        i = index % len(self)
        node, edge = (self.cut[key][i : i + 2] for key in ("x", "edge_index"))
        graph = Data(
            x=self.x[node[0] : node[1]],
            edge_index=self.edge_index[:, edge[0] : edge[1]],  # edges along the second dimension, as PyG collates
            edge_attr=self.edge_attr[edge[0] : edge[1]],
            center_index=self.center[self.cut["center_node_idx"][i]].view(1),
            species_id=self.species[self.cut["species_id"][i]].view(1),
        )
        if self.labels is not None:
            graph.y = self.labels[self.cut[LABELS][i] : self.cut[LABELS][i + 1]].view(1, -1)
        return graph


def read_bio_dataset(path: str | Path) -> BioEgoNetworks:
    """The ego-networks of a processed bio dataset (the file, or the folder holding ``processed/``; the supervised
    dataset or the unsupervised one), in the file's order, after checking every one of them."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / PROCESSED_FILE
    if not path.is_file():
        raise DatasetError(
            f"{path} does not exist: give the processed bio dataset, dataset/supervised/{PROCESSED_FILE.as_posix()} "
            f"of Pretrain-GNNs' bio_dataset.zip (or the dataset/supervised folder)."
        )
    fields, slices = _load_collated(path)
    count = _check_slices(path, fields, slices)
    _check_graphs(path, fields, slices, count)
    return BioEgoNetworks(fields, slices)


def species_split(species: Sequence[int], where: str) -> tuple[list[int], list[int]]:
    """Indices of the training-and-validation species' graphs and of the test species', in the file's order (the
    official ``species_split``); a graph of another species is an error, as the official assertion makes it."""
    train_valid = [i for i, s in enumerate(species) if s in TRAIN_VALID_SPECIES]
    test = [i for i, s in enumerate(species) if s in TEST_SPECIES]
    if len(train_valid) + len(test) != len(species):
        other = sorted({s for s in species if s not in TRAIN_VALID_SPECIES + TEST_SPECIES})
        raise DatasetError(
            f"{where}: species {other[:5]} are neither the training species {list(TRAIN_VALID_SPECIES)} nor the "
            f"test species {list(TEST_SPECIES)} of the species split; use split: random."
        )
    return train_valid, test


def species_split_indices(species: Sequence[int], seed: int, shots: int | None, where: str) -> dict[str, list[int]]:
    """``{"train", "val", "broad", "none"}`` indices of the species protocol (see the module docstring)."""
    train_valid, test = species_split(species, where)
    count = len(train_valid)
    if shots is None:
        train, val, _ = random_split(count, seed, 0.85, 0.15)
    else:  # GPF's random_split_abs_value(number_train=shots, frac_valid=0.15, frac_test=0)
        train, _, _ = random_split(count, seed, 1.0, 0.0)
        train, val = train[:shots], train[int((1 - 0.15 - 0) * count) : int((1 - 0) * count)]
        if set(train) & set(val):
            raise ConfigurationError(f"shots {shots} reach into the validation slice of the {count} graphs.")
    broad, none, _ = random_split(len(test), seed, 0.5, 0.5)
    return {
        "train": [train_valid[i] for i in train],
        "val": [train_valid[i] for i in val],
        "broad": [test[i] for i in broad],
        "none": [test[i] for i in none],
    }


@register_datamodule()
class BioDataModule(GraphBatchesInTrainerPrecision, LightningDataModule):
    """Pretrain-GNNs' biology dataset, split as GPF and Pretrain-GNNs split it (see the module docstring).

    Args:
        path: the processed file (``dataset/supervised/processed/geometric_data_processed.pt``) or the
            ``dataset/supervised`` folder; ``dataset/unsupervised`` (no labels) for pre-training.
        split: ``"species"`` (the papers' protocol: test on human ego-networks, two test sets ``broad`` and
            ``none``) or ``"random"`` (80/10/10, one test set).
        shots: few-shot training size under the species split (GPF's 50-shot tables); ``None``: 85% of the
            training species.
        seed: seed of the shuffles (the official ``--seed``, 42).
        batch_size: graphs per training batch (32 in the official scripts).
        eval_batch_size: graphs per evaluation batch (``None``: 10 × ``batch_size``, as the official loaders).
        num_workers: loader workers.
    """

    task_level = "graph"
    binary_tasks = True
    #: each ego-network marks its centre (``center_index``), which ``center_node: true`` reads
    center_nodes = True

    def __init__(
        self,
        path: str,
        split: Literal["species", "random"] = "species",
        shots: int | None = None,
        seed: int = 42,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if split not in ("species", "random"):
            raise ConfigurationError(f"split must be 'species' or 'random', got {split!r}.")
        if shots is not None and (split != "species" or shots < 1):
            raise ConfigurationError("shots (GPF's few-shot protocol) needs split='species' and a count >= 1.")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1) or num_workers < 0:
            raise ValueError("batch_size and eval_batch_size must be at least 1 and num_workers at least 0.")
        self.path, self.split, self.shots, self.seed = Path(path), split, shots, seed
        self.batch_size, self.num_workers = batch_size, num_workers
        self.eval_batch_size = eval_batch_size or 10 * batch_size
        self.graphs = read_bio_dataset(self.path)
        self._splits: dict[str, Subset] | None = None
        # PyG's loader class must exist before Lightning asks for the loaders: under DDP Lightning rebuilds them with
        # its sampler from the arguments it records by patching the DataLoader classes defined at that moment; a class
        # first imported inside the hook is not patched, and the rebuild failed ("multiple values for 'shuffle'")
        import torch_geometric.loader  # noqa: F401

    # -- protocol with the methods ------------------------------------------------------------------
    @property
    def num_features(self) -> int:
        return 1

    @property
    def classnames(self) -> list[str]:
        """One name per GO-term task (the processed file does not name them); none for the unsupervised dataset."""
        return [f"go_task_{i}" for i in range(self.graphs.tasks)]

    @property
    def test_sets(self) -> list[str]:
        """The test sets, in the order of the test loaders."""
        return ["broad", "none"] if self.split == "species" else ["test"]

    def default_evaluator(self) -> Any:
        from lightning_prompts.evaluation.multitask import MultiTaskAUROCEvaluator

        return MultiTaskAUROCEvaluator()

    # -- splits ---------------------------------------------------------------------------------------
    def split_indices(self) -> dict[str, list[int]]:
        """Indices of each split's graphs in the file (train, val, then the test sets)."""
        if self.split == "species":
            return species_split_indices(self.graphs.species.tolist(), self.seed, self.shots, str(self.path))
        train, val, test = random_split(len(self.graphs), self.seed)
        return {"train": train, "val": val, "test": test}

    def setup(self, stage: str) -> None:
        if self._splits is None:
            self._splits = {name: Subset(self.graphs, ids) for name, ids in self.split_indices().items()}
        needed = {"fit": ["train", "val"], "validate": ["val"]}.get(stage, self.test_sets)
        empty = [name for name in needed if not self._splits[name]]
        if empty:
            sizes = ", ".join(f"{name} {len(graphs)}" for name, graphs in self._splits.items())
            raise DatasetError(f"{self.path}: the {self.split} split leaves {' and '.join(empty)} empty ({sizes}).")

    def _loader(self, graphs: Any, train: bool) -> DataLoader:
        from torch_geometric.loader import DataLoader as GraphLoader

        return GraphLoader(
            graphs,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            sampler=None if train else evaluation_sampler(graphs),
            num_workers=self.num_workers,
        )

    def _split(self, name: str) -> Subset:
        assert self._splits is not None, "call setup() first"
        return self._splits[name]

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._split("train"), True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._split("val"), False)

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(self._split(name), False) for name in self.test_sets]

    def predict_dataloader(self) -> DataLoader:
        """Every test graph, the test sets one after the other (``broad`` then ``none``)."""
        return self._loader(ConcatDataset([self._split(name) for name in self.test_sets]), False)
