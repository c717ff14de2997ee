"""PTEC — Prompt Tuned Embedding Classification (Buchner et al., NAACL Industry 2024; code: valbuc/PTEC).

A soft prompt and a linear classification head on a frozen language model: the head reads the hidden
state of the last real token (``HFText(..., pooling="last")`` for decoders, as the official
``AutoModelForSequenceClassification`` on LLaMA does) and scores every class independently, so one
model handles multi-label data (industry sectors, hate-speech targets). What the official code does,
and we do (read at valbuc/PTEC@19788bdd):

* **loss**: binary cross-entropy with logits, ``pos_weight_c = max_k n_k / n_c`` with ``n_c`` the
  training positives of class ``c``, averaged over batch and classes; single-label data is one-hot;
* **learning rates**: the prompt's (the optimizer's lr, 3e-3) and the head's (``head_lr``, 1e-5), both
  decaying exponentially to 1 % of their start over training, once per optimizer update
  (``γ = 0.01^(1/(U−1))``, :class:`~lightning_prompts.optim.ExponentialDecayLR`);
* **prompt initialisation** (``init="labels"``): the embeddings of the tokens of the class names joined by
  spaces, tokenized with the tokenizer's special tokens (``tokenizer.encode(" ".join(labels))``: LLaMA's
  BOS, BERT's ``[CLS]``/``[SEP]``), a random subset when there are more than ``m``, padded with tokens 1000,
  1001, … when fewer;
* the official script accumulates 16 micro-batches of 2 and clips the summed gradient to norm 1:
  ``accumulate_grad_batches`` and ``gradient_clip_val`` in the recipes.

Where we deviate: right padding with the last real token read (the official code left-pads and reads
the last position: the same token); the frozen model runs in eval mode; tokens 1000+ wrap around a
vocabulary smaller than that (only the tiny test models have one); the random subset of too many label
tokens is drawn with ``random.Random(seed)`` (the official code takes ``torch.randperm`` from the global
generator), and underscores in class names (folder names) are read as spaces.

The baseline the paper compares with — a prompt that *generates* the label names, optionally with
trie-constrained decoding — is :class:`~lightning_prompts.prompts.label_trie.TrieConstrainedLogitsProcessor`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_prompts.backbones.hf_text import HFText
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods.base import TextPromptModule
from lightning_prompts.optim.schedulers import ExponentialDecayLR
from lightning_prompts.outputs import PromptOutput
from lightning_prompts.prompts.soft_prompt import SoftPrompt
from lightning_prompts.registry import register_method

PTECInit = Literal["labels", "text", "text_without_special_tokens", "vocab", "random"]


def class_weights(counts: Sequence[int]) -> Tensor:
    """PTEC's ``pos_weight``: ``max_k n_k / n_c`` (a class without positives gets the largest weight)."""
    counts_t = torch.tensor([float(c) for c in counts])
    return counts_t.max() / counts_t.clamp_min(1.0)


def label_token_init(ids: Sequence[int], num_tokens: int, vocab: int, seed: int) -> list[int]:
    """Token ids initialising a PTEC prompt from the class names' tokens ``ids``: a random subset when too
    many, padded with 1000, 1001, … (modulo ``vocab``) when too few."""
    ids = list(ids)
    if len(ids) > num_tokens:
        return random.Random(seed).sample(ids, num_tokens)
    return ids + [(1000 + i) % vocab for i in range(num_tokens - len(ids))]


@register_method(
    family="text",
    title="PTEC",
    paper="Buchner et al., NAACL Industry 2024 — Prompt Tuned Embedding Classification for Industry Sector Allocation",
    code="valbuc/PTEC",
    overlay="text_short_prompt",
    example={"num_virtual_tokens": 4},
)
class PTEC(TextPromptModule):
    """Soft prompt + a linear head on the last token, trained with class-weighted binary cross-entropy.

    Args:
        backbone: a frozen :class:`~lightning_prompts.backbones.HFText` with ``task="sequence-classification"``
            (decoders with ``pooling="last"``).
        classnames: the classes, in label order (linked from the data module).
        num_virtual_tokens: prompt length (the paper tunes 50–200).
        init: ``"labels"`` (the official default), or :class:`~lightning_prompts.methods.PromptTuning`'s.
        init_text: the text for the two text initialisations.
        head_lr: learning rate of the ``"head"`` group (the optimizer's lr is the prompt's).
        pos_weight: per-class positive weights; ``None`` computes PTEC's from the training data at ``fit``
            (``max_k n_k / n_c``), ``[]`` uses none.
        decay_to: both learning rates decay exponentially to this fraction over training (when no
            ``lr_scheduler`` is configured); ``None`` keeps them constant.
        text_template, truncate: see :class:`~lightning_prompts.methods.base.TextPromptModule`.
        seed: seed of the initialisation.
        **kwargs: ``optimizer``, ``lr_scheduler``, ``param_group_lr`` …; groups ``"prompt"`` and ``"head"``.
            Default optimizer: AdamW, lr 3e-3, weight decay 0.
    """

    default_optimizer: ClassVar[dict[str, Any]] = {
        "class_path": "torch.optim.AdamW",
        "init_args": {"lr": 3e-3, "weight_decay": 0.0},
    }

    def __init__(
        self,
        backbone: HFText,
        classnames: Sequence[str] | None = None,
        num_virtual_tokens: int = 100,
        init: PTECInit = "labels",
        init_text: str | None = None,
        head_lr: float = 1e-5,
        pos_weight: list[float] | None = None,
        decay_to: float | None = 0.01,
        text_template: str = "{text}",
        truncate: bool = False,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        model = backbone if isinstance(backbone, HFText) else None
        if model is not None and model.task != "sequence-classification":
            raise ConfigurationError("PTEC trains a classification head: use HFText(task='sequence-classification').")
        if kwargs.pop("label_words", None) is not None:  # a checkpoint's stored hyperparameters name it, as None
            raise ConfigurationError("PTEC scores classes with its head on the last token; label_words do not apply.")
        super().__init__(backbone, classnames, None, text_template, truncate, **kwargs)
        model = self.backbone
        generator = torch.Generator().manual_seed(seed)
        if init == "labels":
            # the official tokenizer.encode(" ".join(labels)): one string, the special tokens included
            joined = " ".join(name.replace("_", " ") for name in self.classnames)
            ids = label_token_init(
                model.tokenizer(joined)["input_ids"], num_virtual_tokens, model.word_embeddings.num_embeddings, seed
            )
            self.prompt = SoftPrompt(num_virtual_tokens, model.word_embeddings, "text", ids)
        else:
            self.prompt = self.soft_prompt(num_virtual_tokens, init, init_text, generator)
        self.head_lr, self.decay_to = head_lr, decay_to
        weights = torch.tensor(pos_weight, dtype=torch.float) if pos_weight else torch.ones(len(self.classnames))
        if weights.shape != (len(self.classnames),):
            raise ConfigurationError(f"pos_weight has {weights.numel()} values for {len(self.classnames)} classes.")
        self._fixed_weights = pos_weight is not None
        self.register_buffer("pos_weight", weights, persistent=False)

    # -- the text base's seams -------------------------------------------------------------------------
    @property
    def reserved_tokens(self) -> int:
        return self.prompt.num_tokens

    def prompt_parameters(self) -> list[nn.Parameter]:
        return [self.prompt.embedding]

    def prompt_inputs(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, None]:
        return self.prompt(), None

    def param_groups(self) -> list[dict[str, Any]]:
        groups = super().param_groups()
        for group in groups:
            if group["name"] == "head":
                group["lr"] = self.head_lr
        return groups

    # -- training --------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        counts = getattr(datamodule, "train_label_counts", None)
        if stage == "fit" and not self._fixed_weights and callable(counts):
            self.pos_weight = class_weights(counts()).to(self.device)

    def task_loss(self, output: PromptOutput, targets: Tensor) -> Tensor:
        """Class-weighted binary cross-entropy, averaged over batch and classes; multi-hot ``(B, C)`` targets
        (class indices of single-label data count as one-hot)."""
        if targets.dim() == 1:
            targets = F.one_hot(targets, len(self.classnames))
        return F.binary_cross_entropy_with_logits(output.logits.float(), targets.float(), pos_weight=self.pos_weight)

    def configure_optimizers(self) -> Any:
        configured = super().configure_optimizers()
        if self._scheduler_factory is not None or self.decay_to is None or configured is None:
            return configured
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else None
        scheduler = ExponentialDecayLR(configured, self.decay_to, total)
        return {"optimizer": configured, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
