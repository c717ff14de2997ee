"""LightningModules that produce the frozen backbones prompt methods tune (not prompt methods themselves)."""

from lightning_prompts.pretraining.gram import GRAM
from lightning_prompts.pretraining.graphcl import GraphCL

__all__ = ["GRAM", "GraphCL"]
