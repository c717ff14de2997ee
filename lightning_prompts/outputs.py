"""The output contract between methods and callbacks.

A method's ``forward`` returns a :class:`PromptOutput`. Callbacks read named fields from it and
declare the fields they need, so that a missing field is reported before training starts (see
:class:`lightning_prompts.callbacks.LossTerm`). Fields a method cannot compute stay ``None``;
which fields a method *can* fill is declared by its ``output_fields`` class attribute.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from torch import Tensor


@dataclass
class PromptOutput:
    """What a prompt method's forward pass returns.

    Attributes:
        logits: ``(B, C)`` class scores (already scaled, e.g. by CLIP's logit scale).
        image_features: ``(B, D)`` image embeddings (L2-normalised for CLIP methods).
        text_features: ``(C, D)`` class text embeddings (L2-normalised for CLIP methods).
        patch_tokens: ``(B, N, W)`` image patch tokens of the last layer (prompt tokens removed).
        pooled_features: ``(B, D)`` the feature the classification head reads (VPT, text, graph).
        frozen_image_features: image embeddings of the *unprompted* frozen model.
        frozen_text_features: class text embeddings of the *unprompted* frozen model.
        node_embeddings: ``(N, D)`` node embeddings of a GNN.
        foreground_image_features: image features of the foreground only (image × mask), as the method
            computes its ``image_features``.
        background_image_features: image features of the background only (image × (1 − mask)).
        background_text_features: ``(K, D)`` text features of background prompts (DAPT's "a clean
            origami {}." vocabulary), through the method's text path.
        extras: method-specific tensors under free names.
    """

    logits: Tensor
    image_features: Tensor | None = None
    text_features: Tensor | None = None
    patch_tokens: Tensor | None = None
    pooled_features: Tensor | None = None
    frozen_image_features: Tensor | None = None
    frozen_text_features: Tensor | None = None
    node_embeddings: Tensor | None = None
    foreground_image_features: Tensor | None = None
    background_image_features: Tensor | None = None
    background_text_features: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str) -> Any:
        """Return a field or an extra by name (``None`` if absent)."""
        if name in OUTPUT_FIELDS:
            return getattr(self, name)
        return self.extras.get(name)


#: Names of the typed fields of :class:`PromptOutput`.
OUTPUT_FIELDS: frozenset[str] = frozenset(f.name for f in fields(PromptOutput) if f.name != "extras")

#: Fields that cost an extra frozen forward pass; methods compute them only when asked.
FROZEN_FIELDS: frozenset[str] = frozenset({"frozen_image_features", "frozen_text_features"})
