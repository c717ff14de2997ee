"""lightning_prompts: prompt tuning for frozen pre-trained models, as Lightning modules.

Importing the package makes every method, data module, backbone and callback available by its
short class name in YAML recipes (``class_path: CoOp``). The upstream model libraries are only
imported when a backbone is built.
"""

from lightning_prompts.backbones import GNN, Backbone, HFText, OpenCLIP, StandInCLIP, TimmViT
from lightning_prompts.callbacks import (
    ConsistencyRegularization,
    GradCAMMasks,
    GradientRegulation,
    LossTerm,
    MomentumAccumulation,
    PullPushRegularization,
)
from lightning_prompts.data import (
    ClassIncrementalDataModule,
    FewShotImageDataModule,
    FGVCDataModule,
    GraphDataModule,
    ImageClassificationDataModule,
    ImageFolderDataModule,
    ImageTextDataModule,
    Synthetic,
    SyntheticText,
    TextClassificationDataModule,
    VTAB1kDataModule,
)
from lightning_prompts.methods import (
    DAPT,
    GPF,
    LAE,
    VPT,
    CoOp,
    CoPrompt,
    MaPLe,
    PromptModule,
    PromptTuning,
    ZeroShotCLIP,
)
from lightning_prompts.optim import GradientRegulator, WarmupCosineLR
from lightning_prompts.outputs import PromptOutput
from lightning_prompts.pretraining import GRAM, GraphCL

__version__ = "0.1.0"

__all__ = [
    "GNN",
    "GPF",
    "LAE",
    "VPT",
    "Backbone",
    "ClassIncrementalDataModule",
    "DAPT",
    "ConsistencyRegularization",
    "CoOp",
    "CoPrompt",
    "FGVCDataModule",
    "FewShotImageDataModule",
    "GRAM",
    "GradCAMMasks",
    "GradientRegulation",
    "GradientRegulator",
    "GraphCL",
    "GraphDataModule",
    "HFText",
    "ImageClassificationDataModule",
    "ImageFolderDataModule",
    "ImageTextDataModule",
    "LossTerm",
    "MaPLe",
    "MomentumAccumulation",
    "OpenCLIP",
    "PromptModule",
    "PromptOutput",
    "PullPushRegularization",
    "PromptTuning",
    "StandInCLIP",
    "Synthetic",
    "SyntheticText",
    "TextClassificationDataModule",
    "TimmViT",
    "VTAB1kDataModule",
    "WarmupCosineLR",
    "ZeroShotCLIP",
]
