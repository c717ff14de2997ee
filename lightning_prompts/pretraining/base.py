"""What the encoder pre-training modules share (GraphCL, attribute masking, edge prediction, Point-MAE).

Each trains a copy of a backbone's encoder under its own objective; this base holds the rest: the optimizer
from a factory (a YAML ``class_path``/``init_args`` or a callable, described in the hyperparameters), the
``val/loss`` checkpoint monitor, the first process's BatchNorm statistics in every process before an evaluation
(under DDP), and writing the encoder to ``encoder_path`` when ``fit`` ends (rank zero) in
the format the matching backbone loads (:meth:`EncoderPretraining.export_encoder`). Checkpoints hold the random
generators' states, restored when ``fit`` resumes, so a resumed run equals the uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from lightning.pytorch import LightningModule
from torch import Tensor
from torch.optim import Optimizer

from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods.base.optimization import warn_on_half_precision_parameters
from lightning_prompts.methods.base.reproducibility import restore_rng_state, rng_state
from lightning_prompts.metrics.validation_means import log_validation_mean
from lightning_prompts.utils.distributed import share_batchnorm_statistics
from lightning_prompts.utils.factories import as_factory, describe_factory
from lightning_prompts.utils.tensor_files import save_atomically


class EncoderPretraining(LightningModule):
    """Base of the encoder pre-training modules (see the module docstring)."""

    checkpoint_monitor = ("val/loss", "min")
    encoder_path: str | None = None

    def check_ready(self, stage: str, callbacks: Any, datamodule: Any | None) -> None:
        """Before the command starts: pre-training has ``fit`` and ``validate`` (the pre-training loss) only."""
        if stage in ("test", "predict"):
            raise ConfigurationError(
                f"{type(self).__name__} pre-trains an encoder and has no {stage} stage: fit writes it to encoder_path "
                f"(validate reports the pre-training loss); load it in a method's backbone (checkpoint_path) and "
                f"{stage} that method."
            )

    def use_optimizer(self, optimizer: Any, default: Callable[[Any], Optimizer]) -> None:
        """Train with ``optimizer`` (``None``: ``default``, the official one) and record it in the hyperparameters."""
        self.hparams["optimizer"] = describe_factory(optimizer)
        self._optimizer_factory = as_factory(optimizer) or default

    def configure_optimizers(self) -> Any:
        warn_on_half_precision_parameters(self)
        return self._optimizer_factory(self.parameters())

    def export_encoder(self, path: str | Path) -> Path:
        """Write the trained encoder where its backbone's ``checkpoint_path`` can read it."""
        raise NotImplementedError

    def save_plain_encoder(self, path: str | Path) -> Path:
        """The encoder as a plain state dict, the format of the official Pretrain-GNNs scripts."""
        return save_atomically({k: v.detach().cpu() for k, v in self.encoder.state_dict().items()}, path)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the generators (masks, subgraphs, shuffling) travel with the checkpoint, as the prompt methods' do: a resumed
        # run that reseeded would replay the epochs it had already drawn
        checkpoint["pretraining_rng"] = rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("pretraining_rng")
        if state and self._trainer is not None and self.trainer.state.fn == "fit":  # resuming: continue exactly
            restore_rng_state(state)

    def on_validation_epoch_start(self) -> None:
        # under DDP each process updates its BatchNorm statistics from its own share of every batch (GIN's, the
        # mini-PointNet's): validate with the first process's, which the checkpoint and the exported encoder keep
        share_batchnorm_statistics(self)

    def on_test_epoch_start(self) -> None:
        share_batchnorm_statistics(self)

    def on_fit_end(self) -> None:
        if self.encoder_path and self.trainer.is_global_zero:
            self.export_encoder(self.encoder_path)


class ObjectiveSteps:
    """The steps of a graph pre-training whose ``objective(batch)`` gives a batch's ``(loss, accuracy)`` (attribute
    masking, edge masking, Infomax): ``train/loss`` and ``train/<accuracy_name>`` each step, ``val/loss`` and
    ``val/<accuracy_name>`` as epoch means over every process. Put it before :class:`EncoderPretraining`."""

    #: what the accuracy logged beside the loss measures (``"atom_acc"``: masked atoms typed right, …)
    accuracy_name: ClassVar[str]

    def objective(self, batch: Any) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss, accuracy = self.objective(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=int(batch.num_graphs))  # type: ignore[attr-defined]
        self.log(f"train/{self.accuracy_name}", accuracy, batch_size=int(batch.num_graphs))  # type: ignore[attr-defined]
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss, accuracy = self.objective(batch)
        log_validation_mean(self, "loss", loss, int(batch.num_graphs))
        log_validation_mean(self, self.accuracy_name, accuracy, int(batch.num_graphs))
