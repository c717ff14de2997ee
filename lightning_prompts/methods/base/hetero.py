"""``HeteroNodeModule``: what every method on a frozen heterogeneous GNN shares (HetGPT and its baselines).

The task is node classification of one node type (``target``) of a PyG ``HeteroData`` graph; the labels and the
optional ``target_mask`` (the nodes of the current split) sit on that type's store. The base checks at
construction that the target is a node type of the encoder and, before training, that the data module classifies
the same type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from torch import Tensor

from lightning_prompts.backbones.hetero_gnn import HeteroGNN
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods.base.module import PromptModule


class HeteroNodeModule(PromptModule):
    """Base of methods that classify the ``target`` nodes of a heterogeneous graph.

    Args:
        backbone: the frozen :class:`~lightning_prompts.backbones.HeteroGNN`.
        classnames: the target type's classes (linked from the data module).
        target: the node type to classify (ACM: ``paper``, DBLP: ``author``, IMDB: ``movie``).
        **kwargs: see :class:`~lightning_prompts.methods.PromptModule`. Default optimizer: Adam, lr 5e-3 (HetGPT's).
    """

    default_optimizer: ClassVar[dict[str, Any]] = {"class_path": "torch.optim.Adam", "init_args": {"lr": 5e-3}}
    produced_fields: ClassVar[frozenset[str]] = frozenset({"logits", "pooled_features"})

    def __init__(
        self, backbone: HeteroGNN, classnames: Sequence[str] | None = None, target: str = "paper", **kwargs: Any
    ) -> None:
        super().__init__(backbone, classnames, **kwargs)
        if not self.classnames:
            raise ValueError(f"{type(self).__name__} needs classnames (the CLI links them from the data module).")
        if target not in self.backbone.in_channels:
            raise ValueError(
                f"target {target!r} is not a node type of the encoder ({sorted(self.backbone.in_channels)})."
            )
        self.target = target

    def check_ready(self, stage: str, callbacks: Any, datamodule: Any | None) -> None:
        super().check_ready(stage, callbacks, datamodule)
        data_target = getattr(datamodule, "target", None)
        if data_target is not None and data_target != self.target:
            raise ConfigurationError(
                f"{type(self).__name__} classifies {self.target!r} nodes but the data module's target is "
                f"{data_target!r}."
            )

    def select_targets(self, data: Any, values: Tensor) -> Tensor:
        """The rows of ``values`` (one per target-type node) that belong to the batch's split."""
        mask = getattr(data[self.target], "target_mask", None)
        return values if mask is None else values[mask]

    def batch_targets(self, batch: Any) -> Tensor:
        return self.select_targets(batch, batch[self.target].y)
