"""Mean per-class accuracy, as ELEVATER scores Caltech-101, FGVC-Aircraft, Flowers-102 and Oxford-IIIT Pets.

ELEVATER (the toolkit MVLPT evaluates with; ``vision_benchmark/datasets/metrics.py``, its ``mean-per-class``
metric) first drops the classes with no test image — from the targets *and* from the score columns — then takes
each image's top-scoring remaining class and averages the per-class recalls (scikit-learn's balanced accuracy).
So a prediction of a class absent from the test set never counts: the image falls back to its best present
class. With every class present this is the plain mean of per-class recalls. We do the same: scores are kept
until :meth:`compute` (the absent classes are known only then), as ``cat`` states that gather over DDP ranks.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


class MeanPerClassAccuracy(Metric):
    """Mean over the classes present in the targets of each class's recall, predictions restricted to them.

    Example:
        >>> metric = MeanPerClassAccuracy()
        >>> scores = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.1, 0.3, 0.6], [0.6, 0.4, 0.0]])
        >>> metric.update(scores, torch.tensor([0, 1, 1, 1]))  # class 2 has no image: image 3 falls back to 1
        >>> round(float(metric.compute()), 4)  # class 0: 1/1, class 1: 2/3
        0.8333
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, scores: Tensor, targets: Tensor) -> None:
        """Add a batch: ``scores`` ``(B, C)`` (logits or probabilities), ``targets`` ``(B,)`` class indices."""
        if scores.dim() != 2 or targets.shape != scores.shape[:1]:
            shapes = f"{tuple(scores.shape)} and {tuple(targets.shape)}"
            raise ValueError(f"scores must be (B, C) and targets (B,), got {shapes}.")
        self.scores.append(scores.detach().float())
        self.targets.append(targets.detach().long())

    def compute(self) -> Tensor:
        if len(self.targets) == 0:  # a list of batches, or one tensor once synchronised over processes
            return torch.tensor(0.0, device=self.device)
        scores, targets = dim_zero_cat(self.scores), dim_zero_cat(self.targets)
        present = torch.zeros(scores.shape[1], dtype=torch.bool, device=scores.device)
        present[targets] = True
        predictions = scores.masked_fill(~present, float("-inf")).argmax(dim=1)
        size = scores.shape[1]
        correct = torch.bincount(targets[predictions == targets], minlength=size).double()
        total = torch.bincount(targets, minlength=size).double()
        return (correct[present] / total[present]).mean()
