"""``GradCAMMasks``: foreground masks from Grad-CAM of the prompted model (DAPT-G).

DAPT (Zhang et al., "Decouple before Align", TPAMI 2025; official code: github.com/Ferenas/DAPT)
separates each training image into foreground and background. Without segmentation masks on disk
(DAPT-S), it derives them from the model itself (DAPT-G): Grad-CAM of the ground-truth class logit
on the backbone's spatial activations (a ViT's tokens entering its last block, a CNN's last feature
map), gradients averaged over positions as channel weights, ReLU, bilinear upsampling to the image,
division by the batch maximum, threshold 0.5.

The callback puts the mask into each training batch (``batch["mask"]``) before the method's
forward pass, so any mask-reading term (:class:`~lightning_prompts.callbacks.PullPushRegularization`)
uses it (it declares so in ``provides_batch_keys``):

* ``refresh="epoch"`` (DAPT's schedule): masks of the whole training set are computed at the start
  of every epoch with the current prompts and looked up by sample index. That is only aligned with
  the images when the training preprocessing is deterministic (``augmentation: vtab``); the
  callback checks this before training.
* ``refresh="step"``: the masks of each batch are computed on that batch, so they match any
  augmentation, at the cost of one more forward and backward pass per step.

Where we deviate: the official code computes DAPT-G masks before training and after each epoch on a
separately augmented loader and then never uses them (the training step reads the disk masks, and
the released script's ``--mode dapt-g`` flag is parsed as another option); here the masks are used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_prompts.batch import IMAGE, INDEX, LABEL, MASK
from lightning_prompts.data.protocols import TrainingSet, provided
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.registry import register_callback

if TYPE_CHECKING:
    from lightning_prompts.methods.base import PromptModule


def gradcam_masks(module: PromptModule, images: Tensor, labels: Tensor, threshold: float = 0.5) -> Tensor:
    """Binary foreground masks ``(B, 1, H, W)`` of ``images`` under ``module``'s current prompts."""
    target = module.gradcam_target()
    captured: dict[str, Tensor] = {}
    handle = target.module.register_forward_hook(lambda _m, _i, output: captured.__setitem__("output", output))
    try:
        with torch.enable_grad():
            # the input requires a gradient so that the activations do, even for a frozen, unprompted encoder
            logits = module.forward_batch({IMAGE: images.detach().requires_grad_(True)}).logits
            score = logits.gather(1, labels.view(-1, 1)).sum()
            (gradient,) = torch.autograd.grad(score, captured["output"])
    finally:
        handle.remove()
    activations, grid = target.tokens(captured["output"].detach())
    gradients, _ = target.tokens(gradient)
    weights = gradients.float().mean(dim=1, keepdim=True)  # one weight per channel
    cam = F.relu((activations.float() * weights).sum(dim=-1)).view(-1, 1, *grid)
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=True)
    cam = cam / (cam.max() + 1e-6)  # the batch maximum, as DAPT
    return (cam >= threshold).to(images.dtype)


@register_callback(
    family="clip",
    paper="Zhang et al., TPAMI 2025 — Decouple before Align: Visual Disentanglement Enhances Prompt Tuning",
    code="Ferenas/DAPT",
    docs="callbacks/gradcam_masks.md",
)
class GradCAMMasks(Callback):
    """Put Grad-CAM foreground masks into the training batches (see the module docstring).

    Args:
        threshold: share of the batch maximum above which a pixel is foreground (DAPT: 0.5).
        refresh: ``"epoch"`` (DAPT) or ``"step"``.
        batch_size: images per Grad-CAM pass when refreshing per epoch (DAPT: 50).
    """

    #: The batch keys this callback adds to every training batch (loss terms check for them).
    provides_batch_keys = (MASK,)

    def __init__(self, threshold: float = 0.5, refresh: Literal["epoch", "step"] = "epoch", batch_size: int = 50):
        super().__init__()
        if refresh not in ("epoch", "step"):
            raise ValueError(f"refresh must be 'epoch' or 'step', got {refresh!r}.")
        self.threshold, self.refresh, self.batch_size = threshold, refresh, batch_size
        self._masks: Tensor | None = None

    def check_ready(self, module: Any, datamodule: Any | None, callbacks: Any = ()) -> None:
        if not callable(getattr(module, "gradcam_target", None)):
            raise ConfigurationError(
                f"GradCAMMasks needs a method with an image encoder (gradcam_target); {type(module).__name__} has none."
            )
        if self.refresh == "epoch" and datamodule is not None and provided(datamodule, TrainingSet) is None:
            raise ConfigurationError("GradCAMMasks(refresh='epoch') needs a data module that exposes train_dataset().")

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and self.refresh == "epoch":
            source = provided(trainer.datamodule, TrainingSet)
            if source is None:
                raise ConfigurationError("GradCAMMasks(refresh='epoch') needs a data module with a training set.")
            dataset = source.train_dataset()
            first, second = dataset[0][IMAGE], dataset[0][IMAGE]
            if not torch.equal(first, second):
                raise ConfigurationError(
                    "GradCAMMasks(refresh='epoch') looks masks up by sample, which needs deterministic training "
                    "preprocessing (augmentation: vtab); with random augmentation use refresh: step."
                )

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.refresh != "epoch":
            return
        dataset = trainer.datamodule.train_dataset()
        loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=False)
        masks = []
        for batch in loader:
            images = batch[IMAGE].to(pl_module.device)
            masks.append(gradcam_masks(pl_module, images, batch[LABEL].to(pl_module.device), self.threshold).cpu())
        self._masks = torch.cat(masks)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self.refresh == "epoch" and self._masks is not None:
            batch[MASK] = self._masks[batch[INDEX].cpu()].to(batch[IMAGE].device, batch[IMAGE].dtype)
        else:
            batch[MASK] = gradcam_masks(pl_module, batch[IMAGE], batch[LABEL], self.threshold)
