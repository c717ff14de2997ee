"""Test-time prompt tuning (TPT; Shu et al., "Test-Time Prompt Tuning for Zero-Shot Generalization in
Vision-Language Models", NeurIPS 2022; official code: github.com/azshue/TPT) as an evaluator.

For every test image, with ``N`` random views of it (the data module's ``test_views``, TPT: 63) and
the image itself:

1. the method's trainable tensors (CoOp's context) are reset to their values at the start of the test
   and a fresh AdamW (lr 5e-3) is made, so every sample starts from the same prompt;
2. the ``ρ = 10%`` views (original included) whose predictions have the lowest entropy are selected
   at the first step and kept for the later ones;
3. the entropy of their *averaged probability*, ``H(p̄)`` with ``p̄ = mean_v softmax(z_v)`` (computed
   as a log-mean-exp of log-probabilities), is minimised for ``steps`` steps (TPT: 1);
4. the image itself is classified with the tuned prompt.

The views of one image are scored in one batch, and when the method leaves the image encoder
unprompted (``image_side_frozen``: CoOp), their image features are computed once per sample instead
of once per step (they cannot change). ``tests/evaluation/test_test_time.py`` re-computes the
selection, the loss and the reset.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lightning_prompts.batch import IMAGE, IMAGE_VIEWS
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.evaluation.base import Stage
from lightning_prompts.evaluation.classification import ClassificationEvaluator
from lightning_prompts.registry import register_evaluator

if TYPE_CHECKING:
    from lightning_prompts.methods.base import PromptModule


def select_confident(logits: Tensor, fraction: float) -> Tensor:
    """Indices of the ``int(V · fraction)`` rows of ``logits`` ``(V, C)`` with the lowest entropy (TPT's count),
    at least one: with few views (``V · fraction < 1``) TPT's count would select nothing and its loss would
    be the entropy of an empty mean. In fp32: bf16 entropies over many classes tie (6 distinct among 64 views at
    1,000 classes), and the cut would fall among ties."""
    logits = logits.float()
    entropy = -(logits.softmax(dim=-1) * logits.log_softmax(dim=-1)).sum(dim=-1)
    return torch.argsort(entropy, descending=False)[: max(1, int(logits.shape[0] * fraction))]


def average_probability_entropy(logits: Tensor) -> Tensor:
    """``H(mean_v softmax(z_v))`` of ``logits`` ``(V, C)``, via ``log p̄ = logsumexp_v log p_v − log V``."""
    log_probabilities = logits.float().log_softmax(dim=-1)
    log_mean = (log_probabilities.logsumexp(dim=0) - math.log(logits.shape[0])).clamp(
        min=torch.finfo(torch.float32).min
    )
    return -(log_mean * log_mean.exp()).sum(dim=-1)


@register_evaluator()
class TestTimePromptTuning(ClassificationEvaluator):
    """TPT at test (see the module docstring); validation is plain accuracy, as without it.

    Args:
        steps: optimisation steps per test image (TPT: 1; DiffTPT: 4).
        lr: AdamW learning rate (5e-3).
        selection: the share of views kept by confidence (0.1).
    """

    tunes_at_test_time = True

    __test__ = False  # not a pytest test class, whatever its name says

    def __init__(self, steps: int = 1, lr: float = 5e-3, selection: float = 0.1) -> None:
        super().__init__()
        if steps < 1 or lr <= 0 or not 0 < selection <= 1:
            raise ConfigurationError("TestTimePromptTuning: steps >= 1, lr > 0 and 0 < selection <= 1.")
        self.steps, self.lr, self.selection = steps, lr, selection
        self._initial: dict[str, Tensor] = {}
        self._scaler: torch.amp.GradScaler | None = None

    def check_ready(self, module: PromptModule, datamodule: Any | None, stage: str) -> None:
        super().check_ready(module, datamodule, stage)
        if stage != "test":
            return
        if not any(p.requires_grad for p in module.parameters()):
            raise ConfigurationError(
                f"TestTimePromptTuning tunes a method's prompt; {type(module).__name__} has no trainable tensor."
            )
        if not getattr(datamodule, "test_views", 0):
            raise ConfigurationError(
                "TestTimePromptTuning needs test-time views: give the data module test_views (TPT: 63)."
            )

    def start(self, module: PromptModule, stage: Stage) -> None:
        super().start(module, stage)
        if stage == "test":  # the prompt every test image starts from
            self._initial = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
            self._scaler = None

    def score(self, module: PromptModule, batch: Any, stage: Stage, dataloader_idx: int) -> Tensor:
        if stage != "test":
            return super().score(module, batch, stage, dataloader_idx)
        rows = []
        for index in range(batch[IMAGE].shape[0]):
            rows.append(self.tune_and_predict(module, batch[IMAGE][index], self.views(batch, index)))
        return module.evaluation_scores(batch, torch.cat(rows))

    def views(self, batch: Any, index: int) -> Tensor:
        """The views ``(V, 3, H, W)`` of test image ``index`` that the prompt is tuned on (besides the image)."""
        return batch[IMAGE_VIEWS][index]

    def select(self, logits: Tensor) -> Tensor:
        """Indices of the rows of ``logits`` ``(1 + V, C)`` (row 0: the image) whose entropy is minimised."""
        return select_confident(logits, self.selection)

    def reset(self, module: PromptModule) -> list[Tensor]:
        """Put the trainable tensors back to their test-start values; return them."""
        parameters = dict(module.named_parameters())
        with torch.no_grad():
            for name, value in self._initial.items():
                parameters[name].copy_(value)
                parameters[name].grad = None
        return [parameters[name] for name in self._initial]

    def gradient_scaler(self, module: PromptModule) -> torch.amp.GradScaler | None:
        """TPT's float16 gradient scaler (initial factor 1,000, kept over the test's images, as the official code
        keeps one for the run) when the test runs under float16 autocast (precision ``16-mixed``), where the
        backward of the entropy's small gradients could flush to zero; none otherwise (float32 and bfloat16 have
        float32's range)."""
        device = module.device.type
        if not (torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.float16):
            return None
        if self._scaler is None:
            self._scaler = torch.amp.GradScaler(device, init_scale=1000.0)
        return self._scaler

    def tune(self, module: PromptModule, logits_of: Callable[[], Tensor]) -> None:
        """Reset the prompt, then ``steps`` AdamW steps on the entropy of the mean probability of the most
        confident rows of ``logits_of()`` (the rows are chosen at the first step and kept, as TPT does), through
        :meth:`gradient_scaler` under float16 autocast."""
        optimizer = torch.optim.AdamW(self.reset(module), lr=self.lr)
        scaler = self.gradient_scaler(module)
        selected = None
        for _ in range(self.steps):
            logits = logits_of()
            if selected is None:
                selected = self.select(logits.detach())
            loss = average_probability_entropy(logits[selected])
            optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:  # a step whose scaled gradients overflow is skipped and the factor halved, as in TPT's code
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()

    def tune_and_predict(self, module: PromptModule, image: Tensor, views: Tensor) -> Tensor:
        """Logits ``(1, C)`` of ``image`` after tuning on ``[image, *views]`` from the initial prompt."""
        # Lightning tests under inference mode; the tuning steps need autograd (on copies of the inputs)
        with torch.inference_mode(False), torch.enable_grad():
            inputs = torch.cat([image.unsqueeze(0), views]).clone()
            if getattr(module, "image_side_frozen", False):  # the views' features cannot change: once
                with torch.no_grad():
                    features = module.image_features(inputs)
                self.tune(module, lambda: module.classify_features(features).logits)
                with torch.no_grad():
                    return module.classify_features(features[:1]).logits.detach()
            self.tune(module, lambda: module(inputs).logits)
            with torch.no_grad():
                return module(inputs[:1]).logits.detach()

    def finish(self, module: PromptModule, stage: Stage) -> dict[str, Tensor]:
        if stage == "test" and self._initial:
            self.reset(module)  # leave the module as the test found it
        return super().finish(module, stage)
