"""lightning_prompts: prompt tuning for frozen pre-trained models, as Lightning modules.

Every registered method, backbone, data module, callback and evaluator is available here by its
class name (``lightning_prompts.CoOp``) and in YAML recipes by its short name
(``class_path: CoOp``). Names import on first use: ``import lightning_prompts`` loads neither torch
nor Lightning, and ``lightning_prompts.list_methods()`` lists what exists without importing it.
"""

from __future__ import annotations

from typing import Any

from lightning_prompts import registry
from lightning_prompts.registry import list_methods

__version__ = "0.2.0.dev0"

#: Public names that are infrastructure rather than registered classes (bases, outputs, helpers).
_INFRASTRUCTURE = {
    "PromptModule": "lightning_prompts.methods.base",
    "CLIPPromptModule": "lightning_prompts.methods.base",
    "ViTPromptModule": "lightning_prompts.methods.base",
    "TextPromptModule": "lightning_prompts.methods.base",
    "GraphPromptModule": "lightning_prompts.methods.base",
    "PromptOutput": "lightning_prompts.outputs",
    "LossTerm": "lightning_prompts.callbacks.loss_term",
    "Backbone": "lightning_prompts.backbones.base",
    "Synthetic": "lightning_prompts.data.image_datamodule",
    "SyntheticText": "lightning_prompts.data.text",
    "WarmupCosineLR": "lightning_prompts.optim.schedulers",
    "ExponentialDecayLR": "lightning_prompts.optim.schedulers",
    "GradientRegulator": "lightning_prompts.optim.gradient_regulator",
}

__getattr__, _registered_names = registry.lazy_exports(__name__, _INFRASTRUCTURE)


def __dir__() -> list[str]:
    return sorted({*globals(), *_registered_names()})


__all__: Any = ["list_methods", "registry", "__version__", *_registered_names()]
