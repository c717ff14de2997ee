"""Small builders shared by tests."""

from __future__ import annotations

from lightning_prompts.data import FewShotImageDataModule, Synthetic


def synthetic_fewshot(dataset: str = "caltech101", shots: int = 2, num_classes: int = 4, **kwargs):
    """A few-shot image data module on generated images in ``dataset``'s Dassl layout."""
    options = {"batch_size": 4, "eval_batch_size": 8, "num_workers": 0, "image_size": 32}
    options.update(kwargs)
    return FewShotImageDataModule(
        dataset=dataset, shots=shots, synthetic=Synthetic(num_classes=num_classes, images_per_class=4), **options
    )


from lightning_prompts.callbacks import LossTerm  # noqa: E402


class SquaredTextFeatures(LossTerm):
    """Mean square of the normalised class text features: 1/D whatever the prompt (easy to check)."""

    required_fields = ("text_features",)

    def compute(self, module, batch, output):
        return output.text_features.pow(2).mean()


class NeedsNodeEmbeddings(LossTerm):
    """A term no image method can feed (for the unmet-field error)."""

    required_fields = ("node_embeddings",)

    def compute(self, module, batch, output):  # pragma: no cover - never reached
        raise AssertionError("a term with an unmet field must not run")
