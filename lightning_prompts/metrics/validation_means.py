"""``val/loss`` and the other per-batch validation values, averaged over the epoch exactly under DDP.

``self.log(name, value, batch_size=n, sync_dist=True)`` keeps, per process, the weighted sum and the number of
samples, and at the end of the epoch averages both over the processes. Lightning keeps the number of samples as
an integer, and on gloo averages it by integer division: processes that scored 2 and 1 samples report
``(2 + 1) // 2 = 1`` sample between them, so a mean loss of 1.02 was logged as 1.53 (a checkpoint monitor).
Shares are unequal whenever an evaluation set does not split evenly (the data modules give every sample to
exactly one process, see :mod:`lightning_prompts.data.processes`). :func:`log_validation_mean` logs a metric
object instead, whose sums are floats summed over the processes.

A batch a module cannot score (a molecule with no context ring, a retrieval batch of one pair) is logged with weight
0. An epoch with no weight at all logs NaN, with a warning that names the value and, where the module gives it, why
nothing was scored: a NaN ``val/loss`` reaching a checkpoint monitor or early stopping unexplained reads as a
diverged run.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics import Metric


class WeightedMean(Metric):
    """The mean of values each weighted by its batch size, over every process: float sums, summed when synced."""

    full_state_update = False

    def __init__(self, name: str = "mean", when_empty: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.name, self.when_empty = name, when_empty
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("weight", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, value: Tensor, weight: float) -> None:
        # out of place: a state made under `trainer.validate`'s inference mode cannot be updated in place under `fit`
        self.total = self.total + value.detach().double().mean() * weight
        self.weight = self.weight + float(weight)

    def compute(self) -> Tensor:
        if self.weight == 0:
            why = f" ({self.when_empty})" if self.when_empty else ""
            rank_zero_warn(f"{self.name}: no validation sample was scored this epoch{why}; it is logged as NaN.")
            return torch.tensor(float("nan"), device=self.total.device)
        return (self.total / self.weight).float()


def log_validation_mean(
    module: Any,
    name: str,
    value: Tensor,
    batch_size: int,
    dataloader_idx: int = 0,
    when_empty: str = "",
    **log_options: Any,
) -> None:
    """Log ``val/<name>`` from a LightningModule's ``validation_step``: the batch-size weighted mean of ``value``
    over the epoch and every process, one per validation loader (Lightning adds ``/dataloader_idx_<i>`` to the
    name when there are several). The metric is made on first use, in a child module ``validation_means`` (it
    holds no state the checkpoint keeps). ``when_empty`` says why a batch of weight 0 was not scored, for the
    warning of an epoch that scored nothing."""
    means = getattr(module, "validation_means", None)
    if means is None:
        means = module.validation_means = torch.nn.ModuleDict()
    key = name if dataloader_idx == 0 else f"{name}_loader_{dataloader_idx}"
    if key not in means:
        with torch.inference_mode(False):  # normal tensors, though validation may run in inference mode
            means[key] = WeightedMean(f"val/{name}", when_empty).to(value.device)
    metric = means[key]
    metric.update(value, batch_size)
    module.log(
        f"val/{name}", metric, on_step=False, on_epoch=True, metric_attribute=f"validation_means.{key}", **log_options
    )
