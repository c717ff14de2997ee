"""Tutorial: write your own method — a task residual on CLIP's class weights, in about 30 lines.

    python docs/tutorials/own_method.py

The method (after TaskRes, Yu et al., CVPR 2023, written here from its equation and not checked against
its code): keep the frozen zero-shot class weights ``t_c`` (features of "a photo of a {class}.") and
learn one residual vector ``x_c`` per class, ``w_c = normalize(t_c + alpha * x_c)``, starting from zero.
A CLIP-family method implements two things, the class weights and the image features; the base class
does the rest (frozen backbone in eval mode, optimizer, loss terms, evaluation, checkpoints, export).
Runs on a tiny random CLIP and generated images, in seconds.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer, seed_everything

from lightning_prompts import FewShotImageDataModule, ZeroShotCLIP
from lightning_prompts.backbones import OpenCLIP
from lightning_prompts.callbacks import FrozenFeatureCache
from lightning_prompts.methods.base import CLIPPromptModule


class TaskResidual(CLIPPromptModule):
    """Frozen zero-shot class weights plus a learned residual per class (``alpha`` scales it)."""

    image_side_frozen = True  # the image encoder is neither prompted nor trained (FrozenFeatureCache may help)

    def __init__(self, backbone, classnames: Sequence[str] | None = None, alpha: float = 0.5, **kwargs) -> None:
        super().__init__(backbone, classnames, **kwargs)
        self.alpha = alpha
        self.residual = torch.nn.Parameter(torch.zeros(len(self.classnames), self.backbone.embed_dim))

    def class_text_features(self) -> torch.Tensor:
        return F.normalize(self.frozen_text_features() + self.alpha * self.residual, dim=-1)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.frozen_image_features(images)

    def rebuild_class_prompts(self, classnames: Sequence[str]) -> None:
        if len(classnames) != self.residual.shape[0]:
            raise ValueError("TaskResidual learns one vector per training class; it cannot score other classes.")


def main() -> dict[str, float]:
    seed_everything(0)
    data = FewShotImageDataModule(
        dataset="dtd",
        shots=4,
        image_size=32,
        batch_size=4,
        num_workers=0,
        synthetic={"num_classes": 5, "images_per_class": 4},
    )
    backbone = OpenCLIP("tiny", pretrained=None)
    method = TaskResidual(backbone, data.classnames, optimizer=functools.partial(torch.optim.AdamW, lr=0.05))

    # Before training the residual is zero: the method is exactly zero-shot CLIP with the same template.
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        zero_shot = ZeroShotCLIP(backbone, data.classnames, templates=["a photo of a {}."]).eval()
        assert torch.allclose(method.eval()(images).logits, zero_shot(images).logits, atol=1e-5)
    print("at initialisation: the same logits as zero-shot CLIP")

    trainer = Trainer(
        max_epochs=10, callbacks=[FrozenFeatureCache(passes=1)], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.validate(method, data, verbose=False)
    before = float(trainer.callback_metrics["val/acc"])
    trainer.fit(method, data)
    trainer.validate(method, data, verbose=False)
    after = float(trainer.callback_metrics["val/acc"])
    print(f"val/acc: {before:.3f} zero-shot -> {after:.3f} with the learned residual")

    trainable = sorted(method.trainable_state_keys())
    print("trainable state (what checkpoints and export_prompt hold):", trainable)
    print("trainable values:", sum(p.numel() for p in method.parameters() if p.requires_grad))
    assert trainable == ["residual"] and float(method.residual.detach().abs().sum()) > 0
    return {"before": before, "after": after}


if __name__ == "__main__":
    main()
