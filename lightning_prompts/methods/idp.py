"""IDP — Inference-time Dynamic Prompting (Hoang et al., 2023: "Do Compressed LLMs Forget Knowledge?").

One recovery prompt per (compressed) model over-commits to one kind of input; IDP keeps a bank of ``K``
soft prompts and, per input, picks one from the input's own context, then runs one forward with it.
We found no released code; what we decided, and the tests pin:

* **keys**: prompt ``i``'s key is the mean hidden state, at ``selector_layer`` of the frozen model, of
  its ``m`` soft tokens when the model reads the prompt alone;
* **query**: an input's query is the mean hidden state at the same layer of its real tokens, read by
  the frozen model *without* a prompt (one extra forward, under ``no_grad``);
* **selection**: ``argmax_i cos(query, key_i)``; the input then runs with prompt ``i`` only, exactly as
  :class:`~lightning_prompts.methods.PromptTuning` with that prompt;
* **training** (optional; the paper selects among prompts trained elsewhere, ``prompt_files``): every
  prompt of the bank is trained on the inputs routed to it (hard routing, no gradient through the
  choice), so the bank specialises.

``prompt_files`` takes :meth:`~lightning_prompts.methods.PromptModule.export_prompt` files of
``PromptTuning`` runs on the same backbone (their ``prompt.embedding``, checked for width and length).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_prompts.backbones.hf_text import HFText, masked_mean
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods.base import LabelWords, TextPromptModule
from lightning_prompts.methods.base.checkpointing import read_soft_prompt
from lightning_prompts.prompts.soft_prompt import SoftPromptInit
from lightning_prompts.registry import register_method


@register_method(
    family="text",
    title="IDP",
    paper="Hoang et al., 2023 — Do Compressed LLMs Forget Knowledge? An Experimental Study with Practical Implications",
    example={"num_prompts": 3, "num_virtual_tokens": 2},
)
class IDP(TextPromptModule):
    """A bank of soft prompts and a per-input choice among them (see the module docstring).

    Args:
        backbone: the frozen :class:`~lightning_prompts.backbones.HFText`.
        classnames: the classes, in label order (linked from the data module).
        num_prompts: ``K``, the prompts of the bank (ignored with ``prompt_files``).
        num_virtual_tokens: each prompt's length (ignored with ``prompt_files``).
        prompt_files: ``export_prompt`` files of prompts trained elsewhere, one per bank entry.
        selector_layer: the hidden-state layer keys and queries are read at (``-1``: the last).
        init: the initialisation of a trained bank (see :class:`~lightning_prompts.methods.PromptTuning`); each
            prompt draws its own tokens.
        label_words, text_template, truncate: see :class:`~lightning_prompts.methods.base.TextPromptModule`.
        seed: seed of the initialisation.
        **kwargs: see :class:`~lightning_prompts.methods.PromptModule`; groups ``"prompt"`` (the bank) and
            ``"head"``. Default optimizer: AdamW, lr 0.3 (prompt tuning's).
    """

    default_optimizer: ClassVar[dict[str, Any]] = {
        "class_path": "torch.optim.AdamW",
        "init_args": {"lr": 0.3, "weight_decay": 0.0},
    }

    def __init__(
        self,
        backbone: HFText,
        classnames: Sequence[str] | None = None,
        num_prompts: int = 4,
        num_virtual_tokens: int = 20,
        prompt_files: Sequence[str] | None = None,
        selector_layer: int = -1,
        init: SoftPromptInit = "vocab",
        label_words: LabelWords | None = None,
        text_template: str = "{text}",
        truncate: bool = False,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, classnames, label_words, text_template, truncate, **kwargs)
        model: HFText = self.backbone
        if prompt_files:
            prompts = [read_soft_prompt(path, model.hidden_size, model.name) for path in prompt_files]
            if len({prompt.shape for prompt in prompts}) != 1:
                raise ConfigurationError(
                    f"IDP's prompt files must hold prompts of one length, got {[p.shape[0] for p in prompts]}."
                )
            bank = torch.stack(prompts)
        else:
            if num_prompts < 2:
                raise ConfigurationError(f"IDP chooses among prompts: num_prompts must be >= 2, got {num_prompts}.")
            generator = torch.Generator().manual_seed(seed)
            draws = [self.soft_prompt(num_virtual_tokens, init, None, generator) for _ in range(num_prompts)]
            bank = torch.stack([draw.embedding for draw in draws])
        self.bank = nn.Parameter(bank.detach().clone())
        self.selector_layer = selector_layer

    @property
    def num_prompts(self) -> int:
        return int(self.bank.shape[0])

    @property
    def reserved_tokens(self) -> int:
        return int(self.bank.shape[1])

    def prompt_parameters(self) -> list[nn.Parameter]:
        return [self.bank]

    # -- selection ---------------------------------------------------------------------------------------
    def prompt_keys(self) -> Tensor:
        """``(K, D)``: each prompt's mean hidden state at ``selector_layer`` when the model reads it alone."""
        model: HFText = self.backbone
        pad = model.tokenizer.pad_token_id
        ids = torch.full((self.num_prompts, 1), pad, dtype=torch.long, device=self.device)
        mask = torch.zeros_like(ids)  # one masked placeholder token: the model reads the prompt only
        with torch.no_grad():
            out = model.forward_embeddings(self.bank, ids, mask, output_hidden_states=True)
        return out.hidden_states[self.selector_layer][:, : self.reserved_tokens].mean(1)

    def input_queries(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """``(B, D)``: each input's mean hidden state at ``selector_layer``, read without a prompt."""
        with torch.no_grad():
            out = self.backbone.forward_embeddings(None, input_ids, attention_mask, output_hidden_states=True)
        return masked_mean(out.hidden_states[self.selector_layer], attention_mask)

    def select(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """``(B,)`` the prompt each input runs with: ``argmax_i cos(query, key_i)``."""
        queries = F.normalize(self.input_queries(input_ids, attention_mask).float(), dim=-1)
        keys = F.normalize(self.prompt_keys().float(), dim=-1)
        return (queries @ keys.T).argmax(dim=-1)

    def prompt_inputs(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, None]:
        return self.bank[self.select(input_ids, attention_mask)], None
