"""Tutorial: write your own loss term and compose it with two methods (CoOp and MaPLe).

    python docs/tutorials/own_loss_term.py

A :class:`~lightning_prompts.callbacks.LossTerm` is a callback that adds a weighted term to a method's
loss before the single backward. This one pushes the class weights apart: the mean cosine similarity
between the text features of different classes (a common remedy when class names are near-synonyms).
It reads one output field, ``text_features``, so it works with every CLIP-family method that fills it;
attaching it to a method that cannot fails before training, naming the field. Runs on a tiny random CLIP
and generated images, in seconds.
"""

from __future__ import annotations

import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_prompts import VPT, CoOp, FewShotImageDataModule, MaPLe
from lightning_prompts.backbones import OpenCLIP, TimmViT
from lightning_prompts.callbacks import LossTerm
from lightning_prompts.errors import MissingOutputFieldError


class ClassSeparation(LossTerm):
    """Mean cosine similarity between the text features of different classes (lower: further apart)."""

    required_fields = ("text_features",)

    def compute(self, module, batch, output) -> torch.Tensor:
        text = torch.nn.functional.normalize(output.text_features.float(), dim=-1)
        similarity = text @ text.t()
        classes = similarity.shape[0]
        off_diagonal = similarity.sum() - similarity.diagonal().sum()
        return off_diagonal / (classes * (classes - 1))


def mean_class_similarity(model) -> float:
    """The quantity the term penalises, measured on the trained model."""
    with torch.no_grad():
        return float(ClassSeparation().compute(model, None, model(torch.zeros(1, 3, 32, 32))))


def fit(method: str, weight: float | None) -> tuple[float, float]:
    seed_everything(0)
    data = FewShotImageDataModule(
        dataset="oxford_pets",
        shots=4,
        image_size=32,
        batch_size=4,
        num_workers=0,
        synthetic={"num_classes": 5, "images_per_class": 4},
    )
    backbone = OpenCLIP("tiny", pretrained=None)
    model = CoOp(backbone, data.classnames, n_ctx=4) if method == "CoOp" else MaPLe(backbone, data.classnames, depth=2)
    callbacks = [] if weight is None else [ClassSeparation(weight=weight, name="separation")]
    trainer = Trainer(
        max_epochs=4, callbacks=callbacks, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(model, data)
    logged = float(trainer.callback_metrics.get("train/separation", float("nan")))
    return mean_class_similarity(model.eval()), logged


def main() -> dict[str, float]:
    results = {}
    for method in ("CoOp", "MaPLe"):
        without, _ = fit(method, None)
        with_term, logged = fit(method, 1.0)
        print(f"{method}: mean similarity between classes {without:.3f} without the term, {with_term:.3f} with it")
        print(f"{method}: last logged train/separation (weighted) {logged:.3f}")
        assert with_term < without, "the term should push the classes apart"
        results[method] = with_term - without

    # A method whose output has no text features cannot take the term: refused before training.
    data = FewShotImageDataModule(dataset="dtd", shots=2, image_size=32, num_workers=0, synthetic={"num_classes": 3})
    vpt = VPT(TimmViT("tiny"), data.classnames)
    try:
        Trainer(max_steps=1, callbacks=[ClassSeparation()], logger=False, enable_progress_bar=False).fit(vpt, data)
    except MissingOutputFieldError as error:
        print("VPT:", error)
    else:
        raise AssertionError("VPT has no text features; the term must be refused")
    return results


if __name__ == "__main__":
    main()
