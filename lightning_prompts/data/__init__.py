"""LightningDataModules for the benchmarks and for your own data."""

from lightning_prompts.data.class_incremental import ClassIncrementalDataModule
from lightning_prompts.data.few_shot_images import FewShotImageDataModule
from lightning_prompts.data.fgvc import FGVCDataModule
from lightning_prompts.data.graph import GraphDataModule
from lightning_prompts.data.image_datamodule import ImageClassificationDataModule, Synthetic
from lightning_prompts.data.image_folder import ImageFolderDataModule
from lightning_prompts.data.image_text import ImageTextDataModule
from lightning_prompts.data.text import SyntheticText, TextClassificationDataModule
from lightning_prompts.data.vtab import VTAB1kDataModule

__all__ = [
    "ClassIncrementalDataModule",
    "FGVCDataModule",
    "FewShotImageDataModule",
    "GraphDataModule",
    "ImageClassificationDataModule",
    "ImageFolderDataModule",
    "ImageTextDataModule",
    "Synthetic",
    "SyntheticText",
    "TextClassificationDataModule",
    "VTAB1kDataModule",
]
