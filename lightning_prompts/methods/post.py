"""POST — Privacy Of Soft-prompt Transfer (Wang et al., ICML 2025; code: sprintml/POST).

A data owner tunes a soft prompt on a *small* model (optionally with differential privacy, on private
data); the prompt is then transferred to a *large* model using only a small public anchor set, so the
private data never reaches the large model's provider. This module is the transfer stage: it trains
a soft prompt on the large (target) model so that, on the anchor texts, the target's prompted output and
the change the prompt makes to it match the source's:

``loss = α · T² · KL(softmax(Δ_s/T) ‖ softmax(Δ_t/T)) + (1 − α) · T² · KL(softmax(z_s^p/T) ‖ softmax(z_t^p/T))``

with ``z^p`` the prompted and ``z`` the plain next-token logits over the whole vocabulary at the last
real token, ``Δ = z^p − z`` the prompt-induced shift, the source as the teacher, both KLs averaged over
the batch. What the official code does, and we do (read at sprintml/POST@c0665e83, ``mix_transfer``):
α weights the *shift* term, T = 2, α = 0.5, Adam lr 1e-3, 100 soft tokens; the source side is frozen.

The source may be any smaller causal LM sharing the target's vocabulary (GPT-2 → GPT-2-large, a
distilled model as the paper's stage 1, or Gemma-3-270M → a larger Gemma): ``source_backbone`` and
``source_prompt``, the file a :class:`~lightning_prompts.methods.PromptTuning` on the small model wrote
with ``export_prompt``. The anchor texts are the data module's training texts (their labels are not
used); validation and test score the target task with the verbalizer, as prompt tuning does.

Where we deviate: both frozen models run in eval mode; the official distillation of the small model
(stage 1) is not part of this module: any smaller model the user gives serves as the source.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_prompts.backbones.base import build_backbone
from lightning_prompts.backbones.hf_text import HFText
from lightning_prompts.batch import ATTENTION_MASK, INPUT_IDS, TEXT
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods.base import LabelWords
from lightning_prompts.methods.base.checkpointing import read_soft_prompt
from lightning_prompts.methods.prompt_tuning import PromptTuning
from lightning_prompts.prompts.soft_prompt import SoftPromptInit
from lightning_prompts.registry import register_method


def post_transfer_loss(
    source_prompted: Tensor,
    source_plain: Tensor,
    target_prompted: Tensor,
    target_plain: Tensor,
    alpha: float = 0.5,
    temperature: float = 2.0,
) -> Tensor:
    """POST's mixed transfer loss (see the module docstring); every argument is ``(B, V)`` logits."""

    def kl(teacher: Tensor, student: Tensor) -> Tensor:
        return F.kl_div(
            F.log_softmax(student.float() / temperature, -1),
            F.log_softmax(teacher.float() / temperature, -1),
            reduction="batchmean",
            log_target=True,
        ) * (temperature**2)

    shift = kl(source_prompted - source_plain, target_prompted - target_plain)
    prompted = kl(source_prompted, target_prompted)
    return alpha * shift + (1.0 - alpha) * prompted


@register_method(
    family="text",
    title="POST",
    paper="Wang et al., ICML 2025 — POST: Privacy Of Soft-prompt Transfer",
    code="sprintml/POST",
    overlay="post",
    example={
        "num_virtual_tokens": 4,
        "contract_backbone": "tiny-gpt2",
        "source_backbone": {
            "class_path": "HFText",
            "init_args": {"model_name_or_path": "tiny-gpt2", "task": "causal-lm"},
        },
        "source_prompt": "recipes/_tiny/post_source_prompt.safetensors",
    },
)
class POST(PromptTuning):
    """Transfer of a small model's soft prompt to a large model on public anchor texts.

    Args:
        backbone: the large (target) :class:`~lightning_prompts.backbones.HFText`, ``task="causal-lm"``.
        classnames: the target task's classes (validation and test score them with label words).
        source_backbone: the small model the source prompt was tuned on (same vocabulary); needed to train,
            not to evaluate a transferred prompt.
        source_prompt: the small model's ``export_prompt`` file (its ``prompt.embedding``).
        num_virtual_tokens: the target prompt's length (100 in POST).
        alpha: weight of the prompt-shift term (0.5); ``1 − alpha`` weighs the prompted-output term.
        temperature: ``T`` (2.0).
        init, init_text, label_words, text_template, truncate, seed: see
            :class:`~lightning_prompts.methods.PromptTuning`.
        **kwargs: see :class:`~lightning_prompts.methods.PromptModule`. Default optimizer: Adam, lr 1e-3.
    """

    default_optimizer: ClassVar[dict[str, Any]] = {"class_path": "torch.optim.Adam", "init_args": {"lr": 1e-3}}
    #: its own training step (the transfer loss on anchor texts) takes no loss-term callbacks
    accepts_loss_terms: ClassVar[bool] = False

    def __init__(
        self,
        backbone: HFText,
        classnames: Sequence[str] | None = None,
        source_backbone: HFText | None = None,
        source_prompt: str | None = None,
        num_virtual_tokens: int = 100,
        alpha: float = 0.5,
        temperature: float = 2.0,
        init: SoftPromptInit = "vocab",
        init_text: str | None = None,
        label_words: LabelWords | None = None,
        text_template: str = "{text}",
        truncate: bool = False,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            backbone, classnames, num_virtual_tokens, init, init_text, label_words, text_template, truncate, seed,
            **kwargs,
        )  # fmt: skip
        if self.backbone.task != "causal-lm":
            raise ConfigurationError("POST transfers next-token distributions: use HFText(task='causal-lm').")
        if not 0.0 <= alpha <= 1.0 or temperature <= 0:
            raise ValueError(f"alpha must be in [0, 1] and temperature > 0, got {alpha} and {temperature}.")
        self.alpha, self.temperature, self.source_prompt = float(alpha), float(temperature), source_prompt
        # a checkpoint stores the source's config (checked like the backbone's), never the object
        self.source = build_backbone(source_backbone) if source_backbone is not None else None
        self.hparams["source_backbone"] = self.source.config() if self.source is not None else None
        if self.source is not None:
            if self.source.task != "causal-lm":
                raise ConfigurationError(f"POST's source must be a causal LM too, got {self.source.name}.")
            self.source.requires_grad_(False)
            if self.source.word_embeddings.num_embeddings != self.backbone.word_embeddings.num_embeddings:
                raise ConfigurationError(
                    f"POST compares next-token distributions over one vocabulary: the source {self.source.name} has "
                    f"{self.source.word_embeddings.num_embeddings} tokens, the target {self.backbone.name} "
                    f"{self.backbone.word_embeddings.num_embeddings}."
                )
        self._source_embedding: Tensor | None = None

    def source_prompt_embedding(self) -> Tensor:
        """The small model's soft prompt ``(m, d_source)`` from ``source_prompt`` (read once)."""
        if self._source_embedding is None:
            if self.source is None or self.source_prompt is None:
                raise ConfigurationError("POST needs source_backbone and source_prompt to transfer.")
            self._source_embedding = read_soft_prompt(self.source_prompt, self.source.hidden_size, self.source.name)
        return self._source_embedding.to(self.device)

    def check_ready(self, stage: str, callbacks: Any, datamodule: Any | None) -> None:
        super().check_ready(stage, callbacks, datamodule)
        if stage == "fit":
            self.source_prompt_embedding()  # a missing or wrong file fails before training

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        texts = batch[TEXT]
        loss = self.transfer_loss(texts, batch[INPUT_IDS], batch[ATTENTION_MASK])
        self.log("train/transfer_loss", loss, batch_size=len(texts))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(texts))
        return loss

    def transfer_loss(self, texts: Sequence[str], input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """:func:`post_transfer_loss` on a batch of anchor texts (target tokens given, source tokenized here)."""
        assert self.source is not None
        source_tokens = self.source.tokenize(
            self.format_texts(texts), reserve=self.source_prompt_embedding().shape[0], truncate=self.truncate
        )
        ids, mask = source_tokens["input_ids"].to(self.device), source_tokens["attention_mask"].to(self.device)
        with torch.no_grad():
            source_prompted = self.source.forward_embeddings(self.source_prompt_embedding(), ids, mask).logits
            source_plain = self.source.forward_embeddings(None, ids, mask).logits
            target_plain = self.backbone.forward_embeddings(None, input_ids, attention_mask).logits
        target_prompted = self.run_model(input_ids, attention_mask, False).logits
        return post_transfer_loss(
            source_prompted, source_plain, target_prompted, target_plain, self.alpha, self.temperature
        )
