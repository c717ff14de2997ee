"""PANDA — prompt transfer with knowledge distillation (Zhong et al., TKDE 2024; code: WHU-ZQH/PANDA).

Prompt transfer initialises a target task's prompt from a prompt trained on a source task ("vanilla
transfer") and tunes it on the target; the source knowledge tends to be forgotten. PANDA trains a
*fresh* student prompt on the target task and distils from the vanilla-transfer model as a teacher,
weighted by how transferable the source prompt is:

``loss = CE(z_student, y) + 0.1 · β · MSE(z_student, z_teacher) / B``

What the official code does, and we do (read at WHU-ZQH/PANDA@5efc6dc5, on P-tuning v2):

* student and teacher are P-tuning v2 models (:class:`~lightning_prompts.methods.PrefixTuning`); the
  teacher is the whole vanilla-transfer model — its prefixes *and* its classification head — frozen,
  run on the same batch under ``no_grad``; the student starts from a fresh prompt;
* ``F.mse_loss`` already averages over batch and classes, and the code divides by the batch size once
  more: we keep that (``/ B``);
* β is a constant (its ``--beta`` flag, 0.1 by default; the trainer's β schedules are computed and
  never used), so the distillation weight is 0.01 unless β is set, e.g. from
  :func:`prompt_transferability`.

The released code does not compute the paper's transferability metric; :func:`prompt_transferability`
implements the paper's description — both prompts embed the *target* task in the frozen model's space
(the mean last-layer state of the target texts under each prompt) and β is the cosine of the two
embeddings — and :func:`rank_source_prompts` orders candidate source prompts by it.

Where we deviate: the teacher runs in eval mode (the official teacher keeps dropout on); with
gradient accumulation Lightning scales the whole loss (the official code divides only the CE).

The three stages, with the files :meth:`~lightning_prompts.methods.PromptModule.export_prompt` writes:
``PrefixTuning`` on the source task → ``export_prompt("source.safetensors", prefix="prefix.")``;
``PrefixTuning(prompt_init="source.safetensors")`` on the target (vanilla transfer) →
``export_prompt("teacher.safetensors")``; ``PANDA(teacher_prompt="teacher.safetensors")`` on the target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from lightning_prompts.backbones.hf_text import HFText, masked_mean
from lightning_prompts.batch import ATTENTION_MASK, INPUT_IDS
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods.base.text import LabelWords, TextPromptModule
from lightning_prompts.methods.prefix_tuning import PrefixTuning
from lightning_prompts.outputs import PromptOutput
from lightning_prompts.registry import register_method


def panda_loss(student: Tensor, teacher: Tensor, targets: Tensor, beta: float, kd_scale: float = 0.1) -> Tensor:
    """``CE(student, y) + kd_scale · β · MSE(student, teacher) / B`` (MSE averaged over batch and classes)."""
    kd = F.mse_loss(student.float(), teacher.float()) / student.shape[0]
    return F.cross_entropy(student.float(), targets) + kd_scale * beta * kd


def task_embedding(
    method: TextPromptModule, prompt: Mapping[str, Tensor] | None, texts: Sequence[str], batch_size: int = 32
) -> Tensor:
    """The target texts embedded by the frozen model under ``prompt`` (tensors of ``method``'s prompt; ``None``:
    its own): the mean over texts of the mean last-layer state of their tokens."""
    total, count = None, 0
    runner = _EmbeddingRunner(method)
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            tokens = method.tokenize(texts[start : start + batch_size])
            ids, mask = tokens["input_ids"].to(method.device), tokens["attention_mask"].to(method.device)
            state = functional_call(
                runner, {f"method.{k}": v for k, v in (prompt or {}).items()}, (ids, mask), strict=False
            )
            total = state.sum(0) if total is None else total + state.sum(0)
            count += state.shape[0]
    assert total is not None, "no texts to embed"
    return total / count


class _EmbeddingRunner(torch.nn.Module):
    """Per-text mean last-layer states of ``method``'s model (the text's positions: the last ``T``)."""

    def __init__(self, method: TextPromptModule) -> None:
        super().__init__()
        self.method = method

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = self.method.run_model(input_ids, attention_mask, True).hidden_states[-1][:, -input_ids.shape[1] :]
        return masked_mean(hidden, attention_mask)


def _prompt_tensors(path: str | Path, method: TextPromptModule, keep: str = "") -> dict[str, Tensor]:
    """The tensors of an ``export_prompt`` file whose names start with ``keep``, checked to fit ``method`` as a
    ``prompt_init`` file is (same backbone, trainable tensors of the same shapes)."""
    chosen = {k: v for k, v in method.check_prompt_init(path).items() if k.startswith(keep)}
    if not chosen:
        what = keep or "trainable"
        raise ConfigurationError(f"prompt file {path} holds no {what} tensors of {type(method).__name__}.")
    return chosen


def prompt_transferability(
    method: TextPromptModule, source_prompt: str | Path, target_prompt: str | Path, texts: Sequence[str]
) -> float:
    """PANDA's β: the cosine between the target task's embeddings under the source and the target prompt
    (files written by ``export_prompt``; only their ``prefix.``/``prompt.`` tensors are used)."""
    keep = "prefix." if isinstance(method, PrefixTuning) else "prompt."
    source = task_embedding(method, _prompt_tensors(source_prompt, method, keep), texts)
    target = task_embedding(method, _prompt_tensors(target_prompt, method, keep), texts)
    return float(F.cosine_similarity(source, target, dim=0))


def rank_source_prompts(
    method: TextPromptModule, sources: Mapping[str, str | Path], target_prompt: str | Path, texts: Sequence[str]
) -> list[tuple[str, float]]:
    """Candidate source prompts ordered by :func:`prompt_transferability` to the target task, best first."""
    scores = [(name, prompt_transferability(method, path, target_prompt, texts)) for name, path in sources.items()]
    return sorted(scores, key=lambda item: item[1], reverse=True)


@register_method(
    family="text",
    title="PANDA",
    paper="Zhong et al., TKDE 2024 — PANDA: Prompt Transfer Meets Knowledge Distillation for Efficient Model Adaptation",  # noqa: E501
    code="WHU-ZQH/PANDA",
    overlay="panda",
    example={"num_virtual_tokens": 4},
)
class PANDA(PrefixTuning):
    """A fresh P-tuning v2 prompt trained on the target task with distillation from the vanilla-transfer model.

    Args:
        backbone: the frozen :class:`~lightning_prompts.backbones.HFText`; ``classnames``, ``num_virtual_tokens``,
            ``projection_hidden``, ``dropout``, ``label_words``, ``text_template``, ``truncate`` and ``seed`` are
            :class:`~lightning_prompts.methods.PrefixTuning`'s (the teacher file must have the same prefix shape
            and parameterisation).
        teacher_prompt: the vanilla-transfer model's ``export_prompt`` file (prefixes and head); ``None``
            trains without distillation (then PANDA is P-tuning v2).
        beta: the transferability β (the official default 0.1; :func:`prompt_transferability` computes the
            paper's).
        kd_scale: the constant in front of β (0.1).
        **kwargs: see :class:`~lightning_prompts.methods.PrefixTuning`.
    """

    def __init__(
        self,
        backbone: HFText,
        classnames: Sequence[str] | None = None,
        num_virtual_tokens: int = 20,
        projection_hidden: int | None = None,
        dropout: float = 0.0,
        teacher_prompt: str | None = None,
        beta: float = 0.1,
        kd_scale: float = 0.1,
        label_words: LabelWords | None = None,
        text_template: str = "{text}",
        truncate: bool = False,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            backbone, classnames, num_virtual_tokens, projection_hidden, dropout, label_words, text_template,
            truncate, seed=seed, **kwargs,
        )  # fmt: skip
        self.teacher_prompt, self.beta, self.kd_scale = teacher_prompt, float(beta), float(kd_scale)
        self._teacher: dict[str, Tensor] | None = None

    def teacher_tensors(self) -> dict[str, Tensor]:
        """The teacher's prefixes and head (read once), each on the device and in the dtype of the tensor it stands
        in for (a ``bf16-true`` run casts the student; the file holds float32)."""
        if self._teacher is None:
            if self.teacher_prompt is None:
                raise ConfigurationError("PANDA has no teacher_prompt to distil from.")
            self._teacher = _prompt_tensors(self.teacher_prompt, self)
        return {key: value.to(self.device, self._own_tensor(key).dtype) for key, value in self._teacher.items()}

    def _own_tensor(self, key: str) -> Tensor:
        owner, _, name = key.rpartition(".")
        return getattr(self.get_submodule(owner), name)

    def check_ready(self, stage: str, callbacks: Any, datamodule: Any | None) -> None:
        super().check_ready(stage, callbacks, datamodule)
        if stage == "fit" and self.teacher_prompt is not None:
            missing = [key for key in self.trainable_state_keys() if key not in self.teacher_tensors()]
            if missing:
                raise ConfigurationError(
                    f"teacher_prompt {self.teacher_prompt} lacks {missing}: export the whole vanilla-transfer model "
                    f"(export_prompt without a prefix), head included."
                )

    def teacher_logits(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The frozen teacher's class logits for a tokenized batch."""
        with torch.no_grad():
            output = functional_call(self, self.teacher_tensors(), (input_ids, attention_mask), strict=False)
        return output.logits

    def forward_batch(self, batch: Any, fields: frozenset[str] = frozenset()) -> PromptOutput:
        output = super().forward_batch(batch, fields)
        if self.training and self.teacher_prompt is not None:  # training steps distil; evaluation does not
            tokens = batch if INPUT_IDS in batch else self.on_before_batch_transfer(batch, 0)
            ids, mask = tokens[INPUT_IDS].to(self.device), tokens[ATTENTION_MASK].to(self.device)
            output.extras["teacher_logits"] = self.teacher_logits(ids, mask)
        return output

    def task_loss(self, output: PromptOutput, targets: Tensor) -> Tensor:
        """:func:`panda_loss` against the teacher's logits in training, cross-entropy otherwise."""
        teacher = output.extras.get("teacher_logits")
        if teacher is None:
            return super().task_loss(output, targets)
        return panda_loss(output.logits, teacher, targets, self.beta, self.kd_scale)
