"""Top-1 accuracy: on the training classes for validation, and on every test set the data module
declares, each with its own classes (base-to-novel: base, novel and their harmonic mean)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lightning_prompts.data.protocols import ClassGroups, OODTestSets, TestClassSets, provided
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.evaluation.base import Evaluator, Stage
from lightning_prompts.metrics.mean_per_class import MeanPerClassAccuracy
from lightning_prompts.metrics.setwise_accuracy import SetwiseAccuracy, harmonic_mean
from lightning_prompts.registry import register_evaluator

if TYPE_CHECKING:
    from lightning_prompts.methods.base import PromptModule


@register_evaluator()
class ClassificationEvaluator(Evaluator):
    """Accuracy on the training classes (``val/acc``) and per test set (``test/acc``; with several sets
    ``test/acc_<set>``, and ``test/hm`` for base and novel), switching the module to each test set's
    classes first (CoOp rebuilds its class prompts). The default protocol.

    Args:
        macro_f1: also report the macro-averaged F1 over the classes (``val/macro_f1``, ``test/macro_f1``; one test
            set only), as RELIEF's node-level tables do; the command line's best checkpoint then follows
            ``val/macro_f1``, the official model selection.
        mean_per_class: also report ELEVATER's mean per-class accuracy (``val/mean_per_class``,
            ``test/mean_per_class``; one test set only; :class:`~lightning_prompts.metrics.MeanPerClassAccuracy`),
            the official metric of Caltech-101, FGVC-Aircraft, Flowers-102 and Oxford-IIIT Pets in MVLPT's
            ELEVATER tables; the best checkpoint then follows ``val/mean_per_class``.
        matthews: also report Matthews' correlation coefficient (``val/mcc``, ``test/mcc``; one test set only),
            GLUE's metric of CoLA, which DePT's code also selects its checkpoint on; the best checkpoint then
            follows ``val/mcc``.
    """

    def __init__(self, macro_f1: bool = False, mean_per_class: bool = False, matthews: bool = False) -> None:
        self.macro_f1, self.mean_per_class, self.matthews = macro_f1, mean_per_class, matthews
        monitored = (
            "val/mean_per_class" if mean_per_class else "val/mcc" if matthews else "val/macro_f1" if macro_f1 else None
        )
        self.monitor = (monitored, "max") if monitored else None  # type: ignore[misc]
        self._extra: dict[str, dict[str, Any]] = {}
        self.val_accuracy = SetwiseAccuracy(["val"])
        self.test_accuracy: SetwiseAccuracy | None = None
        self._set_names: list[str] = []
        self._class_sets: list[list[str]] = []
        self._active = -1
        # class groups scored on the one test set over all classes (transductive zero-shot: seen / unseen)
        self.group_accuracy: SetwiseAccuracy | None = None
        self._group_members: list[Tensor] = []

    @staticmethod
    def class_sets(module: PromptModule, datamodule: Any | None) -> dict[str, list[str]]:
        source = provided(datamodule, TestClassSets)
        sets = dict(source.test_class_sets or {}) if source is not None else {}
        return sets or {"test": list(module.classnames)}

    def check_ready(self, module: PromptModule, datamodule: Any | None, stage: str) -> None:
        if stage == "test" and len(self.class_sets(module, datamodule)) > 1:
            for name in ("macro_f1", "mean_per_class", "matthews"):
                if getattr(self, name):
                    raise ConfigurationError(f"{name}=True scores one test set; the data module has several.")
        ood = provided(datamodule, OODTestSets)
        if stage == "test" and ood is not None and list(ood.ood_test_sets):
            raise ConfigurationError(
                f"The data module has OOD test sets {list(ood.ood_test_sets)}, which ClassificationEvaluator cannot "
                f"score: use OODEvaluator (the default with ood_sets)."
            )
        source = provided(datamodule, TestClassSets)
        if source is None or module.supports_new_classes:
            return
        sets = dict(source.test_class_sets or {})
        foreign = [name for name, names in sets.items() if list(names) != list(module.classnames)]
        if foreign:
            raise ConfigurationError(
                f"{type(module).__name__} scores a fixed set of classes and cannot be tested on the test set(s) "
                f"{foreign} whose classes differ (base-to-novel needs a method that builds class prompts from "
                f"names, such as CoOp)."
            )

    def start(self, module: PromptModule, stage: Stage) -> None:
        self._extra[stage] = {}
        if self.macro_f1:
            from torchmetrics.classification import MulticlassF1Score

            f1 = MulticlassF1Score(len(module.classnames), average="macro")
            self._extra[stage]["macro_f1"] = f1.to(module.device)
        if self.mean_per_class:
            self._extra[stage]["mean_per_class"] = MeanPerClassAccuracy().to(module.device)
        if self.matthews:
            from torchmetrics.classification import MulticlassMatthewsCorrCoef

            self._extra[stage]["mcc"] = MulticlassMatthewsCorrCoef(len(module.classnames)).to(module.device)
        if stage == "val":
            self.val_accuracy = self.val_accuracy.to(module.device)
            self.val_accuracy.reset()
            return
        sets = self.class_sets(module, module.datamodule)
        self._set_names, self._class_sets = list(sets), [list(names) for names in sets.values()]
        self.test_accuracy = SetwiseAccuracy(self._set_names).to(module.device)
        self._active = -1
        source = provided(module.datamodule, ClassGroups)
        groups = dict(source.class_groups or {}) if source is not None else {}
        self.group_accuracy, self._group_members = None, []
        if groups:
            position = {name: index for index, name in enumerate(module.classnames)}
            self._group_members = [
                torch.tensor([position[name] for name in names], device=module.device) for names in groups.values()
            ]
            self.group_accuracy = SetwiseAccuracy(list(groups)).to(module.device)

    def prepare(self, module: PromptModule, stage: Stage, dataloader_idx: int) -> None:
        if stage == "test" and dataloader_idx != self._active:  # sets are run one after the other
            module.set_classnames(self._class_sets[dataloader_idx])
            self._active = dataloader_idx

    def update(
        self, module: PromptModule, batch: Any, scores: Tensor, targets: Tensor, stage: Stage, dataloader_idx: int
    ) -> None:
        for name, metric in self._extra.get(stage, {}).items():
            metric.update(scores.argmax(dim=-1) if name in ("macro_f1", "mcc") else scores, targets)
        if stage == "val":
            self.val_accuracy.update(scores, targets)
        else:
            assert self.test_accuracy is not None
            self.test_accuracy.update(scores, targets, set_index=dataloader_idx)
            for index, members in enumerate(self._group_members):
                assert self.group_accuracy is not None
                inside = torch.isin(targets, members)
                self.group_accuracy.update(scores[inside], targets[inside], set_index=index)

    def finish(self, module: PromptModule, stage: Stage) -> dict[str, Tensor]:
        metrics = self._extra.pop(stage, {})
        extra = {f"{stage}/{name}": metric.compute() for name, metric in metrics.items() if metric.update_count}
        if stage == "val":
            result = self.val_accuracy.compute()
            self.val_accuracy.reset()
            return {"val/acc": result["val"], **extra} if "val" in result else {}  # no batch: nothing to report
        assert self.test_accuracy is not None
        results = self.test_accuracy.compute()
        self.test_accuracy.reset()
        if module.classnames != module.classnames_for_training:  # back to the training classes
            module.set_classnames(module.classnames_for_training)
        if self.group_accuracy is not None:
            groups = self.group_accuracy.compute()
            self.group_accuracy.reset()
            report = {"test/acc": results["test"], **{f"test/acc_{name}": value for name, value in groups.items()}}
            if len(groups) == 2:  # both groups had test images
                report["test/hm"] = harmonic_mean(*(groups[name] for name in self.group_accuracy.set_names))
            return report
        if list(results) == ["test"]:
            return {"test/acc": results["test"], **extra}
        return {(f"test/{name}" if name == "hm" else f"test/acc_{name}"): value for name, value in results.items()}
