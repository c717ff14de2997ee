"""Frozen pre-trained models behind the seams prompt methods need (one file per family).

The upstream libraries (open_clip, timm, transformers, torch_geometric) are imported only when a
backbone is built, so installing one family's extra is enough to use it.
"""

from lightning_prompts.backbones.base import Backbone, build_backbone
from lightning_prompts.backbones.gnn import GNN
from lightning_prompts.backbones.hf_text import HFText
from lightning_prompts.backbones.open_clip import OpenCLIP
from lightning_prompts.backbones.stand_in_clip import StandInCLIP
from lightning_prompts.backbones.timm_vit import TimmViT
from lightning_prompts.backbones.vision_language import ImageEncoding, VisionLanguageBackbone

__all__ = [
    "GNN",
    "Backbone",
    "HFText",
    "ImageEncoding",
    "OpenCLIP",
    "StandInCLIP",
    "TimmViT",
    "VisionLanguageBackbone",
    "build_backbone",
]
