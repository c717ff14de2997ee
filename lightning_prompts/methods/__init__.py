"""Prompt-tuning methods, one LightningModule each."""

from lightning_prompts.methods._clip_base import CLIPPromptModule
from lightning_prompts.methods.base import PromptModule
from lightning_prompts.methods.coop import CoOp
from lightning_prompts.methods.coprompt import CoPrompt
from lightning_prompts.methods.dapt import DAPT
from lightning_prompts.methods.gpf import GPF
from lightning_prompts.methods.lae import LAE
from lightning_prompts.methods.maple import MaPLe
from lightning_prompts.methods.prompt_tuning import PromptTuning
from lightning_prompts.methods.vpt import VPT
from lightning_prompts.methods.zero_shot_clip import ZeroShotCLIP

__all__ = [
    "DAPT",
    "GPF",
    "LAE",
    "VPT",
    "CLIPPromptModule",
    "CoOp",
    "CoPrompt",
    "MaPLe",
    "PromptModule",
    "PromptTuning",
    "ZeroShotCLIP",
]
