"""MoleculeNet from its CSV files, featurised and split as Pretrain-GNNs and GPF do.

* :func:`smiles_to_graph` turns a SMILES string into the graph the molecule GIN of
  :mod:`lightning_prompts.backbones.molecule_gin` reads: ``x`` = (atom-type index, chirality index)
  per atom, ``edge_attr`` = (bond type index, bond direction index) per directed bond.
* :func:`scaffold_split` is the deterministic Bemis–Murcko scaffold split of those repositories
  (scaffold sets from largest to smallest fill train, then validation, then test), including the
  few-shot variant of GPF (``train_graphs``: the first scaffold sets that fit in that many molecules
  train, the rest of the 80% is dropped).
* :class:`MoleculeNetDataModule` reads the CSV of BBBP, Tox21, ToxCast, SIDER, ClinTox, MUV, HIV or
  BACE (the files in ``dataset/<name>/raw/`` of the Pretrain-GNNs data archive, or any CSV with a
  SMILES column and 0/1 task columns; empty cells are missing labels), and serves batches whose
  ``y`` is ``(B, tasks)`` with ``nan`` for a missing label: the input of masked binary cross-entropy
  and of :class:`~lightning_prompts.evaluation.MultiTaskAUROCEvaluator`.

Rows whose SMILES RDKit cannot parse are skipped, counted and reported in a warning (the official loaders
skip them for BBBP, ClinTox and ToxCast). RDKit is the ``molecules`` extra.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import random
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from lightning_prompts.data.graph_precision import GraphBatchesInTrainerPrecision
from lightning_prompts.data.processes import evaluation_sampler
from lightning_prompts.errors import ConfigurationError, DatasetError
from lightning_prompts.registry import register_datamodule

#: ``{dataset: (SMILES column, task columns)}``; ``None``: every column but the SMILES column.
MOLECULENET: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "bbbp": ("smiles", ("p_np",)),
    "tox21": (
        "smiles",
        (
            "NR-AR",
            "NR-AR-LBD",
            "NR-AhR",
            "NR-Aromatase",
            "NR-ER",
            "NR-ER-LBD",
            "NR-PPAR-gamma",
            "SR-ARE",
            "SR-ATAD5",
            "SR-HSE",
            "SR-MMP",
            "SR-p53",
        ),
    ),  # fmt: skip
    "toxcast": ("smiles", None),
    "sider": ("smiles", None),
    "clintox": ("smiles", ("FDA_APPROVED", "CT_TOX")),
    "muv": (
        "smiles",
        tuple(
            f"MUV-{n}" for n in (466, 548, 600, 644, 652, 689, 692, 712, 713, 733, 737, 810, 832, 846, 852, 858, 859)
        ),
    ),
    "hiv": ("smiles", ("HIV_active",)),
    "bace": ("mol", ("Class",)),
}

Split = Literal["scaffold", "random"]


def _rdkit() -> Any:
    try:
        from rdkit import Chem, RDLogger
    except ImportError as error:
        raise ImportError("Molecules need RDKit: pip install 'lightning-prompts[molecules]'.") from error
    RDLogger.DisableLog("rdApp.*")  # parse failures are counted and reported once, not per row
    return Chem


def _feature_tables() -> dict[str, list[Any]]:
    Chem = _rdkit()
    return {
        "atomic_num": list(range(1, 119)),
        "chirality": [
            Chem.rdchem.ChiralType.CHI_UNSPECIFIED,
            Chem.rdchem.ChiralType.CHI_TETRAHEDRAL_CW,
            Chem.rdchem.ChiralType.CHI_TETRAHEDRAL_CCW,
            Chem.rdchem.ChiralType.CHI_OTHER,
        ],
        "bond_type": [
            Chem.rdchem.BondType.SINGLE,
            Chem.rdchem.BondType.DOUBLE,
            Chem.rdchem.BondType.TRIPLE,
            Chem.rdchem.BondType.AROMATIC,
        ],
        "bond_dir": [Chem.rdchem.BondDir.NONE, Chem.rdchem.BondDir.ENDUPRIGHT, Chem.rdchem.BondDir.ENDDOWNRIGHT],
    }


def _index(table: list[Any], value: Any, what: str, smiles: str) -> int:
    try:
        return table.index(value)
    except ValueError:
        raise DatasetError(f"{smiles!r}: {what} {value} has no index in the Pretrain-GNNs feature tables.") from None


def smiles_to_graph(smiles: str, mol: Any = None) -> Any:
    """The PyG ``Data`` of a molecule (see the module docstring); both directions of every bond."""
    from torch_geometric.data import Data

    Chem = _rdkit()
    mol = mol if mol is not None else Chem.MolFromSmiles(smiles)
    if mol is None:
        raise DatasetError(f"RDKit cannot parse the SMILES {smiles!r}.")
    tables = _feature_tables()
    atoms = [
        [
            _index(tables["atomic_num"], atom.GetAtomicNum(), "atomic number", smiles),
            _index(tables["chirality"], atom.GetChiralTag(), "chirality", smiles),
        ]
        for atom in mol.GetAtoms()
    ]
    edges, bonds = [], []
    for bond in mol.GetBonds():
        begin, end = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        feature = [
            _index(tables["bond_type"], bond.GetBondType(), "bond type", smiles),
            _index(tables["bond_dir"], bond.GetBondDir(), "bond direction", smiles),
        ]
        edges += [(begin, end), (end, begin)]
        bonds += [feature, feature]
    edge_index = torch.tensor(edges, dtype=torch.long).t().reshape(2, -1)
    edge_attr = torch.tensor(bonds, dtype=torch.long).reshape(-1, 2)
    return Data(x=torch.tensor(atoms, dtype=torch.long).reshape(-1, 2), edge_index=edge_index, edge_attr=edge_attr)


def murcko_scaffold(smiles: str) -> str:
    """The Bemis–Murcko scaffold SMILES of a molecule, chirality included (as the official split)."""
    _rdkit()
    from rdkit.Chem.Scaffolds import MurckoScaffold

    return MurckoScaffold.MurckoScaffoldSmiles(smiles=smiles, includeChirality=True)


def scaffold_split(
    smiles: Sequence[str],
    frac_train: float = 0.8,
    frac_valid: float = 0.1,
    frac_test: float = 0.1,
    train_graphs: int | None = None,
) -> tuple[list[int], list[int], list[int]]:
    """Train, validation and test indices of a deterministic scaffold split (see the module docstring).

    Scaffold sets are sorted by size, then by their first index, largest first. A set that would push
    train past ``frac_train`` goes to validation, or to test when validation would pass its share.
    With ``train_graphs``, sets within the training share that do not fit in ``train_graphs`` molecules
    are left out of every split (GPF's few-shot protocol).
    """
    if not math.isclose(frac_train + frac_valid + frac_test, 1.0, abs_tol=1e-6):
        raise ValueError(f"split fractions must sum to 1, got {frac_train} + {frac_valid} + {frac_test}.")
    sets: dict[str, list[int]] = {}
    for index, text in enumerate(smiles):
        sets.setdefault(murcko_scaffold(text), []).append(index)
    ordered = sorted(sets.values(), key=lambda members: (len(members), members[0]), reverse=True)
    train_cutoff = frac_train * len(smiles)
    valid_cutoff = (frac_train + frac_valid) * len(smiles)
    train: list[int] = []
    valid: list[int] = []
    test: list[int] = []
    within_train_share: list[int] = []  # equals `train` unless train_graphs drops some sets
    for members in ordered:
        if len(within_train_share) + len(members) > train_cutoff:
            if len(within_train_share) + len(valid) + len(members) > valid_cutoff:
                test.extend(members)
            else:
                valid.extend(members)
            continue
        within_train_share.extend(members)
        if train_graphs is None or len(train) + len(members) <= train_graphs:
            train.extend(members)
    return train, valid, test


def random_split(count: int, seed: int, frac_train: float = 0.8, frac_valid: float = 0.1) -> tuple[list[int], ...]:
    """The official random split: a ``random.Random(seed)`` shuffle cut at 80% and 90%."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    cut_train = int(frac_train * count)
    cut_valid = cut_train + int(frac_valid * count)
    return order[:cut_train], order[cut_train:cut_valid], order[cut_valid:]


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError; a truncated archive an EOFError
        raise DatasetError(
            f"{path} is named .gz but cannot be decompressed ({error}); give the plain .csv or a complete gzip file."
        ) from error
    try:
        text = raw.decode("utf-8-sig")  # -sig: a byte-order mark would otherwise stick to the first column's name
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DatasetError(
            f"{path} is not UTF-8 text: line {line} holds the byte {raw[error.start : error.start + 1]!r}. "
            f"Re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)."
        ) from None
    reader = csv.DictReader(io.StringIO(text))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def _label(cell: str, where: str) -> float:
    cell = cell.strip()
    if cell == "":
        return math.nan
    try:
        value = float(cell)
    except ValueError:
        raise DatasetError(f"{where}: label {cell!r} is not 0, 1 or empty.") from None
    if value not in (0.0, 1.0):
        raise DatasetError(f"{where}: label {cell!r} is not 0, 1 or empty (binary tasks only).")
    return value


def read_moleculenet_csv(
    path: str | Path, smiles_column: str = "smiles", tasks: Sequence[str] | None = None
) -> tuple[list[Any], list[str], list[str], int]:
    """Graphs (``y``: ``(1, tasks)`` floats, ``nan`` = missing), their SMILES, the task names and the count
    of rows skipped because RDKit could not parse their SMILES. ``tasks=[]`` reads molecules without labels
    (pre-training sets such as ZINC15's ``zinc_standard_agent``)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"MoleculeNet CSV {path} does not exist.")
    columns, rows = _read_rows(path)
    if smiles_column not in columns:
        raise DatasetError(f"{path} has no SMILES column {smiles_column!r} (columns: {columns[:8]}…).")
    tasks = [c for c in columns if c != smiles_column] if tasks is None else list(tasks)
    absent = [task for task in tasks if task not in columns]
    if absent:
        raise DatasetError(f"{path} lacks the task columns {absent}.")
    # csv.DictReader keeps only the last of equally named columns, so the others' labels would vanish silently
    repeated = sorted({column for column in [smiles_column, *tasks] if columns.count(column) > 1})
    if repeated:
        raise DatasetError(
            f"{path}: the header names the columns {repeated} more than once; rename or drop the copies."
        )
    Chem = _rdkit()
    graphs, smiles, unparsed = [], [], []
    for line, row in enumerate(rows, start=2):
        text = (row[smiles_column] or "").strip()
        mol = Chem.MolFromSmiles(text) if text else None
        if mol is None:
            unparsed.append(f"line {line}: {text!r}")
            continue
        graph = smiles_to_graph(text, mol)
        graph.y = torch.tensor([[_label(row[task] or "", f"{path}:{line} ({task})") for task in tasks]])
        graphs.append(graph)
        smiles.append(text)
    if not graphs:
        raise DatasetError(
            f"{path}: none of its {len(rows)} rows has a SMILES string RDKit can parse (e.g. {unparsed[:3]}); "
            f"check that column {smiles_column!r} holds SMILES and that the file is comma-separated."
        )
    if unparsed:  # the official loaders skip these too (BBBP has 11), but a large share means a wrong column or file
        warnings.warn(
            f"{path}: skipped {len(unparsed)} of {len(rows)} rows whose SMILES RDKit cannot parse, e.g. "
            f"{unparsed[:3]}.",
            UserWarning,
            stacklevel=2,
        )
    return graphs, smiles, tasks, len(unparsed)


@register_datamodule()
class MoleculeNetDataModule(GraphBatchesInTrainerPrecision, LightningDataModule):
    """Multi-task binary molecule property prediction from a MoleculeNet CSV (see the module docstring).

    Args:
        path: the CSV (``.csv`` or ``.csv.gz``), e.g. ``dataset/bbbp/raw/BBBP.csv``.
        dataset: a MoleculeNet name (``bbbp``, ``tox21``, ``toxcast``, ``sider``, ``clintox``, ``muv``, ``hiv``,
            ``bace``) that fixes the SMILES and task columns; ``None``: give them.
        smiles_column, tasks: the SMILES column and the 0/1 task columns (``None``: all other columns;
            ``[]``: none, for pre-training on unlabelled molecules).
        split: ``"scaffold"`` (the papers' protocol, deterministic) or ``"random"`` (seeded).
        train_graphs: few-shot training size (50 in GPF's and RELIEF's few-shot tables); scaffold only.
        few_shot_draw: which ``train_graphs`` molecules train: ``"first_sets"`` (GPF: the first scaffold sets
            that fit, the rest of the training share dropped) or ``"shuffled"`` (RELIEF's
            ``scaffold_split_fewshot``: the whole scaffold training share shuffled by ``random.seed(seed)``,
            then its first ``train_graphs``). Validation and test are the scaffold split's either way.
        seed: seed of the random split and of the ``"shuffled"`` few-shot draw (RELIEF's ``--seed``).
        batch_size: graphs per batch (32 in GPF's scripts).
        num_workers: loader workers.
    """

    def __init__(
        self,
        path: str,
        dataset: str | None = None,
        smiles_column: str = "smiles",
        tasks: list[str] | None = None,
        split: Split = "scaffold",
        train_graphs: int | None = None,
        few_shot_draw: Literal["first_sets", "shuffled"] = "first_sets",
        seed: int = 0,
        batch_size: int = 32,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if dataset is not None:
            if dataset.lower() not in MOLECULENET:
                raise ConfigurationError(f"dataset must be one of {sorted(MOLECULENET)}, got {dataset!r}.")
            smiles_column, preset = MOLECULENET[dataset.lower()]
            tasks = list(preset) if preset is not None and tasks is None else tasks
        if split not in ("scaffold", "random"):
            raise ConfigurationError(f"split must be 'scaffold' or 'random', got {split!r}.")
        if train_graphs is not None and (split != "scaffold" or train_graphs < 1):
            raise ConfigurationError("train_graphs (GPF's few-shot protocol) needs split='scaffold' and a count >= 1.")
        if few_shot_draw not in ("first_sets", "shuffled"):
            raise ConfigurationError(f"few_shot_draw must be 'first_sets' or 'shuffled', got {few_shot_draw!r}.")
        self.path, self.split, self.train_graphs, self.seed = Path(path), split, train_graphs, seed
        self.few_shot_draw = few_shot_draw
        self.batch_size, self.num_workers = batch_size, num_workers
        self.graphs, self.smiles, self.tasks, self.skipped = read_moleculenet_csv(self.path, smiles_column, tasks)
        self._splits: dict[str, list[Any]] | None = None

    # -- protocol with the methods ------------------------------------------------------------------
    task_level = "graph"
    binary_tasks = True

    @property
    def num_features(self) -> int:
        return 2

    @property
    def classnames(self) -> list[str]:
        """The task names: one sigmoid output each."""
        return list(self.tasks)

    @property
    def max_nodes(self) -> int:
        """Atoms of the largest molecule of the run's splits (the few-shot training draw, validation and test):
        the width RELIEF's official ``main.py`` gives its critic (``max_node_num``)."""
        return max(int(graph.num_nodes) for split in self._split_graphs().values() for graph in split)

    def _split_graphs(self) -> dict[str, list[Any]]:
        """The molecules of each split (drawn once)."""
        if self._splits is None:
            self._splits = {name: [self.graphs[i] for i in ids] for name, ids in self.split_indices().items()}
        return self._splits

    def default_evaluator(self) -> Any:
        from lightning_prompts.evaluation.multitask import MultiTaskAUROCEvaluator

        return MultiTaskAUROCEvaluator()

    # -- splits ---------------------------------------------------------------------------------------
    def split_indices(self) -> dict[str, list[int]]:
        if self.split == "scaffold" and self.few_shot_draw == "shuffled" and self.train_graphs is not None:
            train, val, test = scaffold_split(self.smiles)
            random.Random(self.seed).shuffle(train)  # RELIEF: random.seed(seed); random.shuffle(train_idx)
            train = train[: self.train_graphs]
        elif self.split == "scaffold":
            train, val, test = scaffold_split(self.smiles, train_graphs=self.train_graphs)
        else:
            train, val, test = random_split(len(self.smiles), self.seed)
        return {"train": train, "val": val, "test": test}

    def setup(self, stage: str) -> None:
        self._split_graphs()
        # an empty split would otherwise run without a batch (train) or a score (val, test); unlabelled
        # pre-training sets (no tasks) have nothing to validate
        needed = {"fit": ("train", "val"), "validate": ("val",)}.get(stage, ("test",))
        empty = [name for name in needed if not self._splits[name] and (name != "val" or self.tasks)]
        if empty:
            sizes = ", ".join(f"{name} {len(graphs)}" for name, graphs in self._splits.items())
            why = "each scaffold set goes whole into one split" if self.split == "scaffold" else "it cuts at 80%/90%"
            raise DatasetError(
                f"{self.path}: the {self.split} split of its {len(self.graphs)} molecules leaves "
                f"{' and '.join(empty)} empty ({sizes}); {why}. Add molecules to the file."
            )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        assert self._splits is not None, "call setup() first"
        from torch_geometric.loader import DataLoader as GraphLoader

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
