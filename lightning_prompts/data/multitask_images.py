"""Several CoOp datasets trained as one task with a merged label space (MVLPT's source stage).

MVLPT (Shen et al., WACV 2024; official code sIncerass/MVLPT) trains one prompt on the 11 CoOp datasets
at once: the class lists are concatenated in task order, every label is offset by the classes of the
tasks before it, and batches mix the tasks. Evaluation scores each test image on *its own task's* classes
(the logits sliced to the task's range) and reports the mean of the per-task accuracies
(:class:`~lightning_prompts.evaluation.MultiTaskAccuracyEvaluator`, this module's default).

Class names may repeat across tasks ("forest" in EuroSAT and SUN397): they are different classes of the
merged space, so the usual duplicate-name check applies within each task only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from lightning_prompts.data.arguments import check_shots
from lightning_prompts.data.few_shot_images import FewShotImageDataModule
from lightning_prompts.data.image_datamodule import ImageClassificationDataModule, LoadedSplits, Synthetic
from lightning_prompts.data.images import ImageItem
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.registry import register_datamodule


@register_datamodule()
class MultiTaskImageDataModule(ImageClassificationDataModule):
    """The CoOp datasets ``tasks`` merged into one label space (see the module docstring).

    Args:
        root: the Dassl data root shared by the tasks.
        tasks: the datasets in label order (``"caltech101"``, ``"food101"``, …; names as
            :class:`~lightning_prompts.data.FewShotImageDataModule` takes them).
        shots: images per class for training in every task (``-1``: all).
        seed: the few-shot sampling seed.
        subsample_classes: per task, ``"base"`` or ``"new"`` to keep only that half of its classes (CoOp's
            split), so that the other half can be a target task the source never saw; tasks not named keep all.
        **kwargs: loader and preprocessing settings of :class:`ImageClassificationDataModule`.
    """

    def __init__(
        self,
        root: str = "data",
        tasks: list[str] | None = None,
        shots: int = 16,
        seed: int = 1,
        subsample_classes: dict[str, Literal["base", "new"]] | None = None,
        **kwargs: Any,
    ) -> None:
        check_shots(shots)
        super().__init__(root, **kwargs)
        if not tasks or len(set(tasks)) != len(tasks):
            raise ConfigurationError(f"MultiTaskImageDataModule needs distinct tasks (datasets), got {tasks}.")
        subsample = dict(subsample_classes or {})
        if unknown := sorted(set(subsample) - set(tasks)):
            raise ConfigurationError(f"subsample_classes names {unknown}, which are not among the tasks {tasks}.")
        if wrong := {task: half for task, half in subsample.items() if half not in ("base", "new")}:
            raise ConfigurationError(f"subsample_classes keeps 'base' or 'new' of a task, got {wrong}.")
        self.tasks, self.shots, self.seed, self.subsample = list(tasks), shots, seed, subsample
        self._ranges: dict[str, tuple[int, int]] = {}

    def task_module(self, task: str) -> FewShotImageDataModule:
        """The reader of one task (its own splits, labels from 0)."""
        return FewShotImageDataModule(
            root=str(self.root),
            dataset=task,
            shots=self.shots,
            seed=self.seed,
            subsample_classes=self.subsample.get(task, "all"),
        )

    @property
    def description(self) -> str:
        return f"MultiTaskImageDataModule({', '.join(self.tasks)}; root={self.root})"

    def write_synthetic(self, root: Path, spec: Synthetic) -> None:
        for task in self.tasks:  # every dataset in its own folder under the same root
            self.task_module(task).write_synthetic(root, spec)

    def load_splits(self) -> LoadedSplits:
        classnames: list[str] = []
        train: list[ImageItem] = []
        val: list[ImageItem] = []
        test: list[ImageItem] = []
        ranges: dict[str, tuple[int, int]] = {}
        for task in self.tasks:
            loaded = self.task_module(task).load_splits()
            offset = len(classnames)
            ranges[task] = (offset, offset + len(loaded.classnames))
            classnames += loaded.classnames
            shift = _shifted(offset)
            train += [shift(item) for item in loaded.train]
            val += [shift(item) for item in loaded.val]
            for _, items in loaded.test_sets.values():
                test += [shift(item) for item in items]
        self._ranges = ranges
        return LoadedSplits(classnames, train, val, {"test": (classnames, test)} if test else {})

    @property
    def task_class_ranges(self) -> dict[str, tuple[int, int]]:
        """``{task: (first label, end label)}`` in the merged label space."""
        self._splits()
        return dict(self._ranges)

    def default_evaluator(self) -> Any:
        from lightning_prompts.evaluation.multitask_accuracy import MultiTaskAccuracyEvaluator

        return MultiTaskAccuracyEvaluator()


def _shifted(offset: int) -> Any:
    def shift(item: ImageItem) -> ImageItem:
        return ImageItem(item.path, item.label + offset, item.classname)

    return shift
