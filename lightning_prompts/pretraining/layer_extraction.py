"""A smaller model made of some of a Hugging Face model's transformer layers (POST's student initialisation).

POST's stage 1 starts the small model from the large one's own layers: its ``extract_distill_model.py``
keeps the first and the last few blocks (RoBERTa-base: 3 + 3 of 12; RoBERTa-large: 6 + 6 of 24; GPT2-XL:
2 + 2 of 48) with the embeddings and the output head, then distils. :func:`keep_layers` does the same to any
model whose blocks sit in one ``nn.ModuleList`` (BERT/RoBERTa ``encoder.layer``, GPT-2 ``h``, Llama/Gemma
``layers``), and keeps the model's config consistent with what remains, so ``save_pretrained`` writes a model
that ``from_pretrained`` rebuilds unchanged: the layer count, Gemma's per-layer attention types
(``layer_types``: sliding-window or full) and each attention module's ``layer_idx`` (its slot in a key/value
cache).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from lightning_prompts.backbones.hf_text import transformer_layers


def layers_to_keep(total: int, first: int, last: int) -> list[int]:
    """Indices of the first ``first`` and the last ``last`` of ``total`` layers, in order."""
    if first < 0 or last < 0 or first + last < 1:
        raise ValueError(f"keep at least one layer: first={first}, last={last}.")
    if first + last >= total:
        raise ValueError(f"keeping {first} + {last} of {total} layers leaves the model as it is; keep fewer.")
    return [*range(first), *range(total - last, total)]


def keep_layers(model: nn.Module, indices: Sequence[int]) -> nn.Module:
    """Keep only the transformer layers ``indices`` (in place) and make the config say so; returns ``model``.

    Everything else (embeddings, final norm, output head) stays as it is, as in POST's extraction.
    """
    layers = transformer_layers(model)
    total = len(layers)
    indices = list(indices)
    if not indices or sorted(set(indices)) != indices or indices[0] < 0 or indices[-1] >= total:
        raise ValueError(f"layer indices must be increasing, distinct and within 0..{total - 1}, got {indices}.")
    kept = [layers[i] for i in indices]
    # replace the list's contents in place: the parent keeps its attribute, whatever its name
    for _ in range(total):
        del layers[0]
    layers.extend(kept)
    config = model.config
    config.num_hidden_layers = len(kept)  # GPT-2's config maps it to n_layer
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == total:
        config.layer_types = [layer_types[i] for i in indices]
    for new_index, layer in enumerate(kept):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    return model
