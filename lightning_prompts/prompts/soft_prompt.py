"""Soft tokens prepended to a language model's input embeddings (Lester et al., 2021)."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

SoftPromptInit = Literal["text", "text_without_special_tokens", "vocab", "random"]
#: The initialisations that start from ``init_text``.
TEXT_INITS = ("text", "text_without_special_tokens")


def repeat_to_length(ids: list[int], length: int) -> list[int]:
    """``ids`` repeated, then cut to ``length`` (PEFT's text initialisation of a longer or shorter prompt)."""
    return (ids * math.ceil(length / len(ids)))[:length]


class SoftPrompt(nn.Module):
    """``num_tokens`` learnable vectors of the model's embedding width.

    Initialisations (Lester et al.; the first two as PEFT implements them, through the embedding module, so
    the soft tokens start at the scale of the real tokens the model sees: Gemma's embedding multiplies its
    table by sqrt(d)):

    * ``"text"``: embeddings of ``init_token_ids`` (the tokenized ``init_text``), repeated or cut to
      ``num_tokens``; ``"text_without_special_tokens"`` the same, the text tokenized without the model's
      special tokens (the method tokenizes; see :meth:`TextPromptModule.soft_prompt
      <lightning_prompts.methods.base.TextPromptModule.soft_prompt>`);
    * ``"vocab"``: embeddings of tokens sampled uniformly from the vocabulary;
    * ``"random"``: uniform in ``[-0.5, 0.5]`` as in the paper (PEFT's ``RANDOM`` keeps
      ``nn.Embedding``'s N(0, 1), far larger than word embeddings).

    Args:
        num_tokens: number of soft tokens.
        word_embeddings: the model's input embedding table (read once, never trained).
        init: one of the initialisations above.
        init_token_ids: token ids for ``"text"``.
        generator: random generator for ``"vocab"`` and ``"random"``.
    """

    def __init__(
        self,
        num_tokens: int,
        word_embeddings: nn.Embedding,
        init: SoftPromptInit = "vocab",
        init_token_ids: list[int] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}.")
        vocab, width = word_embeddings.weight.shape
        if init in TEXT_INITS:
            if not init_token_ids:
                raise ValueError(f"init={init!r} needs init_text that produces at least one token.")
            weight = self._embed(word_embeddings, torch.tensor(repeat_to_length(init_token_ids, num_tokens)))
        elif init == "vocab":
            weight = self._embed(word_embeddings, torch.randint(0, vocab, (num_tokens,), generator=generator))
        elif init == "random":
            weight = torch.rand(num_tokens, width, generator=generator) - 0.5
        else:
            raise ValueError(f"init must be one of {(*TEXT_INITS, 'vocab', 'random')}, got {init!r}.")
        self.embedding = nn.Parameter(weight.detach().clone().float())

    @staticmethod
    def _embed(word_embeddings: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        # Through the module, not ``.weight[ids]``: Gemma's embedding (and BART's with scale_embedding)
        # multiplies by sqrt(d) in forward, so a row of the table is sqrt(d) times smaller than the real
        # token the model sees next to the prompt. PEFT initialises through the module too.
        with torch.no_grad():
            return word_embeddings(ids.to(word_embeddings.weight.device))

    @property
    def num_tokens(self) -> int:
        return int(self.embedding.shape[0])

    def forward(self) -> Tensor:
        return self.embedding


class PromptEncoderMLP(nn.Module):
    """P-tuning's reparameterisation (Liu et al., "GPT Understands, Too", 2021; PEFT's ``P_TUNING`` with
    ``encoder_reparameterization_type="MLP"``): the soft tokens pass through
    ``Linear(d, h) → ReLU → Linear(h, h) → ReLU → Linear(h, d)`` before they enter the model. Only the output
    matters at inference, which is what a PEFT export stores.

    Args:
        width: ``d``, the model's embedding width.
        hidden: ``h``.
        generator: random generator of the initialisation (``nn.Linear``'s, drawn from it).
    """

    def __init__(self, width: int, hidden: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        linears = [nn.Linear(width, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, width)]
        with torch.no_grad():
            for linear in linears:
                bound = linear.in_features**-0.5
                linear.weight.uniform_(-bound, bound, generator=generator)
                linear.bias.uniform_(-bound, bound, generator=generator)
        self.mlp = nn.Sequential(linears[0], nn.ReLU(), linears[1], nn.ReLU(), linears[2])

    def forward(self, prompt: Tensor) -> Tensor:
        return self.mlp(prompt)
