"""What a method, callback or evaluator may read from a data module: small typed protocols.

Data modules know nothing of models; models know data modules only through these protocols, so any
data module that implements one (yours included) works with every method that reads it. Read them
with :func:`provided`, which returns ``None`` for a data module that does not implement the protocol.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

P = TypeVar("P")


@runtime_checkable
class ClassNames(Protocol):
    """The training classes in label order (the CLI links them to ``model.classnames``)."""

    @property
    def classnames(self) -> list[str] | None: ...


@runtime_checkable
class TestClassSets(Protocol):
    """Test sets with their own classes, in the order of ``test_dataloader()``: ``{set name: class names}``,
    each set labelled from 0 in its own classes (base-to-novel: ``{"base": …, "novel": …}``)."""

    @property
    def test_class_sets(self) -> dict[str, list[str]]: ...


@runtime_checkable
class ClassGroups(Protocol):
    """Groups of the training classes scored separately on the one test set, with predictions over all
    classes (transductive zero-shot: ``{"seen": …, "unseen": …}``, whose harmonic mean is the headline);
    empty when the protocol has none."""

    @property
    def class_groups(self) -> dict[str, list[str]]: ...


@runtime_checkable
class OODTestSets(Protocol):
    """Out-of-distribution test sets: their names, in the order their loaders follow the ID test set's
    in ``test_dataloader()`` (loader 0 is ID; OOD images carry the label ``-1``)."""

    @property
    def ood_test_sets(self) -> list[str]: ...


@runtime_checkable
class BatchKeys(Protocol):
    """The optional keys (:mod:`lightning_prompts.batch`) every training batch carries, beyond image and label."""

    @property
    def batch_keys(self) -> frozenset[str]: ...


@runtime_checkable
class TrainingSet(Protocol):
    """The training dataset itself (per-sample passes over it, such as Grad-CAM masks once per epoch)."""

    def train_dataset(self) -> Any: ...


@runtime_checkable
class TextSplits(Protocol):
    """The raw texts of each split a stage will feed (text methods check their length before training)."""

    def split_texts(self, stage: str) -> dict[str, list[str]]: ...


@runtime_checkable
class TokenCounter(Protocol):
    """A model that counts the tokens each raw text occupies as it feeds it (text data modules group
    batches by these counts; characters order texts far worse than their tokens do)."""

    def text_lengths(self, texts: Sequence[str]) -> list[int]: ...


@runtime_checkable
class GraphTask(Protocol):
    """What a graph method classifies: ``"node"`` or ``"graph"`` (ego-graphs count as graphs)."""

    @property
    def task_level(self) -> str: ...

    @property
    def num_features(self) -> int: ...


@runtime_checkable
class TaskStream(Protocol):
    """A class-incremental stream run as one ``fit``: ``epochs_per_task`` epochs per task."""

    num_tasks: int
    epochs_per_task: int

    def task_of_epoch(self, epoch: int) -> int: ...


@runtime_checkable
class PairDomains(Protocol):
    """Image-caption pairs grouped into domains (GRAM's cross-domain meta-tasks)."""

    domains: Sequence[int] | None

    def assign_domains(self, domains: Sequence[int]) -> None: ...

    def pairs_dataloader(self, split: str = "train") -> Any: ...


@runtime_checkable
class DefaultEvaluator(Protocol):
    """The evaluation protocol the data module's splits are made for (continual streams, OOD sets…)."""

    def default_evaluator(self) -> Any: ...


def provided(datamodule: Any, protocol: type[P]) -> P | None:
    """``datamodule`` if it implements ``protocol`` (and is not ``None``), else ``None``.

    The check looks the members up without evaluating them (a data module's properties may read files).
    """
    if datamodule is None:
        return None
    sentinel = object()
    for name in _members(protocol):
        if inspect.getattr_static(datamodule, name, sentinel) is sentinel:
            return None
    return datamodule


@functools.cache
def _members(protocol: type) -> tuple[str, ...]:
    names = set(getattr(protocol, "__annotations__", {}))
    names |= {name for name in vars(protocol) if not name.startswith("_")}
    return tuple(sorted(names))
