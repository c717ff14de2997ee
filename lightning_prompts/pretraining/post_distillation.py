"""POST's stage 1: distil the large language model into the small one the data owner tunes a prompt on.

POST (Wang et al., ICML 2025; code: sprintml/POST, read at c0665e83) tunes the private prompt on a small
model *derived from the large one*, because a prompt transfers better between models that compute alike.
Its ``distill/`` folder does it DistilBERT's way, and so does this module:

1. the student starts as the teacher with only its first ``keep_first`` and last ``keep_last`` transformer
   layers (``extract_distill_model.py``: 3 + 3 of RoBERTa-base's 12, 2 + 2 of GPT2-XL's 48), embeddings and
   output head included (:mod:`~lightning_prompts.pretraining.layer_extraction`);
2. it is trained on public text to match the frozen teacher (``distiller.py``, causal-LM mode):

   ``loss = α_ce · T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)) + α_clm · CE(z_s, next token)
   + α_mse · ‖z_s − z_t‖² + α_cos · (1 − cos(h_s, h_t))``

   with ``z`` the logits over the whole vocabulary at every real (non-padding) position, the KL and the squared
   error summed over the vocabulary and averaged over those positions (``batchmean``), the next-token
   cross-entropy averaged over the predicted positions, and ``h`` the last hidden states (cosine averaged
   over real positions). Official defaults: T = 2, α_ce = α_clm = 0.5, α_mse = α_cos = 0; AdamW lr 5e-4,
   ε 1e-6, betas (0.9, 0.98), no weight decay, linear warm-up over 5 % of the updates then linear decay
   (``WarmupCosineLR(decay="linear")`` with ``lr_scheduler_interval: step`` in the recipes), gradients
   clipped to norm 5, 50 accumulated batches of 8 (Trainer settings). The teacher runs in eval mode, the
   student in train mode.

At the end of ``fit`` the student is written as a Hugging Face model folder (``student_path``; weights as
safetensors, config, tokenizer), which ``HFText(student_path, task="causal-lm")`` loads as the small model of
:class:`~lightning_prompts.methods.DPPromptTuning` / :class:`~lightning_prompts.methods.PromptTuning`
(stage 2) and as :class:`~lightning_prompts.methods.POST`'s ``source_backbone`` (stage 3).

Where we deviate: the texts come from a text data module (their labels unused), tokenized with the teacher's
tokenizer and cut at ``max_length`` tokens, instead of the official pre-binarised, length-grouped corpus; the
models get the attention mask (the official passes none in causal-LM mode: with right padding the real
positions' outputs are the same either way, and padding never enters the loss). Under DDP each term is averaged
over the positions of the whole global batch, so that several processes train as one process on the same batch
(the official's DDP averaged each process's own means, which weighs the processes' shares alike whatever their
token counts).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch import Tensor, nn

from lightning_prompts.backbones.hf_text import HFText, transformer_layers
from lightning_prompts.batch import TEXT
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods.base import PromptModule
from lightning_prompts.metrics.validation_means import log_validation_mean
from lightning_prompts.pretraining.layer_extraction import keep_layers, layers_to_keep
from lightning_prompts.registry import register_pretraining
from lightning_prompts.utils.distributed import global_batch_mean


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    input_ids: Tensor,
    attention_mask: Tensor,
    temperature: float = 2.0,
    alpha_ce: float = 0.5,
    alpha_clm: float = 0.5,
    alpha_mse: float = 0.0,
    alpha_cos: float = 0.0,
    student_hidden: Tensor | None = None,
    teacher_hidden: Tensor | None = None,
) -> dict[str, Tensor]:
    """The distillation loss of the module docstring and its parts (``"loss"``, ``"ce"``, ``"clm"``, and
    ``"mse"`` / ``"cos"`` when weighted). Logits ``(B, L, V)``, ids and mask ``(B, L)``, hidden ``(B, L, D)``."""
    real = attention_mask.bool()
    student, teacher = student_logits[real].float(), teacher_logits[real].float()  # (N, V)
    # every term is a sum over positions divided by the global batch's count of them: under DDP the processes'
    # shares hold different numbers of real tokens, and averaging their own means would weigh a share of 3 tokens
    # as much as one of 10 (one process: the official per-batch means)
    positions = student.shape[0]
    parts: dict[str, Tensor] = {}
    divergence = F.kl_div(
        F.log_softmax(student / temperature, dim=-1), F.softmax(teacher / temperature, dim=-1), reduction="sum"
    )
    parts["ce"] = global_batch_mean(divergence, positions) * (temperature**2)
    labels = input_ids.masked_fill(~real, -100)[:, 1:].flatten()
    next_token = F.cross_entropy(
        student_logits[:, :-1].flatten(0, 1).float(), labels, ignore_index=-100, reduction="sum"
    )
    parts["clm"] = global_batch_mean(next_token, (labels != -100).sum())
    loss = alpha_ce * parts["ce"] + alpha_clm * parts["clm"]
    if alpha_mse > 0:
        parts["mse"] = global_batch_mean(F.mse_loss(student, teacher, reduction="sum"), positions)
        loss = loss + alpha_mse * parts["mse"]
    if alpha_cos > 0:
        if student_hidden is None or teacher_hidden is None:
            raise ValueError("the cosine term needs both models' last hidden states.")
        s, t = student_hidden[real].float(), teacher_hidden[real].float()
        cosine = F.cosine_embedding_loss(s, t, s.new_ones(s.shape[0]), reduction="sum")
        parts["cos"] = global_batch_mean(cosine, positions)
        loss = loss + alpha_cos * parts["cos"]
    parts["loss"] = loss
    return parts


@register_pretraining(
    family="text",
    title="POST distillation",
    paper="Wang et al., ICML 2025 — POST: Privacy Of Soft-prompt Transfer",
    code="sprintml/POST",
    docs="methods/post.md",
    recipes="post",
    overlay="post_distillation",
    example={"contract_backbone": "tiny-gpt2"},
)
class POSTDistillation(PromptModule):
    """Distil a causal LM into a model of its first and last layers (POST's stage 1; see the module docstring).

    Args:
        backbone: the large (teacher) :class:`~lightning_prompts.backbones.HFText`, ``task="causal-lm"``; frozen.
        keep_first, keep_last: the teacher's layers the student starts from (the first and the last few).
        temperature: ``T`` of the distillation KL (2.0).
        alpha_ce, alpha_clm, alpha_mse, alpha_cos: weights of the KL, next-token, logit-MSE and hidden-state
            cosine terms (0.5, 0.5, 0, 0).
        freeze_word_embeddings, freeze_position_embeddings, freeze_lm_head: keep these student parts as the
            teacher's (the official ``--freeze_*`` flags; off by default). Where the output head shares the
            word embeddings (GPT-2, Gemma), freezing either freezes both.
        max_length: longest text in tokens (default: the teacher's limit); longer texts are cut.
        student_path: the folder the student is written to at the end of ``fit`` (``None``: don't).
        classnames: unused (distillation has no classes); accepted for the CLI link with a text data module.
        **kwargs: see :class:`~lightning_prompts.methods.PromptModule` (``optimizer``, ``lr_scheduler``…).
            Default optimizer: AdamW, lr 5e-4, ε 1e-6, betas (0.9, 0.98), no weight decay.
    """

    default_optimizer: ClassVar[dict[str, Any]] = {
        "class_path": "torch.optim.AdamW",
        "init_args": {"lr": 5e-4, "eps": 1e-6, "betas": [0.9, 0.98], "weight_decay": 0.0},
    }
    checkpoint_monitor: ClassVar[tuple[str, str]] = ("val/loss", "min")

    def __init__(
        self,
        backbone: HFText,
        keep_first: int = 3,
        keep_last: int = 3,
        temperature: float = 2.0,
        alpha_ce: float = 0.5,
        alpha_clm: float = 0.5,
        alpha_mse: float = 0.0,
        alpha_cos: float = 0.0,
        freeze_word_embeddings: bool = False,
        freeze_position_embeddings: bool = False,
        freeze_lm_head: bool = False,
        max_length: int | None = None,
        student_path: str | Path | None = "outputs/post/student",
        classnames: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, None, **kwargs)
        if not isinstance(self.backbone, HFText) or self.backbone.task != "causal-lm":
            raise ConfigurationError("POST distils a causal language model: use HFText(task='causal-lm').")
        if temperature <= 0 or min(alpha_ce, alpha_clm, alpha_mse, alpha_cos) < 0:
            raise ValueError("temperature must be positive and every alpha at least 0.")
        if alpha_ce + alpha_clm + alpha_mse + alpha_cos == 0:
            raise ValueError("at least one loss weight (alpha_ce, alpha_clm, alpha_mse, alpha_cos) must be positive.")
        teacher = self.backbone.model
        total = len(transformer_layers(teacher))
        self.student = keep_layers(copy.deepcopy(teacher), layers_to_keep(total, keep_first, keep_last))
        _forget_file_quantization(self.student)
        self.student.requires_grad_(True)
        frozen = []
        if freeze_word_embeddings:
            frozen.append(self.student.get_input_embeddings().weight)
        if freeze_lm_head:
            frozen += list(self.student.get_output_embeddings().parameters())
        if freeze_position_embeddings:
            positions = _position_embeddings(self.student)
            if positions is None:
                raise ConfigurationError(
                    f"{self.backbone.name} has no learned position embeddings to freeze (rotary positions?)."
                )
            frozen.append(positions.weight)
        for parameter in frozen:
            parameter.requires_grad_(False)
        self.student.train()
        self.temperature, self.student_path = float(temperature), student_path
        self.alphas = {"ce": alpha_ce, "clm": alpha_clm, "mse": alpha_mse, "cos": alpha_cos}
        self.max_length = max_length

    def check_ready(self, stage: str, callbacks: Any, datamodule: Any | None) -> None:
        """Distillation reads texts only: no classes to agree on with the data, no evaluator; and it trains with
        its own step, which loss-term callbacks cannot join."""
        if stage in ("test", "predict"):
            raise ConfigurationError(
                f"POSTDistillation has no {stage} stage: tune a prompt on the student it writes (student_path)."
            )
        terms = self.loss_terms(list(callbacks))
        if terms:
            names = sorted(type(term).__name__ for term in terms)
            raise ConfigurationError(f"POSTDistillation trains with its own loss; remove {', '.join(names)}.")

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"name": "student", "params": [p for p in self.student.parameters() if p.requires_grad]}]

    # -- the loss ---------------------------------------------------------------------------------
    def tokens(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """The teacher's tokens of ``texts`` (right-padded, cut at ``max_length``)."""
        tokenizer = self.backbone.tokenizer
        limit = self.max_length or self.backbone.max_length
        encoded = tokenizer(list(texts), padding=True, truncation=True, max_length=limit, return_tensors="pt")
        return encoded["input_ids"].to(self.device), encoded["attention_mask"].to(self.device)

    def loss_parts(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """:func:`distillation_loss` of a batch of texts."""
        return self.token_loss_parts(*self.tokens(texts))

    def token_loss_parts(self, input_ids: Tensor, attention_mask: Tensor) -> dict[str, Tensor]:
        """:func:`distillation_loss` of a batch of the teacher's tokens."""
        hidden = self.alphas["cos"] > 0
        with torch.no_grad():
            teacher = self.backbone.model(
                input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=hidden
            )
        student = self.student(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=hidden)
        return distillation_loss(
            student.logits, teacher.logits, input_ids, attention_mask, self.temperature,
            self.alphas["ce"], self.alphas["clm"], self.alphas["mse"], self.alphas["cos"],
            student.hidden_states[-1] if hidden else None, teacher.hidden_states[-1] if hidden else None,
        )  # fmt: skip

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        parts = self.loss_parts(batch[TEXT])
        size = len(batch[TEXT])
        for name, value in parts.items():
            if name != "loss":
                self.log(f"train/{name}", value, batch_size=size)
        self.log("train/loss", parts["loss"], prog_bar=True, batch_size=size)
        return parts["loss"]

    def on_train_epoch_start(self) -> None:
        self.student.train()  # as the official Distiller: dropout on in the student, whatever mode it was left in

    def on_validation_epoch_start(self) -> None:
        pass  # no classes to evaluate: validation measures the distillation loss

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        input_ids, attention_mask = self.tokens(batch[TEXT])
        parts = self.token_loss_parts(input_ids, attention_mask)
        # each term weighted by what it averages over (the KL by real tokens, the next-token loss by the tokens it
        # predicts), so the epoch's values do not depend on how the texts fall into batches and processes; the
        # mixed loss by real tokens
        # the next-token loss predicts every real token after the first: what its labels (!= -100) count
        tokens, predicted = int(attention_mask.sum()), int(attention_mask[:, 1:].sum())
        log_validation_mean(self, "loss", parts["loss"], tokens, dataloader_idx, prog_bar=True)
        log_validation_mean(self, "ce", parts["ce"], tokens, dataloader_idx)
        log_validation_mean(self, "clm", parts["clm"], predicted, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        pass

    def export_prompt(self, path: str | Path, prefix: str = "") -> Path:
        raise ConfigurationError(
            "POSTDistillation trains a student model, not a prompt: fit writes the student to student_path; tune a "
            "prompt on it and export that."
        )

    # -- the student ----------------------------------------------------------------------------
    @rank_zero_only
    def on_fit_end(self) -> None:
        if self.student_path is not None:
            rank_zero_info(f"POST distillation: wrote the student to {self.export_student(self.student_path)}.")

    def export_student(self, directory: str | Path) -> Path:
        """Write the student as a Hugging Face model folder (safetensors weights, config, tokenizer)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.student.save_pretrained(directory)
        self.backbone.tokenizer.save_pretrained(directory)
        return directory


def _forget_file_quantization(model: nn.Module) -> None:
    """Make a model loaded from a GGUF file say what it is: float weights. transformers dequantizes a GGUF file
    when it loads it (Gemma-3-270M from the ``[gemma]`` extra), but the model keeps the file's quantizer, and
    ``save_pretrained`` refuses to write a model with one; the student trains and is saved in floats."""
    if getattr(model, "hf_quantizer", None) is None:
        return
    if any(not parameter.is_floating_point() for parameter in model.parameters()):
        raise ConfigurationError("POST distillation needs a teacher with float weights, not a quantized one.")
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _position_embeddings(model: nn.Module) -> nn.Embedding | None:
    """A model's learned position embeddings (GPT-2 ``wpe``, BERT ``position_embeddings``), if it has them."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and name.rsplit(".", 1)[-1] in ("wpe", "position_embeddings"):
            return module
    return None
