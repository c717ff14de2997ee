"""Reusable regularisers and training dynamics that plug into any method whose outputs fit.

Every callback registers itself and imports on first use.
"""

from lightning_prompts.registry import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {"LossTerm": "lightning_prompts.callbacks.loss_term"})
