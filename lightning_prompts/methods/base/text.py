"""``TextPromptModule``: what every prompt method on a frozen Hugging Face language model shares.

* **inputs**: raw texts from the data module are put into ``text_template`` and tokenized in
  ``on_before_batch_transfer`` (on the CPU; data modules stay model-agnostic), right-padded, with
  room left for the method's :attr:`~TextPromptModule.reserved_tokens` soft tokens;
* **context length**: before training, every text of every split is checked to fit the context with
  the soft tokens (the data module's ``split_texts``), so a too-long text fails in seconds, not in epoch 3;
* **scoring**: sequence classification trains the model's own classification head (resized to the
  classes, PEFT's ``modules_to_save``); a causal LM scores each class by the next-token logit of its
  label word at the last real position (a verbalizer), or by the mean logit of several words (POST's);
* **parameter groups**: ``"prompt"`` (:meth:`~TextPromptModule.prompt_parameters`) and ``"head"``;
* **generation** (causal LMs and encoder-decoders): :meth:`~TextPromptModule.generate` writes after the prompt.

A method implements :meth:`~TextPromptModule.reserved_tokens`, :meth:`~TextPromptModule.prompt_parameters`
and :meth:`~TextPromptModule.prompt_inputs` (the soft tokens and input offset its prompt puts into the model), or
:meth:`~TextPromptModule.run_model` where the prompt enters inside the layers.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lightning_prompts.backbones.hf_text import HFText
from lightning_prompts.batch import ATTENTION_MASK, INPUT_IDS, TEXT
from lightning_prompts.data.protocols import TextSplits, provided
from lightning_prompts.errors import ConfigurationError, ContextLengthError
from lightning_prompts.methods.base.module import PromptModule
from lightning_prompts.outputs import PromptOutput
from lightning_prompts.prompts.soft_prompt import TEXT_INITS, SoftPrompt, SoftPromptInit, repeat_to_length

#: Per class, one label word or several whose next-token logits are averaged (``[["bad", "awful"], ["good"]]``).
LabelWords = Sequence[str | Sequence[str]]

# Tokenizing in the module's on_before_batch_transfer is the design (data stays model-agnostic).
warnings.filterwarnings("ignore", message=r"You have overridden `on_before_batch_transfer` in `LightningModule`")


class TextPromptModule(PromptModule):
    """Base of text prompt methods (see the module docstring).

    Args:
        backbone: the frozen :class:`~lightning_prompts.backbones.HFText` (its ``task`` picks the head).
        classnames: the classes, in label order (linked from the data module).
        label_words: causal LM only: one word per class whose next-token logit scores it, or a list of words
            per class scored by the mean of their next-token logits (POST's verbalizer,
            ``[[terrible, negative, bad, poor, awful], [positive, good, great, awesome, brilliant, amazing]]``;
            default: the class names). A word is read as it follows a space, by its first token.
        text_template: how an input is presented, e.g. ``"Review: {text} Sentiment:"``.
        truncate: cut texts that do not fit the context (otherwise too long a text is an error before training).
        **kwargs: see :class:`~lightning_prompts.methods.PromptModule`.
    """

    produced_fields: ClassVar[frozenset[str]] = frozenset({"logits", "pooled_features"})

    def __init__(
        self,
        backbone: HFText,
        classnames: Sequence[str] | None = None,
        label_words: LabelWords | None = None,
        text_template: str = "{text}",
        truncate: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, classnames, **kwargs)
        if not self.classnames:
            raise ValueError(f"{type(self).__name__} needs classnames (the CLI links them from the data module).")
        if "{text}" not in text_template:
            raise ValueError(f"text_template must contain '{{text}}', got {text_template!r}.")
        model: HFText = self.backbone
        self.text_template, self.truncate = text_template, truncate
        if model.task == "sequence-classification":
            model.resize_head(len(self.classnames))
            for head in model.head_modules().values():
                head.requires_grad_(True)
            self.label_word_ids: list[int] = []
            self.label_word_counts: list[int] = []
        else:
            given = list(label_words) if label_words else [name.replace("_", " ") for name in self.classnames]
            if len(given) != len(self.classnames):
                raise ValueError(f"{len(given)} label words for {len(self.classnames)} classes.")
            per_class = [[entry] if isinstance(entry, str) else list(entry) for entry in given]
            if not all(per_class):
                raise ValueError(f"Every class needs a label word; got {given}.")
            words = [word for class_words in per_class for word in class_words]
            #: every label word's first token, class by class (``label_word_counts`` words each)
            self.label_word_ids = model.label_word_ids(words)
            self.label_word_counts = [len(class_words) for class_words in per_class]
            start = [0, *itertools.accumulate(self.label_word_counts)]
            tokens = [frozenset(self.label_word_ids[a:b]) for a, b in zip(start, start[1:])]
            if len(set(tokens)) != len(tokens):  # two classes would always score the same
                raise ValueError(
                    f"Label words {given} do not give the classes distinct tokens in {model.name} (a word is read "
                    "by its first token as it follows a space)."
                )

    # -- what a text method implements ---------------------------------------------------------------
    @property
    def reserved_tokens(self) -> int:
        """Input positions the method's prompt occupies (texts get the rest of the context)."""
        return 0

    @property
    def max_text_tokens(self) -> int:
        """Longest tokenized text (special tokens included) the method feeds: the context less the prompt's
        positions, unless the method fixes its own text length (DePT)."""
        return self.backbone.max_length - self.reserved_tokens

    def soft_prompt(
        self, num_tokens: int, init: SoftPromptInit, init_text: str | None, generator: torch.Generator | None
    ) -> SoftPrompt:
        """Soft tokens of the backbone's width (see :class:`~lightning_prompts.prompts.soft_prompt.SoftPrompt`).

        ``init="text"`` starts from ``init_text`` tokenized with the model's special tokens, as PEFT does;
        ``init="text_without_special_tokens"`` from its words alone. On a decoder whose tokenizer adds a
        beginning-of-sequence token, PEFT's way repeats that token inside a prompt longer than the text: DePT on
        Gemma-3-270M (19 tokens, BOS at positions 0 and 10; docs/text_testbed.md) reached 53.4 ± 2.9 that way
        and 67.6 ± 6.9 without the special tokens (3 seeds, higher on each), and EPT (8 tokens, BOS at position 0
        only) 67.6 ± 2.9 — so ``"text"`` warns when the token recurs after the prompt's first position."""
        if init not in TEXT_INITS or not init_text:
            return SoftPrompt(num_tokens, self.backbone.word_embeddings, init, None, generator)
        tokenizer = self.backbone.tokenizer
        ids = tokenizer(init_text, add_special_tokens=init == "text")["input_ids"]
        bos = getattr(tokenizer, "bos_token_id", None)  # None matches no id: tokenizers without BOS never warn
        inside = [i for i, token in enumerate(repeat_to_length(ids, num_tokens)) if i and token == bos] if ids else []
        if inside:
            rank_zero_warn(
                f"init='text' repeats the tokenizer's beginning-of-sequence token inside the {num_tokens}-token "
                f"prompt (positions {inside}), as PEFT does; init='text_without_special_tokens' initialises from "
                "the words alone (DePT on Gemma-3-270M: 67.6 % against 53.4 % over 3 seeds, docs/text_testbed.md)."
            )
        return SoftPrompt(num_tokens, self.backbone.word_embeddings, init, ids, generator)

    def prompt_parameters(self) -> list[nn.Parameter]:
        """The prompt's trainable parameters (the ``"prompt"`` group)."""
        return []

    def prompt_inputs(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """What the method's prompt puts into the model for a batch of right-padded tokens ``(B, T)``: soft tokens
        ``(n, H)`` or ``(B, n, H)`` ahead of the text, and an offset ``(T, H)`` added to the text's word embeddings
        (DePT's), either ``None``. :meth:`run_model` and :meth:`generate` read the prompt here."""
        return None, None

    def run_model(self, input_ids: Tensor, attention_mask: Tensor, output_hidden_states: bool) -> Any:
        """The backbone's output (``.logits``; ``.hidden_states`` when asked) with the method's prompt: by default
        :meth:`prompt_inputs`; a method whose prompt enters the model otherwise (per-layer hooks) overrides this."""
        prompt, offset = self.prompt_inputs(input_ids, attention_mask)
        return self.backbone.forward_embeddings(
            prompt, input_ids, attention_mask, output_hidden_states, input_offset=offset
        )

    # -- generation ------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, texts: Sequence[str], decode: bool = True, **generate_kwargs: Any) -> list[str] | Tensor:
        """Generate after the method's prompt with the frozen model's own ``generate`` (greedy and 20 new tokens
        unless ``generate_kwargs`` say otherwise, e.g. ``max_new_tokens=5``, ``do_sample=True``): the generated
        texts, or with ``decode=False`` their token ids ``(B, new)``. A causal LM continues each text (put into
        ``text_template``); an encoder-decoder (T5) reads it in its encoder and its decoder writes the output, as
        DePT's official evaluation decodes the label text.

        The prompt is :meth:`prompt_inputs` of the texts, as the forward pass reads it; an input offset (DePT's)
        is added to the text's positions, not to the generated tokens (the official DePT adds it to the encoder's
        input only). Every text of a batch is continued as it would be alone (:meth:`HFText.generate_after_prompt`).

        Raises:
            ConfigurationError: the backbone has no language-model head (sequence classification).
            NotImplementedError: the method feeds its prompt through its own :meth:`run_model` (tokens inside the
                layers), which this generation does not reproduce, and has no ``generate`` of its own (PrefixTuning
                and IAPT have, through :meth:`generate_from_caches`).
        """
        if type(self).run_model is not TextPromptModule.run_model:
            raise NotImplementedError(
                f"{type(self).__name__} feeds its prompt to the model through its own run_model (tokens inside the "
                "layers); generate continues texts after a prompt at the input only."
            )
        model: HFText = self.backbone
        options = self.generation_options(generate_kwargs)
        ids, mask = self.generation_batch(texts)
        prompt, offset = self.prompt_inputs(ids, mask)
        generated = model.generate_after_prompt(prompt, ids, mask, offset, **options)
        return model.tokenizer.batch_decode(generated, skip_special_tokens=True) if decode else generated

    def generation_batch(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """The texts' token ids and attention mask on the module's device, cut to the longest text (padding past
        every text is masked): what generation reads."""
        tokens = self.tokenize(texts)
        longest = int(tokens[ATTENTION_MASK].sum(dim=1).max())
        ids, mask = (tokens[key][:, :longest].to(self.device) for key in (INPUT_IDS, ATTENTION_MASK))
        return ids, mask

    def generate_from_caches(
        self,
        texts: Sequence[str],
        start: Callable[[Tensor], tuple[Any, int]],
        generate_kwargs: dict[str, Any],
    ) -> Tensor:
        """For a method whose prompt enters a causal LM's key/value cache (prefixes, IAPT's per-layer tokens): the
        new token ids ``(B, new)``, padded with the tokenizer's padding id.

        Texts run in groups of one token length, unpadded: padding between a cache and a text changed what Gemma-3
        (sliding window) generated. ``start(text_ids)`` gives a group's cache and how many positions ahead of the
        text it holds; the model's generation counts the cache as input it already read, so the input holds that
        many placeholder ids ahead of the text (never read) and generation runs the positions past the cache.
        """
        model: HFText = self.backbone
        options = self.generation_options(generate_kwargs)
        expand = model.generation_copies(options)
        returns = options.get("num_return_sequences", model.model.generation_config.num_return_sequences) or 1
        tokens = self.tokenize(texts)
        ids, lengths = tokens[INPUT_IDS].to(self.device), tokens[ATTENTION_MASK].sum(dim=1).tolist()
        pad = model.tokenizer.pad_token_id
        rows: list[Tensor | None] = [None] * len(lengths)  # per text, its `returns` sequences
        for length in sorted(set(lengths)):
            group = [i for i, n in enumerate(lengths) if n == length]
            text_ids = ids[group, :length]
            cache, ahead = start(text_ids)
            if expand > 1:
                cache.batch_repeat_interleave(expand)
            input_ids = torch.cat([text_ids.new_full((len(group), ahead), pad), text_ids], dim=1)
            with warnings.catch_warnings():  # transformers 5 renames generate's argument to `cache` (4.x lacks it)
                warnings.filterwarnings("ignore", message=r"`past_key_values` is deprecated")
                generated = model.model.generate(
                    input_ids=input_ids, attention_mask=torch.ones_like(input_ids), past_key_values=cache, **options
                )
            for sequences, index in zip(generated[:, input_ids.shape[1] :].split(returns), group):
                rows[index] = sequences
        new = [sequence for sequences in rows for sequence in sequences]  # the texts' order, returns consecutive
        return torch.nn.utils.rnn.pad_sequence(new, batch_first=True, padding_value=pad)

    # -- parameters ------------------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        groups = [{"name": "prompt", "params": list(self.prompt_parameters())}]
        head = [p for module in self.backbone.head_modules().values() for p in module.parameters()]
        if head:
            groups.append({"name": "head", "params": head})
        return groups

    # -- inputs ----------------------------------------------------------------------------------------
    def format_texts(self, texts: Sequence[str], template: str | None = None) -> list[str]:
        """The texts put into ``template`` (default: the method's ``text_template``)."""
        template = self.text_template if template is None else template
        return [template.format(text=text) for text in texts]

    def generation_options(self, generate_kwargs: dict[str, Any]) -> dict[str, Any]:
        """For a method's ``generate``: the model's ``generate`` arguments, greedy with 20 new tokens and the
        tokenizer's padding id unless ``generate_kwargs`` say otherwise; a model without a language-model head
        (loaded for sequence classification) is refused, and so is ``max_length`` (use ``max_new_tokens``)."""
        model: HFText = self.backbone
        if model.task not in ("causal-lm", "seq2seq-lm"):
            raise ConfigurationError(
                f"generate needs a causal or sequence-to-sequence language model; {model.name} is loaded for "
                f"{model.task!r}."
            )
        if "max_length" in generate_kwargs:  # it would count the prompt's positions, which differ by method
            raise ConfigurationError(
                "generate bounds the output by max_new_tokens (default 20); max_length would count the prompt's "
                "positions too, which each method places differently."
            )
        return {
            "max_new_tokens": 20,
            "do_sample": False,
            "pad_token_id": model.tokenizer.pad_token_id,
            **generate_kwargs,
        }

    def tokenize(self, texts: Sequence[str], template: str | None = None) -> dict[str, Tensor]:
        """Template and tokenize raw texts, leaving room for the soft tokens."""
        reserve = self.backbone.max_length - self.max_text_tokens
        return self.backbone.tokenize(self.format_texts(texts, template), reserve=reserve, truncate=self.truncate)

    def text_lengths(self, texts: Sequence[str]) -> list[int]:
        """Tokens each raw text occupies in the input (template and special tokens included, truncation
        applied): :class:`~lightning_prompts.data.protocols.TokenCounter`, which text data modules group
        batches by."""
        lengths = self.backbone.token_lengths(self.format_texts(texts))
        return [min(length, self.max_text_tokens) for length in lengths] if self.truncate else lengths

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # tokenization happens here, on the CPU, so data modules stay model-agnostic
        if isinstance(batch, dict) and TEXT in batch and INPUT_IDS not in batch:
            batch = {**batch, **self.tokenize(batch[TEXT])}
        return batch

    def check_ready(self, stage: str, callbacks: Any, datamodule: Any | None) -> None:
        super().check_ready(stage, callbacks, datamodule)
        reserve = self.reserved_tokens
        if reserve > self.backbone.max_length - 2:  # no room for any text, truncated or not
            raise ContextLengthError(
                f"{type(self).__name__} reserves {reserve} positions for its prompt, but {self.backbone.name} has a "
                f"context of {self.backbone.max_length}: use fewer than {self.backbone.max_length - 1} soft tokens."
            )
        self.check_text_lengths(datamodule, stage)

    def check_text_lengths(self, datamodule: Any | None, stage: str, template: str | None = None) -> None:
        """Raise :class:`ContextLengthError` now if a text of the data module's splits for ``stage``, put into
        ``template`` (default: ``text_template``), would not fit the context (unless the method truncates)."""
        splits = provided(datamodule, TextSplits)
        if self.truncate or splits is None:
            return
        limit = self.max_text_tokens
        for split, texts in splits.split_texts(stage).items():  # fail before training, not in epoch 3
            lengths = self.backbone.token_lengths(self.format_texts(texts, template))
            worst = max(range(len(lengths)), key=lengths.__getitem__, default=None)
            if worst is not None and lengths[worst] > limit:
                fix = (
                    "set truncate=True" if limit >= 2 else f"use fewer than {self.backbone.max_length - 1} soft tokens"
                )
                where = f" in template {template!r}" if template else ""
                raise ContextLengthError(
                    f"{split} text {worst} has {lengths[worst]} tokens{where}; {type(self).__name__} feeds texts "
                    f"of at most {limit} tokens (of the context length {self.backbone.max_length} of "
                    f"{self.backbone.name}). Shorten the texts or {fix}. Text starts: {texts[worst][:80]!r}"
                )

    # -- forward -------------------------------------------------------------------------------------
    def forward(self, input_ids: Tensor, attention_mask: Tensor, fields: frozenset[str] = frozenset()) -> PromptOutput:
        """Class logits ``(B, C)`` for tokenized inputs (see :meth:`tokenize`)."""
        want_pooled = "pooled_features" in fields
        output = self.run_model(input_ids, attention_mask, want_pooled)
        logits = output.logits
        if self.label_word_ids:
            logits = logits[:, self.label_word_ids]
            if len(self.label_word_ids) != len(self.label_word_counts):  # several words per class: their mean
                logits = torch.stack([part.mean(dim=1) for part in logits.split(self.label_word_counts, 1)], 1)
        pooled = output.hidden_states[-1][:, 0] if want_pooled else None
        return PromptOutput(logits=logits, pooled_features=pooled)

    def forward_texts(
        self, texts: Sequence[str], template: str | None = None, fields: frozenset[str] = frozenset()
    ) -> PromptOutput:
        """The method's output for raw texts put into ``template`` (default: ``text_template``); loss terms
        use it to run the same batch under another instruction."""
        tokens = {key: value.to(self.device) for key, value in self.tokenize(texts, template).items()}
        return self(tokens[INPUT_IDS], tokens[ATTENTION_MASK], fields)

    def forward_batch(self, batch: Any, fields: frozenset[str] = frozenset()) -> PromptOutput:
        if INPUT_IDS not in batch:
            batch = self.on_before_batch_transfer(batch, 0)
            batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        return self(batch[INPUT_IDS], batch[ATTENTION_MASK], fields)
