"""DePT — Decomposed Prompt Tuning (Shi & Lipani, ICLR 2024; code: ZhengxiangShi/DePT).

A vanilla soft prompt of ``n`` tokens is split into a shorter prompt of ``m`` tokens and a low-rank
update of the input embeddings: ``A B`` (``A`` is ``(s, r)``, ``B`` is ``(r, d)``, ``s`` the fixed
input length) whose row ``i`` is added to the word embedding at input position ``i``. At an equal
number of trainable parameters (``m·d + s·r + r·d ≈ n·d``) the sequence is ``n − m`` tokens shorter,
which is where the paper's time and memory saving comes from.

What the official code does, and we do (read at ZhengxiangShi/DePT@f0266a7):

* the offset ``(lora_alpha / √r) · A B`` is added to **every** input position, padding included, so
  inputs are padded to exactly ``s`` tokens (``pad_to_max_length``); the soft prompt gets no offset and
  is prepended after the offset is added, with ``m`` ones in the attention mask;
* ``A`` Kaiming-uniform (``a = √5``), ``B`` zero (the offset starts at 0), ``lora_alpha`` = 8;
* the prompt is initialised from the embeddings of a short instruction, repeated to ``m`` tokens;
* two learning rates: the prompt's (0.3 or 0.4 in the paper) and the offset's (``offset_lr``; the
  released runs used 1e-4 to 5e-3); AdamW with weight decay 0 and ε = 1e-6 (the script passes a
  weight decay that never reaches the optimizer, and ``transformers.AdamW``'s ε is 1e-6).

Where we deviate: the default instruction is the official one with its typo fixed ("Classify this
text is positive or not:"); decoders are right-padded here (the official decoder path pads on the
left, so its offset rows line up with pads), so row ``i`` always meets token ``i``; the frozen model
runs in eval mode. ``pad_to_max_length=False`` adds only the first ``T`` rows to a batch of ``T``
tokens: padded positions are masked out of attention, so the logits are the same
(``tests/methods/test_dept.py``) and short batches are cheaper.

DePT's update touches the input tokens, so it cannot be expressed as a PEFT adapter; ``export_prompt``
writes the prompt, ``A`` and ``B`` to ``safetensors``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lightning_prompts.backbones.hf_text import HFText
from lightning_prompts.errors import ConfigurationError, ContextLengthError
from lightning_prompts.methods.base import LabelWords, TextPromptModule
from lightning_prompts.prompts.low_rank_offset import LowRankPositionOffset
from lightning_prompts.prompts.soft_prompt import SoftPromptInit
from lightning_prompts.registry import register_method

#: The official initialisation text, with its typo ("postive") fixed.
DEPT_INIT_TEXT = "Classify this text is positive or not:"


def matched_prompt_length(budget_tokens: int, max_length: int, rank: int, width: int) -> int:
    """The longest DePT prompt ``m`` with ``m·d + s·r + r·d <= budget_tokens · d`` (the parameters of a
    vanilla prompt of ``budget_tokens`` tokens). DePT's GLUE setting: 100 tokens of T5-base (d = 768),
    s = 256, r = 30 gives m = 60."""
    length = (budget_tokens * width - max_length * rank - rank * width) // width
    if length < 1:
        raise ConfigurationError(
            f"a budget of {budget_tokens} tokens of width {width} leaves no prompt tokens beside a rank-{rank} "
            f"offset over {max_length} positions; lower the rank or max_length."
        )
    return int(length)


@register_method(
    family="text",
    title="DePT",
    paper="Shi & Lipani, ICLR 2024 — DePT: Decomposed Prompt Tuning for Parameter-Efficient Fine-tuning",
    code="ZhengxiangShi/DePT",
    overlay="dept",
    example={"num_virtual_tokens": 4, "rank": 4, "max_length": 96},
)
class DePT(TextPromptModule):
    """A short soft prompt plus a position-indexed low-rank update of the input embeddings.

    Args:
        backbone: the frozen :class:`~lightning_prompts.backbones.HFText`.
        classnames: the classes, in label order (linked from the data module).
        num_virtual_tokens: prompt length ``m`` (DePT's GLUE setting: 60); ignored when ``budget_tokens`` is set.
        rank: rank ``r`` of the offset (30).
        max_length: the fixed input length ``s`` (256): texts are padded to it, longer texts are an error
            (or cut, with ``truncate``).
        budget_tokens: match the trainable parameters of a vanilla prompt of this many tokens: ``m`` becomes
            :func:`matched_prompt_length` (``budget_tokens=100`` is the paper's comparison).
        lora_alpha: the offset's scale is ``lora_alpha / √r`` (8).
        offset_lr: learning rate of ``A`` and ``B`` (the ``"offset"`` group); the optimizer's ``lr`` is the
            prompt's.
        pad_to_max_length: pad every batch to ``s`` as the official code must; ``False`` pads to the longest
            text (same logits, less work).
        init, init_text: the prompt's initialisation (see :class:`~lightning_prompts.methods.PromptTuning`);
            DePT initialises from :data:`DEPT_INIT_TEXT`.
        label_words, text_template, truncate: see :class:`~lightning_prompts.methods.base.TextPromptModule`.
        seed: seed of the random initialisations.
        **kwargs: ``optimizer``, ``lr_scheduler``, ``param_group_lr`` …; groups ``"prompt"``, ``"offset"`` and
            (sequence classification) ``"head"``. Default optimizer: AdamW, lr 0.3, weight decay 0, ε 1e-6.
    """

    default_optimizer: ClassVar[dict[str, Any]] = {
        "class_path": "torch.optim.AdamW",
        "init_args": {"lr": 0.3, "weight_decay": 0.0, "eps": 1e-6},
    }

    def __init__(
        self,
        backbone: HFText,
        classnames: Sequence[str] | None = None,
        num_virtual_tokens: int = 60,
        rank: int = 30,
        max_length: int = 256,
        budget_tokens: int | None = None,
        lora_alpha: float = 8.0,
        offset_lr: float = 5e-4,
        pad_to_max_length: bool = True,
        init: SoftPromptInit = "text",
        init_text: str | None = DEPT_INIT_TEXT,
        label_words: LabelWords | None = None,
        text_template: str = "{text}",
        truncate: bool = False,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, classnames, label_words, text_template, truncate, **kwargs)
        model: HFText = self.backbone
        width = model.hidden_size
        if budget_tokens is not None:
            num_virtual_tokens = matched_prompt_length(budget_tokens, max_length, rank, width)
        if num_virtual_tokens + max_length > model.max_length:
            raise ContextLengthError(
                f"DePT feeds {num_virtual_tokens} prompt tokens and texts padded to max_length={max_length}, "
                f"{num_virtual_tokens + max_length} positions, but {model.name} has a context of {model.max_length}."
            )
        self.input_length, self.offset_lr, self.pad_to_max_length = max_length, offset_lr, pad_to_max_length
        generator = torch.Generator().manual_seed(seed)
        self.prompt = self.soft_prompt(num_virtual_tokens, init, init_text, generator)
        self.offset = LowRankPositionOffset(max_length, rank, width, lora_alpha, generator)

    # -- the text base's seams ---------------------------------------------------------------------------
    @property
    def reserved_tokens(self) -> int:
        return self.prompt.num_tokens

    @property
    def max_text_tokens(self) -> int:
        return self.input_length

    def prompt_parameters(self) -> list[nn.Parameter]:
        return [self.prompt.embedding]

    def param_groups(self) -> list[dict[str, Any]]:
        groups = super().param_groups()
        offset = {"name": "offset", "params": list(self.offset.parameters()), "lr": self.offset_lr}
        return [groups[0], offset, *groups[1:]]

    def tokenize(self, texts: Sequence[str], template: str | None = None) -> dict[str, Tensor]:
        """Template and tokenize, right-padded to exactly ``max_length`` tokens (with ``pad_to_max_length``)."""
        tokens = super().tokenize(texts, template)
        missing = self.input_length - tokens["input_ids"].shape[1]
        if self.pad_to_max_length and missing > 0:
            pad = self.backbone.tokenizer.pad_token_id
            tokens = {
                "input_ids": nn.functional.pad(tokens["input_ids"], (0, missing), value=pad),
                "attention_mask": nn.functional.pad(tokens["attention_mask"], (0, missing), value=0),
            }
        return tokens

    def prompt_inputs(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        return self.prompt(), self.offset(input_ids.shape[1])

    # -- export ----------------------------------------------------------------------------------------
    def export_peft(self, directory: str | Path) -> Path:
        """DePT has no PEFT form: its offset changes the input embeddings, which no PEFT adapter type does."""
        raise NotImplementedError(
            "DePT's position-wise update of the input embeddings has no PEFT adapter type; use export_prompt(), "
            "which writes the prompt, A and B to safetensors (load_prompt() reads it back)."
        )

    @staticmethod
    def trainable_parameter_count(num_virtual_tokens: int, max_length: int, rank: int, width: int) -> int:
        """``m·d + s·r + r·d`` (the classification head not included)."""
        return num_virtual_tokens * width + max_length * rank + rank * width
