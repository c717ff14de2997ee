"""Evaluation protocols as objects: what validation and test measure and log.

A method does not override its evaluation loop: its :class:`~lightning_prompts.methods.PromptModule`
hands every validation and test batch to an :class:`Evaluator`, chosen by the recipe
(``model.init_args.evaluator``) or by the data module (``default_evaluator()``), else
:class:`ClassificationEvaluator`.
"""

from lightning_prompts.evaluation.base import Evaluator
from lightning_prompts.evaluation.classification import ClassificationEvaluator
from lightning_prompts.evaluation.continual import ContinualEvaluator
from lightning_prompts.evaluation.diff_tpt import DiffTPT
from lightning_prompts.evaluation.graded import GradedClassificationEvaluator
from lightning_prompts.evaluation.multilabel import MultiLabelEvaluator
from lightning_prompts.evaluation.multitask import MultiTaskAUROCEvaluator
from lightning_prompts.evaluation.multitask_accuracy import MultiTaskAccuracyEvaluator
from lightning_prompts.evaluation.ood import OODEvaluator
from lightning_prompts.evaluation.point_voting import PointVotingEvaluator
from lightning_prompts.evaluation.test_time import TestTimePromptTuning

__all__ = [
    "ClassificationEvaluator",
    "ContinualEvaluator",
    "DiffTPT",
    "Evaluator",
    "GradedClassificationEvaluator",
    "MultiLabelEvaluator",
    "MultiTaskAUROCEvaluator",
    "MultiTaskAccuracyEvaluator",
    "OODEvaluator",
    "PointVotingEvaluator",
    "TestTimePromptTuning",
]
