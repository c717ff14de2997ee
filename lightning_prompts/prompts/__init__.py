"""Modules that own learnable prompt parameters (one job each); methods compose them."""

from lightning_prompts.prompts.adapter import ResidualAdapter
from lightning_prompts.prompts.coupled import CoupledPrompts
from lightning_prompts.prompts.feature_prompt import GPFPlusPrompt, GPFPrompt
from lightning_prompts.prompts.soft_prompt import SoftPrompt
from lightning_prompts.prompts.text_context import ClassContextPrompt
from lightning_prompts.prompts.visual_tokens import VisualPromptTokens

__all__ = [
    "ClassContextPrompt",
    "CoupledPrompts",
    "GPFPlusPrompt",
    "GPFPrompt",
    "ResidualAdapter",
    "SoftPrompt",
    "VisualPromptTokens",
]
