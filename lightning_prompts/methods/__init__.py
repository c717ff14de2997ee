"""Prompt-tuning methods, one LightningModule each, and the family bases they build on.

Every method registers itself (:func:`lightning_prompts.registry.register_method`) and imports on first
use: ``from lightning_prompts.methods import CoOp`` loads only CoOp's module.
"""

from lightning_prompts.registry import lazy_exports

_BASES = {
    name: "lightning_prompts.methods.base"
    for name in (
        "PromptModule",
        "CLIPPromptModule",
        "ViTPromptModule",
        "TextPromptModule",
        "GraphPromptModule",
        "HeteroNodeModule",
    )
}
__getattr__, __dir__ = lazy_exports(__name__, _BASES)
