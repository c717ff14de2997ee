"""Prefix tuning / P-tuning v2: learned keys and values in every layer of a frozen language model.

Prefix tuning (Li & Liang, ACL 2021) and P-tuning v2 (Liu et al., ACL 2022) give every transformer
layer ``m`` extra key/value pairs that every real token attends to; they are the "deep" counterpart of
:class:`~lightning_prompts.methods.PromptTuning`, which only changes the input. P-tuning v2 trains
them with the model's classification head on natural-language understanding tasks, which is what
``task="sequence-classification"`` does here; ``task="causal-lm"`` scores classes with a verbalizer.

The prefixes are a :class:`~lightning_prompts.prompts.prefix.DeepPrefix` whose block hook
(``attention_prefix``) :class:`~lightning_prompts.backbones.HFText` turns into a prefilled key/value
cache, the mechanism PEFT's ``PREFIX_TUNING`` and the P-tuning v2 code use (``past_key_values``):
text positions start after the prefix, and the attention mask gets ``m`` leading ones. On an encoder-decoder
(T5, BART) the prefixes go where Li & Liang put them on BART: the encoder's self-attention, the decoder's
self-attention and its cross-attention, each layer its own
(:mod:`~lightning_prompts.backbones.encoder_decoder_prefixes`); classes are scored at the decoder's first
step, and :meth:`PrefixTuning.generate` decodes from the start token.

:meth:`PrefixTuning.export_peft` writes a PEFT ``PREFIX_TUNING`` adapter (the reparameterisation
baked in, as PEFT saves it); PEFT gives the same logits for causal language models and, under
transformers 4.x, for sequence classification (``tests/methods/test_prefix_tuning.py``). Where we
deviate: the frozen model runs in eval mode (both references train with its dropout on); ``dropout`` on
the prefix (P-tuning v2 uses the model's hidden dropout, 0.1 for BERT) defaults to 0 as in PEFT.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from lightning_prompts.backbones.hf_text import HFText
from lightning_prompts.export.peft import export_peft_prefix_tuning
from lightning_prompts.methods.base import LabelWords, TextPromptModule
from lightning_prompts.prompts.prefix import DeepPrefix
from lightning_prompts.registry import register_method


@register_method(
    family="text",
    title="Prefix Tuning / P-tuning v2",
    paper="Li & Liang, ACL 2021 — Prefix-Tuning; Liu et al., ACL 2022 — P-Tuning v2",
    code="THUDM/P-tuning-v2",
    example={"num_virtual_tokens": 4},
)
class PrefixTuning(TextPromptModule):
    """Per-layer key/value prefixes on a frozen Hugging Face model.

    Args:
        backbone: the frozen :class:`~lightning_prompts.backbones.HFText` (its ``task`` picks the head).
        classnames: the classes, in label order (linked from the data module).
        num_virtual_tokens: prefix length ``m`` (P-tuning v2 uses 20 on SuperGLUE, up to 128 elsewhere).
        projection_hidden: hidden width of the reparameterisation MLP (P-tuning v2's ``prefix_projection``
            with ``prefix_hidden_size``, 512 in its scripts); ``None`` trains the prefixes directly.
        dropout: dropout on the prefixes while training.
        label_words, text_template, truncate: see :class:`~lightning_prompts.methods.base.TextPromptModule`.
        seed: seed of the prefix initialisation.
        init: the prefix's initialisation: ``"p-tuning-v2"``, as P-tuning v2 (and PANDA, built on it) gets it from
            ``from_pretrained``: table and projection weights N(0, the model's ``initializer_range``, 0.02 for
            BERT), zero biases; ``"peft"``: PEFT's ``nn.Embedding`` N(0, 1) and ``nn.Linear`` defaults, 50 times
            larger.
        **kwargs: ``optimizer``, ``lr_scheduler``, ``param_group_lr`` …; groups ``"prompt"`` and
            (sequence classification) ``"head"``. Default optimizer: AdamW, lr 5e-3, no weight decay
            (P-tuning v2's SuperGLUE scripts use 5e-3 to 1e-2).
    """

    default_optimizer: ClassVar[dict[str, Any]] = {
        "class_path": "torch.optim.AdamW",
        "init_args": {"lr": 5e-3, "weight_decay": 0.0},
    }

    def __init__(
        self,
        backbone: HFText,
        classnames: Sequence[str] | None = None,
        num_virtual_tokens: int = 20,
        projection_hidden: int | None = None,
        dropout: float = 0.0,
        label_words: LabelWords | None = None,
        text_template: str = "{text}",
        truncate: bool = False,
        seed: int = 0,
        init: Literal["p-tuning-v2", "peft"] = "p-tuning-v2",
        **kwargs: Any,
    ) -> None:
        if init not in ("p-tuning-v2", "peft"):
            raise ValueError(f"init must be 'p-tuning-v2' or 'peft', got {init!r}.")
        super().__init__(backbone, classnames, label_words, text_template, truncate, **kwargs)
        model: HFText = self.backbone
        heads, head_dim = model.key_value_heads
        init_std = None if init == "peft" else model.initializer_range
        self.prefix = DeepPrefix(
            num_virtual_tokens,
            model.prefix_layers,
            heads * head_dim,
            projection_hidden=projection_hidden,
            token_dim=model.hidden_size,
            dropout=dropout,
            generator=torch.Generator().manual_seed(seed),
            init_std=init_std,
        )

    @property
    def reserved_tokens(self) -> int:
        # the text's positions start after the prefix (the model counts the cache as past positions); an
        # encoder-decoder's encoder text keeps its own (T5's relative bias has no end, BART's positions do not move)
        return 0 if self.backbone.task == "seq2seq-lm" else self.prefix.num_tokens

    def prompt_parameters(self) -> list[nn.Parameter]:
        return list(self.prefix.parameters())

    def run_model(self, input_ids: Tensor, attention_mask: Tensor, output_hidden_states: bool) -> Any:
        return self.backbone.forward_embeddings(
            None, input_ids, attention_mask, output_hidden_states, hooks=self.prefix.hooks()
        )

    # -- generation ------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, texts: Sequence[str], decode: bool = True, **generate_kwargs: Any) -> list[str] | Tensor:
        """Continue each text (put into ``text_template``) after the trained prefixes with the frozen causal LM's
        own ``generate`` (greedy and 20 new tokens unless ``generate_kwargs`` say otherwise): the generated texts,
        or with ``decode=False`` their token ids ``(B, new)``, padded with the tokenizer's padding id. An
        encoder-decoder (T5, BART) reads each text in its prefixed encoder and its decoder writes the output from its
        start token, with its self- and cross-attention prefixes (:meth:`HFText.generate_after_prefixes`).

        On a causal LM the prefixes enter as the key/value cache generation starts from, as they enter the forward
        pass. The model's generation counts a given cache as input it already read, so the input holds that many
        placeholder ids ahead of the text, never read. Texts run in groups of one token length, unpadded: padding
        between the cache and a text changed what Gemma-3 generated (its sliding window counts the padded
        positions), where one length per call gives greedy decoding over our forward exactly (tested on GPT-2 and
        Gemma-3).
        """
        model: HFText = self.backbone
        hooks = self.prefix.hooks()  # the prefixes once (their MLP, when reparameterised), for every group
        if model.task == "seq2seq-lm":
            ids, mask = self.generation_batch(texts)
            new = model.generate_after_prefixes(hooks, ids, mask, **self.generation_options(generate_kwargs))
            return model.tokenizer.batch_decode(new, skip_special_tokens=True) if decode else new
        new = self.generate_from_caches(
            texts, lambda text_ids: model.prefix_cache(hooks, model.word_embeddings(text_ids[:, :1])), generate_kwargs
        )
        return model.tokenizer.batch_decode(new, skip_special_tokens=True) if decode else new

    # -- export ----------------------------------------------------------------------------------------
    def export_peft(self, directory: str | Path) -> Path:
        """Write a PEFT prefix-tuning adapter that ``PeftModel.from_pretrained(base, directory)`` loads.

        For sequence classification PEFT feeds the token ids, so the model's own head pools: an encoder's
        pooler (train with ``pooling="model"``), a decoder's last non-padding token (train with
        ``pooling="last"``). PEFT (0.21) runs prefix tuning only on classification models whose forward
        takes ``past_key_values``: those of transformers 4.x. transformers 5 renamed the argument to
        ``cache``, so there the adapter is written with a warning; it gives our logits in PEFT under
        transformers 4.57 (``tests/methods/test_prefix_tuning.py`` runs PEFT's own forward wherever
        PEFT can, and otherwise PEFT's loader and prompt through the same forward written out).

        Raises:
            NotImplementedError: a sequence-classification prompt trained with a pooling that PEFT's
                forward does not compute, or prefixes of an encoder-decoder (PEFT prefixes its decoder only);
                :meth:`export_prompt` writes them in our format.
        """
        model: HFText = self.backbone
        if model.task == "seq2seq-lm":
            raise NotImplementedError(
                f"PEFT's prefix tuning of sequence-to-sequence models prefixes the decoder's self-attention only, "
                f"where ours on {model.name} prefixes the encoder, the decoder and the cross-attention (Li & Liang's "
                f"three); PEFT could not load these prefixes. Use export_prompt() (our format) instead."
            )
        if model.task == "sequence-classification":
            peft_pooling = "last" if model.head_reads_last_token else "model"  # PEFT passes token ids to the head
            if model.pooling != peft_pooling:
                raise NotImplementedError(
                    f"PEFT's prefix tuning classifies with the model's own head on the token ids, which for "
                    f"{type(model.model).__name__} is pooling={peft_pooling!r}; this prompt was trained with "
                    f"pooling={model.pooling!r}. Use export_prompt() (our format) instead."
                )
            if not peft_runs_prefix_classification(model.model):
                warnings.warn(
                    f"{type(model.model).__name__}'s forward takes no `past_key_values` (transformers 5 calls it "
                    f"`cache`), so PEFT (0.21) refuses prefix tuning on it; the adapter written to {directory} "
                    f"loads and gives these logits in PEFT under transformers 4.57.",
                    UserWarning,
                    stacklevel=2,
                )
        heads, _ = model.key_value_heads
        with torch.no_grad():
            table = self.prefix.flat()
        return export_peft_prefix_tuning(
            directory, table, model.num_layers, heads, model.task, model.model_name_or_path, model.head_modules()
        )


def peft_runs_prefix_classification(model: nn.Module) -> bool:
    """Whether PEFT's prefix tuning can run on this sequence-classification model: it passes the prefixes as
    ``past_key_values`` to the model's forward, or to its transformer backbone's, and refuses otherwise."""

    def takes(module: nn.Module) -> bool:
        return "past_key_values" in inspect.signature(module.forward).parameters

    return takes(model) or takes(getattr(model, "base_model", model))
