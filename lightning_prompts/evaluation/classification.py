"""Top-1 accuracy: on the training classes for validation, and on every test set the data module
declares, each with its own classes (base-to-novel: base, novel and their harmonic mean)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor

from lightning_prompts.data.protocols import OODTestSets, TestClassSets, provided
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.evaluation.base import Evaluator, Stage
from lightning_prompts.metrics.setwise_accuracy import SetwiseAccuracy
from lightning_prompts.registry import register_evaluator

if TYPE_CHECKING:
    from lightning_prompts.methods.base import PromptModule


@register_evaluator()
class ClassificationEvaluator(Evaluator):
    """Accuracy on the training classes (``val/acc``) and per test set (``test/acc``; with several sets
    ``test/acc_<set>``, and ``test/hm`` for base and novel), switching the module to each test set's
    classes first (CoOp rebuilds its class prompts). The default protocol."""

    def __init__(self) -> None:
        self.val_accuracy = SetwiseAccuracy(["val"])
        self.test_accuracy: SetwiseAccuracy | None = None
        self._set_names: list[str] = []
        self._class_sets: list[list[str]] = []
        self._active = -1

    @staticmethod
    def class_sets(module: PromptModule, datamodule: Any | None) -> dict[str, list[str]]:
        source = provided(datamodule, TestClassSets)
        sets = dict(source.test_class_sets or {}) if source is not None else {}
        return sets or {"test": list(module.classnames)}

    def check_ready(self, module: PromptModule, datamodule: Any | None, stage: str) -> None:
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
        if stage == "val":
            self.val_accuracy = self.val_accuracy.to(module.device)
            self.val_accuracy.reset()
            return
        sets = self.class_sets(module, module.datamodule)
        self._set_names, self._class_sets = list(sets), [list(names) for names in sets.values()]
        self.test_accuracy = SetwiseAccuracy(self._set_names).to(module.device)
        self._active = -1

    def prepare(self, module: PromptModule, stage: Stage, dataloader_idx: int) -> None:
        if stage == "test" and dataloader_idx != self._active:  # sets are run one after the other
            module.set_classnames(self._class_sets[dataloader_idx])
            self._active = dataloader_idx

    def update(
        self, module: PromptModule, batch: Any, scores: Tensor, targets: Tensor, stage: Stage, dataloader_idx: int
    ) -> None:
        if stage == "val":
            self.val_accuracy.update(scores, targets)
        else:
            assert self.test_accuracy is not None
            self.test_accuracy.update(scores, targets, set_index=dataloader_idx)

    def finish(self, module: PromptModule, stage: Stage) -> dict[str, Tensor]:
        if stage == "val":
            result = self.val_accuracy.compute()
            self.val_accuracy.reset()
            return {"val/acc": result["val"]} if "val" in result else {}  # no batch: nothing to report
        assert self.test_accuracy is not None
        results = self.test_accuracy.compute()
        self.test_accuracy.reset()
        if module.classnames != module.classnames_for_training:  # back to the training classes
            module.set_classnames(module.classnames_for_training)
        if list(results) == ["test"]:
            return {"test/acc": results["test"]}
        return {(f"test/{name}" if name == "hm" else f"test/acc_{name}"): value for name, value in results.items()}
