"""Graph batches in the Trainer's precision.

Lightning's ``bf16-true``, ``16-true`` and ``64-true`` precisions cast the module and convert the floating tensors
of every batch before the step, but only inside the containers it walks (tensors, mappings, sequences,
dataclasses). PyG's ``Data``, ``Batch`` and ``HeteroData`` are not among them, so node features reached a
half-precision model in float32 and its first layer stopped on mixed dtypes. The graph data modules finish the
conversion after the transfer with the precision plugin's own ``convert_input``, on a shallow copy: a node task
hands the same stored graph to every step, and casting that in place would leave it in half precision for every
later run in the process.
"""

from __future__ import annotations

import copy
from typing import Any

from lightning.pytorch.plugins.precision import Precision
from lightning_utilities.core.apply_func import apply_to_collection


def graphs_in_trainer_precision(batch: Any, trainer: Any | None) -> Any:
    """``batch`` with the floating tensors of its PyG graphs converted as the trainer's precision plugin converts
    tensors (unchanged under mixed and 32-bit precision, whose plugins leave inputs as they are)."""
    plugin = getattr(trainer, "precision_plugin", None)
    if plugin is None or type(plugin).convert_input is Precision.convert_input:
        return batch
    from torch_geometric.data.data import BaseData

    return apply_to_collection(batch, BaseData, lambda graph: copy.copy(graph).apply(plugin.convert_input))


class GraphBatchesInTrainerPrecision:
    """Data-module mixin: :func:`graphs_in_trainer_precision` after every transfer to the device."""

    trainer: Any

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return graphs_in_trainer_precision(batch, self.trainer)
