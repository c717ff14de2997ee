"""OOD detection: the ID test set and each OOD set the data module declares are scored by the method;
FPR95, AUROC and AUPR per OOD set and averaged, ID accuracy, and a histogram of the scores."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lightning_prompts.data.protocols import ClassNames, OODTestSets, TestClassSets, provided
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.evaluation import ood_scores
from lightning_prompts.evaluation.base import Evaluator, Stage
from lightning_prompts.metrics.ood import CONVENTIONS, Convention, OODDetection
from lightning_prompts.metrics.setwise_accuracy import SetwiseAccuracy
from lightning_prompts.registry import register_evaluator

if TYPE_CHECKING:
    from lightning_prompts.methods.base import PromptModule

#: Files written next to the logged metrics after each test.
HISTOGRAM_FILE, SCORES_FILE = "ood_scores.png", "ood_scores.safetensors"


@register_evaluator()
class OODEvaluator(Evaluator):
    """OOD detection on an :class:`~lightning_prompts.data.protocols.OODTestSets` data module.

    Test loader 0 is the ID test set, loaders 1… the OOD sets. Logs ``test/acc`` (ID accuracy over the
    ID classes), ``test/<metric>_<set>`` per OOD set and ``test/<metric>`` averaged over the sets, with
    ``<metric>`` ``fpr95``, ``auroc`` and ``aupr`` (``convention="mcm"``) or ``aupr_in``/``aupr_out``
    (``"openood"``); writes ``ood_scores.png`` (score histograms, ID against each OOD set; needs
    matplotlib) and ``ood_scores.safetensors`` (the scores) into the logger's folder, else the
    trainer's ``default_root_dir``. Validation measures ID accuracy (``val/acc``).

    Args:
        score: the ID score (:mod:`lightning_prompts.evaluation.ood_scores`): ``"mcm"`` (default; needs a
            module with a ``logit_scale``: CLIP methods), ``"msp"``, ``"max_logit"``, ``"energy"`` or
            ``"id_mass"`` (methods that score negative labels after the ID classes) or ``"r_mcm"`` (Local-Prompt's
            regional MCM; methods with ``regional_id_scores``).
        temperature: T of ``mcm``, ``msp`` and ``energy`` (MCM's code: 1).
        convention: ``"mcm"`` (ID positive, MCM/GL-MCM/Local-Prompt) or ``"openood"`` (OOD positive,
            OpenOOD/LAPT); see :mod:`lightning_prompts.metrics.ood`.
        negative_groups: groups of negative labels ``id_mass`` averages over (LAPT: 100).
        histogram: write the histogram and the scores.
        seed: seeds the permutation of the negative labels before grouping.
    """

    def __init__(
        self,
        score: ood_scores.ScoreName = "mcm",
        temperature: float = 1.0,
        convention: Convention = "mcm",
        negative_groups: int = 1,
        histogram: bool = True,
        seed: int = 0,
    ) -> None:
        if score not in ood_scores.SCORES:
            raise ConfigurationError(f"OODEvaluator: unknown score {score!r}; choose one of {list(ood_scores.SCORES)}.")
        if convention not in CONVENTIONS:
            raise ConfigurationError(
                f"OODEvaluator: unknown convention {convention!r}; choose one of {list(CONVENTIONS)}."
            )
        if temperature <= 0 or negative_groups < 1:
            raise ConfigurationError("OODEvaluator: temperature must be > 0 and negative_groups >= 1.")
        self.score_name, self.temperature, self.convention = score, temperature, convention
        self.negative_groups, self.histogram, self.seed = negative_groups, histogram, seed
        self.val_accuracy = SetwiseAccuracy(["val"])
        self.test_accuracy = SetwiseAccuracy(["test"])
        self.detection: OODDetection | None = None
        self.num_id = 0
        self._regional: Tensor | None = None  # r_mcm: the batch's scores, from score() to update()

    def check_ready(self, module: PromptModule, datamodule: Any | None, stage: str) -> None:
        if stage != "test":
            return
        sets = provided(datamodule, OODTestSets)
        if sets is None or not list(sets.ood_test_sets):
            raise ConfigurationError(
                "OODEvaluator needs OOD test sets: give the data module ood_sets: {name: folder of images}."
            )
        classes = provided(datamodule, TestClassSets)
        if classes is not None and len(classes.test_class_sets) > 1:
            raise ConfigurationError(
                f"OODEvaluator scores one ID test set; the data module declares {list(classes.test_class_sets)}."
            )
        if self.score_name == "r_mcm" and not callable(getattr(module, "regional_id_scores", None)):
            raise ConfigurationError(
                f"OODEvaluator: score 'r_mcm' needs regional outputs (LocalPrompt); {type(module).__name__} has none."
            )
        if self.score_name == "mcm" and getattr(type(module), "logit_scale", None) is None:
            raise ConfigurationError(
                f"OODEvaluator: score 'mcm' divides by the logit scale of a CLIP method; {type(module).__name__} "
                f"has none (use score: msp)."
            )
        if self.histogram:
            try:
                import matplotlib  # noqa: F401
            except ImportError as error:
                raise ConfigurationError(
                    "OODEvaluator writes a score histogram with matplotlib: pip install matplotlib, "
                    "or set histogram: false."
                ) from error

    def setup(self, module: PromptModule, datamodule: Any | None, stage: str) -> None:
        names = provided(datamodule, ClassNames)
        self.num_id = len(names.classnames) if names is not None else len(module.classnames)

    def start(self, module: PromptModule, stage: Stage) -> None:
        if stage == "val":
            self.val_accuracy = self.val_accuracy.to(module.device)
            self.val_accuracy.reset()
            return
        sets = provided(module.datamodule, OODTestSets)
        assert sets is not None  # check_ready
        self.detection = OODDetection(list(sets.ood_test_sets), self.convention).to(module.device)
        self.test_accuracy = self.test_accuracy.to(module.device)
        self.test_accuracy.reset()

    def score(self, module: PromptModule, batch: Any, stage: Stage, dataloader_idx: int) -> Tensor:
        if self.score_name != "r_mcm":
            return super().score(module, batch, stage, dataloader_idx)
        output = module.forward_batch(batch)
        self._regional = module.regional_id_scores(output).detach()
        return module.evaluation_scores(batch, output.logits.detach())

    def id_scores(self, module: PromptModule, logits: Tensor) -> Tensor:
        """The ID score of each row of ``logits`` (see :mod:`lightning_prompts.evaluation.ood_scores`)."""
        if self.score_name == "r_mcm":
            if self._regional is None or self._regional.shape[0] != logits.shape[0]:
                raise ConfigurationError("OODEvaluator: r_mcm scores come from score(); call it for every batch.")
            regional, self._regional = self._regional, None
            return regional
        if self.score_name == "mcm":
            return ood_scores.mcm(logits, module.logit_scale.detach(), self.temperature)
        if self.score_name == "id_mass":
            return ood_scores.id_mass(logits, self.num_id or logits.shape[-1], self.negative_groups, self.seed)
        if self.score_name == "msp":
            return ood_scores.msp(logits, self.temperature)
        if self.score_name == "energy":
            return ood_scores.energy(logits, self.temperature)
        return logits.float().amax(dim=-1)

    def update(
        self, module: PromptModule, batch: Any, scores: Tensor, targets: Tensor, stage: Stage, dataloader_idx: int
    ) -> None:
        id_logits = scores[..., : self.num_id] if self.num_id else scores  # negative labels are not predictions
        if stage == "val":
            self.val_accuracy.update(id_logits, targets)
            return
        assert self.detection is not None
        if dataloader_idx == 0:
            self.test_accuracy.update(id_logits, targets)
        self.detection.update(self.id_scores(module, scores), set_index=dataloader_idx)

    def finish(self, module: PromptModule, stage: Stage) -> dict[str, Tensor]:
        if stage == "val":
            result = self.val_accuracy.compute()
            self.val_accuracy.reset()
            return {"val/acc": result["val"]} if "val" in result else {}
        assert self.detection is not None
        scores = self.detection.all_scores()  # gathered once (every process takes part): metrics and histogram
        results = {f"test/{name}": value for name, value in self.detection.metrics_of(scores).items()}
        accuracy = self.test_accuracy.compute()
        if "test" in accuracy:
            results["test/acc"] = accuracy["test"]
        trainer = module._trainer
        if self.histogram and (trainer is None or trainer.is_global_zero):
            self.write_scores(self.output_folder(module), scores)
        self.detection.reset()
        self.test_accuracy.reset()
        return results

    def output_folder(self, module: PromptModule) -> Path:
        trainer = module._trainer
        if trainer is None:
            return Path.cwd()
        folder = trainer.log_dir if trainer.logger is not None else None
        return Path(folder or trainer.default_root_dir)

    def write_scores(self, folder: Path, scores: dict[str, Tensor]) -> None:
        """``ood_scores.safetensors`` (``id`` and one tensor per OOD set) and ``ood_scores.png``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from safetensors.torch import save_file

        assert self.detection is not None
        folder.mkdir(parents=True, exist_ok=True)
        names = self.detection.ood_set_names
        scores = {name: values.cpu() for name, values in scores.items()}
        save_file({name: values.float().contiguous() for name, values in scores.items()}, str(folder / SCORES_FILE))
        (folder / SCORES_FILE).chmod(0o644)  # safetensors writes owner-only files; these are results to share
        figure, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3), squeeze=False)
        low = float(min(values.min() for values in scores.values()))
        high = float(max(values.max() for values in scores.values()))
        bins = torch.linspace(low, high if high > low else low + 1, 41).tolist()
        for axis, name in zip(axes[0], names):
            axis.hist(scores["id"].numpy(), bins=bins, alpha=0.6, density=True, label="ID")
            axis.hist(scores[name].numpy(), bins=bins, alpha=0.6, density=True, label=name)
            axis.set_title(f"{self.score_name} score: ID vs {name}")
            axis.set_xlabel(self.score_name)
            axis.legend()
        figure.tight_layout()
        figure.savefig(folder / HISTOGRAM_FILE, dpi=100)
        plt.close(figure)
