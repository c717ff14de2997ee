"""IAPT — Instruction-Aware Prompt Tuning (Zhu et al., ACL 2024).

Only a few soft tokens (4), but generated **per input and per layer** from the input's own hidden
states: each layer has a generator — attention pooling over the input's tokens, a bottleneck, a
learnable rational activation (its own per layer, since layers prefer different activations) — and the
generated tokens replace the prompt slot's hidden states before that layer (deep-prompt style). We
found no released code; what we decided, and ``tests/methods/test_iapt.py`` pins:

* layer 0's tokens come from the input's word embeddings and are prepended as the slot (``n`` positions
  at the front, ``n`` ones in the attention mask); before block ``l >= 1`` the slot is replaced by layer
  ``l``'s tokens, generated from the hidden states of the text's real tokens entering block ``l``;
  ``slot_update="add"`` adds them to the slot's own states instead, in units of their RMS — for pre-norm
  decoders, where a replaced slot made the untrained model's features useless (Gemma-3-270M: see
  :class:`~lightning_prompts.prompts.instance_prompts.InstancePromptHook`);
* generator ``l``: ``rational_l(W_down,l · attnpool_l(H_l / rms(H_l)) + b)`` (each token divided by its RMS, so
  the code has one scale whatever the model's residual scale), then one up-projection shared by all
  layers (``bottleneck → n · d``), zero-initialised with a small random bias, so at initialisation every
  layer gets the same learned base prompt whatever the input;
* the rational activation is the "safe" Padé form ``P(x) / (1 + |Q(x)|)``, degrees 5 and 4, initialised to
  the identity.

The instruction is the whole templated input (for classification there is no response span).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from lightning_prompts.backbones.hf_text import HFText
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods.base import LabelWords, TextPromptModule
from lightning_prompts.prompts.instance_prompts import (
    InstancePromptGenerators,
    InstancePromptHook,
    RecordingInstancePromptHook,
    ReplayedSlots,
    check_slot_update,
)
from lightning_prompts.registry import register_method


@register_method(
    family="text",
    title="IAPT",
    paper="Zhu et al., ACL 2024 — IAPT: Instruction-Aware Prompt Tuning for Large Language Models",
    example={"num_virtual_tokens": 2, "bottleneck": 4},
)
class IAPT(TextPromptModule):
    """Soft tokens generated per input and per layer from the input's hidden states (see the module docstring).

    Args:
        backbone: the frozen :class:`~lightning_prompts.backbones.HFText`.
        classnames: the classes, in label order (linked from the data module).
        num_virtual_tokens: ``n``, tokens per layer (IAPT: 4).
        bottleneck: the generators' bottleneck width.
        slot_update: ``"replace"`` (the slot becomes layer ``l``'s tokens) or ``"add"`` (they are added to it,
            in units of its RMS: use it on pre-norm decoders such as Gemma or LLaMA).
        label_words, text_template, truncate: see :class:`~lightning_prompts.methods.base.TextPromptModule`.
        seed: seed of the initialisation.
        **kwargs: see :class:`~lightning_prompts.methods.PromptModule`; groups ``"prompt"`` (the generators)
            and ``"head"``. Default optimizer: AdamW, lr 1e-3.
    """

    default_optimizer: ClassVar[dict[str, Any]] = {
        "class_path": "torch.optim.AdamW",
        "init_args": {"lr": 1e-3, "weight_decay": 0.0},
    }

    def __init__(
        self,
        backbone: HFText,
        classnames: Sequence[str] | None = None,
        num_virtual_tokens: int = 4,
        bottleneck: int = 16,
        slot_update: Literal["replace", "add"] = "replace",
        label_words: LabelWords | None = None,
        text_template: str = "{text}",
        truncate: bool = False,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, classnames, label_words, text_template, truncate, **kwargs)
        model: HFText = self.backbone
        self.slot_update = check_slot_update(slot_update)  # before the Trainer starts
        generator = torch.Generator().manual_seed(seed)
        self.generators = InstancePromptGenerators(
            model.num_layers, model.hidden_size, num_virtual_tokens, bottleneck, generator
        )

    @property
    def reserved_tokens(self) -> int:
        return self.generators.num_tokens

    def prompt_parameters(self) -> list[nn.Parameter]:
        return list(self.generators.parameters())

    def run_model(self, input_ids: Tensor, attention_mask: Tensor, output_hidden_states: bool) -> Any:
        embeds = self.backbone.word_embeddings(input_ids)
        first = self.generators(0, embeds, attention_mask)  # layer 0: from the word embeddings
        hook = InstancePromptHook(self.generators, attention_mask, slot_update=self.slot_update)
        return self.backbone.forward_embeddings(first, input_ids, attention_mask, output_hidden_states, hooks=hook)

    # -- generation ------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, texts: Sequence[str], decode: bool = True, **generate_kwargs: Any) -> list[str] | Tensor:
        """Continue each text (put into ``text_template``, the instruction) after the tokens its instruction
        generates, with the frozen causal LM's own ``generate`` (greedy and 20 new tokens unless ``generate_kwargs``
        say otherwise): the generated texts, or with ``decode=False`` their token ids ``(B, new)``.

        Every layer's tokens are generated from the instruction alone, as in the forward pass, and stay fixed while
        the answer is written (the generated tokens are not instruction): the key/value cache of ``[slot;
        instruction]`` with the per-layer tokens, up to the instruction's last token, is built first (two forward
        passes, see :meth:`_instruction_cache`), and the model's generation reads it and goes on from there.
        Tested against greedy decoding written out over the forward pass with the instruction as the generators'
        input (GPT-2 and Gemma-3).

        Raises:
            ConfigurationError: the backbone is not a causal language model.
        """
        model: HFText = self.backbone
        if model.task != "causal-lm":
            raise ConfigurationError(
                f"IAPT generates by continuing texts with a causal language model; {model.name} is loaded for "
                f"{model.task!r}."
            )
        new = self.generate_from_caches(texts, self._instruction_cache, generate_kwargs)
        return model.tokenizer.batch_decode(new, skip_special_tokens=True) if decode else new

    def _instruction_cache(self, text_ids: Tensor) -> tuple[Any, int]:
        """The key/value cache of ``[slot; instruction]`` with the per-layer tokens, less the instruction's last
        position (generation runs it, reading the rest), and the slot's length.

        Two passes: the whole instruction generates every layer's tokens (recorded), then the instruction less its
        last token runs with those tokens in the slot. Under the causal mask its cache is the first pass's less one
        position, built without cutting a cache (a sliding-window layer cannot give back positions it dropped)."""
        model: HFText = self.backbone
        mask = torch.ones_like(text_ids)
        first = self.generators(0, model.word_embeddings(text_ids), mask)
        recorder = RecordingInstancePromptHook(self.generators, mask, slot_update=self.slot_update)
        model.forward_embeddings(first, text_ids, mask, hooks=recorder)
        output = model.forward_embeddings(first, text_ids[:, :-1], mask[:, :-1], hooks=ReplayedSlots(recorder.slots))
        cache = output.get("cache")  # transformers 5's name; 4.x: past_key_values
        cache = output.get("past_key_values") if cache is None else cache
        if cache is None:
            raise NotImplementedError(f"{model.name} returned no key/value cache to generate from.")
        return cache, self.reserved_tokens
