"""The evaluator interface (see :mod:`lightning_prompts.evaluation`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from torch import Tensor

if TYPE_CHECKING:
    from lightning_prompts.methods.base import PromptModule

Stage = Literal["val", "test"]


class Evaluator:
    """An evaluation protocol. The module calls, for each stage (``"val"``, ``"test"``):

    :meth:`start` at the epoch start, :meth:`prepare` before each batch (with its loader index),
    :meth:`score` for the test batches (validation scores the forward pass it also takes the loss of),
    :meth:`update` with the scores, and :meth:`finish` at the epoch end, whose metrics it logs.

    Protocols to come fit the same shape: OOD detection scores ID and OOD loaders and logs FPR95/AUROC;
    test-time adaptation overrides :meth:`score` to adapt on each sample before predicting.
    """

    #: ``(metric, mode)`` the command's ``best.ckpt`` is chosen by under this protocol (``None``: the method's
    #: ``checkpoint_monitor``, validation accuracy by default).
    monitor: ClassVar[tuple[str, str] | None] = None
    #: The protocol tunes the prompt on each test input (TPT): testing from the initial prompt is its design.
    tunes_at_test_time: ClassVar[bool] = False

    def setup(self, module: PromptModule, datamodule: Any | None, stage: str) -> None:
        """Read what the protocol needs from the data module (called in the module's ``setup``)."""

    def check_ready(self, module: PromptModule, datamodule: Any | None, stage: str) -> None:
        """Raise now if this protocol cannot evaluate ``module`` on ``datamodule`` (before the Trainer starts)."""

    def start(self, module: PromptModule, stage: Stage) -> None:
        """Reset for a new validation or test epoch."""

    def prepare(self, module: PromptModule, stage: Stage, dataloader_idx: int) -> None:
        """Before a batch of loader ``dataloader_idx`` (e.g. switch the classes the module scores)."""

    def score(self, module: PromptModule, batch: Any, stage: Stage, dataloader_idx: int) -> Tensor:
        """The scores ``(B, C)`` predictions are taken from: the module's logits through its ensembles."""
        return module.evaluation_scores(batch, module.forward_batch(batch).logits.detach())

    def update(
        self, module: PromptModule, batch: Any, scores: Tensor, targets: Tensor, stage: Stage, dataloader_idx: int
    ) -> None:
        """Add a batch."""
        raise NotImplementedError

    def finish(self, module: PromptModule, stage: Stage) -> dict[str, Tensor]:
        """The epoch's metrics, by logged name (``"val/acc"``, ``"test/hm"``…)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """State that belongs in checkpoints (e.g. a continual run's accuracy history)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
