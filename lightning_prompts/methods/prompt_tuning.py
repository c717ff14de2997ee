"""Prompt Tuning (Lester, Al-Rfou, Constant — "The Power of Scale for Parameter-Efficient Prompt
Tuning", EMNLP 2021; the reference implementation most users know is HF PEFT's
``PROMPT_TUNING``).

A few soft tokens are prepended to the input embeddings of a frozen language model, and the
attention mask is extended with ones for them; only the soft tokens are trained (plus the
classification head for sequence classification, PEFT's ``modules_to_save``).

* **sequence classification** (encoders such as BERT/MiniLM): the model's own pooler and
  classifier score the sequence, exactly as ``PeftModelForSequenceClassification`` does;
* **causal LM with a verbalizer**: the class score is the next-token logit of each class's label
  word at the last input token (``text_template`` can end with a cue such as ``"Sentiment:"``).

:meth:`PromptTuning.export_peft` writes a PEFT adapter folder that ``PeftModel.from_pretrained``
loads and that gives the same logits (``tests/test_prompt_tuning.py`` checks this).

Where we deviate: the frozen model runs in eval mode (PEFT trains with the base model's dropout
on); ``"random"`` init is Lester's uniform(-0.5, 0.5), not PEFT's N(0, 1).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from lightning_prompts.backbones.hf_text import HFText
from lightning_prompts.errors import ContextLengthError
from lightning_prompts.export.peft import export_peft_prompt_tuning
from lightning_prompts.methods.base import PromptModule
from lightning_prompts.outputs import PromptOutput
from lightning_prompts.prompts.soft_prompt import SoftPrompt, SoftPromptInit

# Tokenizing in the module's on_before_batch_transfer is the design (data stays model-agnostic).
warnings.filterwarnings("ignore", message=r"You have overridden `on_before_batch_transfer` in `LightningModule`")


class PromptTuning(PromptModule):
    """Soft prompt tuning of a frozen Hugging Face model.

    Args:
        backbone: the frozen :class:`~lightning_prompts.backbones.HFText` (its ``task`` picks the head).
        classnames: the classes, in label order (linked from the data module).
        num_virtual_tokens: number of soft tokens.
        init: ``"text"`` (from ``init_text``), ``"vocab"`` (sampled token embeddings) or ``"random"``.
        init_text: the text for ``init="text"`` (tokenized with the model's special tokens, as PEFT does).
        label_words: causal LM only: one word per class whose next-token logit scores it
            (default: the class names).
        text_template: how an input is presented, e.g. ``"Review: {text} Sentiment:"``.
        truncate: cut texts that do not fit the context (otherwise too long a text is an error at setup).
        seed: seed of the ``"vocab"``/``"random"`` initialisation.
        **kwargs: ``optimizer``, ``lr_scheduler``, ``lr_scheduler_interval``, ``param_group_lr``; see
            :class:`~lightning_prompts.methods.PromptModule`; groups ``"prompt"`` and (sequence
            classification) ``"head"``. Default optimizer: AdamW, lr 0.3, no weight decay (prompt
            tuning needs learning rates far above fine-tuning's).
    """

    output_fields: ClassVar[frozenset[str]] = frozenset({"logits", "pooled_features"})
    default_optimizer: ClassVar[dict[str, Any]] = {
        "class_path": "torch.optim.AdamW",
        "init_args": {"lr": 0.3, "weight_decay": 0.0},
    }

    def __init__(
        self,
        backbone: HFText,
        classnames: Sequence[str] | None = None,
        num_virtual_tokens: int = 20,
        init: SoftPromptInit = "vocab",
        init_text: str | None = None,
        label_words: Sequence[str] | None = None,
        text_template: str = "{text}",
        truncate: bool = False,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, classnames, **kwargs)
        if not self.classnames:
            raise ValueError("PromptTuning needs classnames (the CLI links them from the data module).")
        if "{text}" not in text_template:
            raise ValueError(f"text_template must contain '{{text}}', got {text_template!r}.")
        model: HFText = self.backbone
        self.text_template, self.truncate = text_template, truncate
        init_ids = model.tokenizer(init_text)["input_ids"] if init == "text" and init_text else None
        generator = torch.Generator().manual_seed(seed)
        self.prompt = SoftPrompt(num_virtual_tokens, model.word_embeddings, init, init_ids, generator)
        if model.task == "sequence-classification":
            model.resize_head(len(self.classnames))
            for head in model.head_modules().values():
                head.requires_grad_(True)
            self.label_word_ids: list[int] = []
        else:
            words = list(label_words) if label_words else [name.replace("_", " ") for name in self.classnames]
            if len(words) != len(self.classnames):
                raise ValueError(f"{len(words)} label words for {len(self.classnames)} classes.")
            self.label_word_ids = model.label_word_ids(words)
            if len(set(self.label_word_ids)) != len(words):
                raise ValueError(f"Label words {words} do not start with distinct tokens in {model.name}.")

    # -- parameters --------------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        groups = [{"name": "prompt", "params": [self.prompt.embedding]}]
        head = [p for module in self.backbone.head_modules().values() for p in module.parameters()]
        if head:
            groups.append({"name": "head", "params": head})
        return groups

    # -- inputs ----------------------------------------------------------------------------------------
    def format_texts(self, texts: Sequence[str]) -> list[str]:
        return [self.text_template.format(text=text) for text in texts]

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Template and tokenize raw texts, leaving room for the soft tokens."""
        return self.backbone.tokenize(self.format_texts(texts), reserve=self.prompt.num_tokens, truncate=self.truncate)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # tokenization happens here, on the CPU, so data modules stay model-agnostic
        if isinstance(batch, dict) and "text" in batch and "input_ids" not in batch:
            batch = {**batch, **self.tokenize(batch["text"])}
        return batch

    def check_ready(self, stage: str, callbacks: Any, datamodule: Any | None) -> None:
        super().check_ready(stage, callbacks, datamodule)
        if self.truncate or not hasattr(datamodule, "split_texts"):
            return
        limit = self.backbone.max_length - self.prompt.num_tokens
        for split, texts in datamodule.split_texts(stage).items():  # fail before training, not in epoch 3
            lengths = self.backbone.token_lengths(self.format_texts(texts))
            worst = max(range(len(lengths)), key=lengths.__getitem__, default=None)
            if worst is not None and lengths[worst] > limit:
                raise ContextLengthError(
                    f"{split} text {worst} has {lengths[worst]} tokens; with {self.prompt.num_tokens} soft tokens "
                    f"that exceeds the context length {self.backbone.max_length} of {self.backbone.name}. "
                    f"Shorten the texts or set truncate=True. Text starts: {texts[worst][:80]!r}"
                )

    # -- forward -------------------------------------------------------------------------------------
    def forward(self, input_ids: Tensor, attention_mask: Tensor, fields: frozenset[str] = frozenset()) -> PromptOutput:
        """Class logits ``(B, C)`` for tokenized inputs (see :meth:`tokenize`)."""
        want_pooled = "pooled_features" in fields
        output = self.backbone.forward_embeddings(self.prompt(), input_ids, attention_mask, want_pooled)
        logits = output.logits
        if self.label_word_ids:
            logits = logits[:, self.label_word_ids]
        pooled = output.hidden_states[-1][:, 0] if want_pooled else None
        return PromptOutput(logits=logits, pooled_features=pooled)

    def forward_batch(self, batch: Any, fields: frozenset[str] = frozenset()) -> PromptOutput:
        if "input_ids" not in batch:
            batch = self.on_before_batch_transfer(batch, 0)
            batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        return self(batch["input_ids"], batch["attention_mask"], fields)

    # -- export ----------------------------------------------------------------------------------------
    def export_peft(self, directory: str | Path) -> Path:
        """Write a PEFT prompt-tuning adapter that ``PeftModel.from_pretrained(base, directory)`` loads."""
        model: HFText = self.backbone
        if model.pooling != "model":
            raise NotImplementedError(
                f"PEFT scores sequences with the model's own pooling; this prompt was trained with "
                f"pooling={model.pooling!r}, which PEFT cannot reproduce. Use export_prompt() instead."
            )
        return export_peft_prompt_tuning(
            directory,
            self.prompt.embedding,
            model.model.config,
            model.task,
            model.model_name_or_path,
            model.head_modules(),
        )
