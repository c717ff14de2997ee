"""Frozen pre-trained models behind the seams prompt methods need (one file per family).

Every backbone registers itself and imports on first use; the upstream libraries (open_clip, timm,
transformers, torch_geometric) are imported only when a backbone is built, so installing one
family's extra is enough to use it.
"""

from lightning_prompts.registry import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "Backbone": "lightning_prompts.backbones.base",
        "build_backbone": "lightning_prompts.backbones.base",
        "ImageEncoding": "lightning_prompts.backbones.vision_language",
        "VisionLanguageBackbone": "lightning_prompts.backbones.vision_language",
        "BlockHook": "lightning_prompts.backbones.hooks",
        "BlockContext": "lightning_prompts.backbones.hooks",
        "AttentionPrefix": "lightning_prompts.backbones.hooks",
        "PromptTokens": "lightning_prompts.backbones.hooks",
    },
)
