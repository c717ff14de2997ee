"""Test-time voting for point clouds (Point-MAE, IDPT): the class scores averaged over augmented views.

With ``test_votes: V`` the point-cloud data module adds ``V`` views of every test cloud to the batch (a
farthest-point pool, a random subset per vote, a random scale and shift per cloud;
:func:`~lightning_prompts.data.point_clouds.voting_views`). This evaluator scores each view and averages the
*logits* over the views, as the official ``test_vote`` does, then reports accuracy like
:class:`ClassificationEvaluator`; validation is unchanged.

The official script repeats the whole vote 300 times and reports the best run's accuracy, which selects on
the test set; one run is reported here (``test/acc``), and another seed gives another run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lightning_prompts.batch import POINT_VOTES, POINTS
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.evaluation.base import Stage
from lightning_prompts.evaluation.classification import ClassificationEvaluator
from lightning_prompts.registry import register_evaluator

if TYPE_CHECKING:
    from lightning_prompts.methods.base import PromptModule


@register_evaluator()
class PointVotingEvaluator(ClassificationEvaluator):
    """Accuracy of the logits averaged over each test cloud's voting views (see the module docstring)."""

    def check_ready(self, module: PromptModule, datamodule: Any | None, stage: str) -> None:
        super().check_ready(module, datamodule, stage)
        if stage == "test" and datamodule is not None and not getattr(datamodule, "test_votes", 0):
            raise ConfigurationError(
                "PointVotingEvaluator averages over voting views: set the data module's test_votes (official: 10)."
            )

    def score(self, module: PromptModule, batch: Any, stage: Stage, dataloader_idx: int) -> Tensor:
        votes = batch.get(POINT_VOTES) if stage == "test" else None
        if votes is None:
            return super().score(module, batch, stage, dataloader_idx)
        logits = [module.forward_batch({**batch, POINTS: votes[:, v]}).logits.float() for v in range(votes.shape[1])]
        return module.evaluation_scores(batch, torch.stack(logits).mean(dim=0).detach())
