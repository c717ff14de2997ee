"""LightningDataModules for the benchmarks and for your own data.

Every data module registers itself and imports on first use; what methods may read from a data
module is declared in :mod:`lightning_prompts.data.protocols`.
"""

from lightning_prompts.registry import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "Synthetic": "lightning_prompts.data.image_datamodule",
        "SyntheticText": "lightning_prompts.data.text",
        "ImageClassificationDataModule": "lightning_prompts.data.image_datamodule",
    },
)
