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
loads and that gives the same logits (``tests/methods/test_prompt_tuning.py`` checks this).
On a causal LM, :meth:`~lightning_prompts.methods.base.TextPromptModule.generate` continues texts after the soft
prompt; it is pinned to greedy decoding over PEFT's forward on the exported adapter. PEFT's own ``generate`` on that
adapter gave other tokens from the third on (peft 0.21.2, transformers 5.25).

Where we deviate: the frozen model runs in eval mode (PEFT trains with the base model's dropout
on); ``"random"`` init is Lester's uniform(-0.5, 0.5), not PEFT's N(0, 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lightning_prompts.backbones.hf_text import HFText
from lightning_prompts.export.peft import export_peft_prompt_tuning
from lightning_prompts.methods.base import LabelWords, TextPromptModule
from lightning_prompts.prompts.soft_prompt import PromptEncoderMLP, SoftPromptInit
from lightning_prompts.registry import register_method


@register_method(
    family="text",
    title="Prompt Tuning",
    paper="Lester, Al-Rfou, Constant, EMNLP 2021 — The Power of Scale for Parameter-Efficient Prompt Tuning",
    code="huggingface/peft",
    example={"num_virtual_tokens": 4},
)
class PromptTuning(TextPromptModule):
    """Soft prompt tuning of a frozen Hugging Face model.

    Args:
        backbone: the frozen :class:`~lightning_prompts.backbones.HFText` (its ``task`` picks the head).
        classnames: the classes, in label order (linked from the data module).
        num_virtual_tokens: number of soft tokens.
        init: ``"text"`` (from ``init_text`` tokenized with the model's special tokens, as PEFT does),
            ``"text_without_special_tokens"`` (its words alone: the choice on decoders that start every input
            with a beginning-of-sequence token), ``"vocab"`` (sampled token embeddings) or ``"random"``.
        init_text: the text for the two text initialisations.
        label_words: causal LM only: one word per class whose next-token logit scores it, or a list of words per
            class scored by their mean logit (default: the class names; see
            :class:`~lightning_prompts.methods.base.TextPromptModule`).
        text_template: how an input is presented, e.g. ``"Review: {text} Sentiment:"``.
        truncate: cut texts that do not fit the context (otherwise too long a text is an error before training).
        seed: seed of the ``"vocab"``/``"random"`` initialisation.
        encoder_hidden_size: P-tuning (Liu et al., 2021): reparameterise the soft tokens through PEFT's
            ``P_TUNING`` MLP of this hidden width while training
            (:class:`~lightning_prompts.prompts.soft_prompt.PromptEncoderMLP`); ``export_peft`` then writes a
            ``P_TUNING`` adapter. ``None``: plain prompt tuning.
        **kwargs: ``optimizer``, ``lr_scheduler``, ``lr_scheduler_interval``, ``param_group_lr``; see
            :class:`~lightning_prompts.methods.PromptModule`; groups ``"prompt"`` and (sequence
            classification) ``"head"``. Default optimizer: AdamW, lr 0.3, no weight decay (prompt
            tuning needs learning rates far above fine-tuning's).
    """

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
        label_words: LabelWords | None = None,
        text_template: str = "{text}",
        truncate: bool = False,
        seed: int = 0,
        encoder_hidden_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, classnames, label_words, text_template, truncate, **kwargs)
        model: HFText = self.backbone
        generator = torch.Generator().manual_seed(seed)
        self.prompt = self.soft_prompt(num_virtual_tokens, init, init_text, generator)
        self.encoder = (
            PromptEncoderMLP(model.hidden_size, encoder_hidden_size, generator) if encoder_hidden_size else None
        )

    def soft_tokens(self) -> Tensor:
        """The ``(m, d)`` tokens that enter the model (through P-tuning's MLP when it is on)."""
        return self.prompt() if self.encoder is None else self.encoder(self.prompt())

    @property
    def reserved_tokens(self) -> int:
        return self.prompt.num_tokens

    def prompt_parameters(self) -> list[nn.Parameter]:
        return [self.prompt.embedding, *(self.encoder.parameters() if self.encoder is not None else [])]

    def prompt_inputs(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, None]:
        return self.soft_tokens(), None

    # -- export ----------------------------------------------------------------------------------------
    def export_peft(self, directory: str | Path) -> Path:
        """Write a PEFT adapter that ``PeftModel.from_pretrained(base, directory)`` loads: ``PROMPT_TUNING``,
        or ``P_TUNING`` with the MLP's output when ``encoder_hidden_size`` is set."""
        model: HFText = self.backbone
        if model.pooling != "model":
            raise NotImplementedError(
                f"PEFT scores sequences with the model's own pooling; this prompt was trained with "
                f"pooling={model.pooling!r}, which PEFT cannot reproduce. Use export_prompt() instead."
            )
        with torch.no_grad():
            tokens = self.soft_tokens()
        return export_peft_prompt_tuning(
            directory,
            tokens,
            model.model.config,
            model.task,
            model.model_name_or_path,
            model.head_modules(),
            p_tuning_hidden_size=self.encoder.mlp[0].out_features if self.encoder is not None else None,
        )
