"""Local-Prompt: class-specific local prompts and negative local prompts for few-shot OOD detection.

Zeng et al., "Local-Prompt: Extensible Local Prompts for Few-Shot Out-of-Distribution Detection", ICLR 2025
(official code: AuroraZengfh/Local-Prompt, ``trainers/localprompt.py``). The *global* prompts stay frozen
("a photo of a {c}."); what is learned works on regions, the image's patch tokens in the joint space
(:meth:`~lightning_prompts.backbones.VisionLanguageBackbone.local_features`):

* a class-specific local prompt per ID class (16 context vectors each, CoOp's CSC) and ``M`` negative local
  prompts (16 vectors, no class word; 300 in the paper);
* **global-prompt-guided views**: every training image comes as ``V`` random crops (the data module's
  ``views: 16``); the views are ranked by the cosine of their global feature to the frozen global text
  feature of the label; the top ``num_positive_views`` (8) are positives, the least similar view is the
  negative;
* for each positive view in turn, **one optimizer step** on ``L_pos + 5 · L_neg + 0.5 · L_div`` (as the
  official code does; the negative view is the same for all eight):
  - ``L_pos`` (regional contrast): over the top-k regions, the label's local prompt against every local
    and negative prompt on the positive view;
  - ``L_neg``: on the negative view, the negative prompts at the k regions where the label's local prompt
    scores highest, against the local prompts' own top-k regions;
  - ``L_div``: the mean pairwise cosine of the negative prompts' features (the sum over all pairs, the
    diagonal included, divided by ``M (M − 1)``, as the official code computes it).

At test the class prediction is ``argmax_c exp(cos_global) · mean_top-k exp(cos_local / T)``
(``logits`` hold its logarithm) and the OOD score is **R-MCM**
(:func:`~lightning_prompts.evaluation.ood_scores.regional_mcm`): global MCM plus the mean of the top-k
regional probabilities over ID and negative local prompts.

Choices, with the official code as reference: the training top-k is 50 (the official script means 50 but
passes 20 through a shell bug, ``$10`` read as ``$1`` then "0"), test top-k 10; k is capped at the number
of regions of the backbone; the losses are computed with ``logsumexp`` (the official code divides by the
first term instead, which is the same number up to rounding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_prompts.backbones.vision_language import VisionLanguageBackbone
from lightning_prompts.batch import IMAGE, LABEL, image_view
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods.base import CLIPPromptModule
from lightning_prompts.outputs import PromptOutput
from lightning_prompts.prompts.text_context import ClassContextPrompt
from lightning_prompts.registry import register_method
from lightning_prompts.utils.similarity import similarity_logits


def regional_contrast_loss(
    positive_local: Tensor, positive_negative: Tensor, labels: Tensor, top_k: int, temperature: float = 1.0
) -> Tensor:
    """``L_pos``: ``−log Σ_top-k exp(z_y / T) / Σ exp(z / T)`` over the top-k regions of every local prompt
    (``positive_local`` ``(B, N, C)``) and every negative prompt (``positive_negative`` ``(B, N, M)``), each
    prompt with its own top-k regions; the numerator takes the label's top-k regions."""
    rows = torch.arange(labels.shape[0], device=labels.device)
    label_scores = positive_local[rows, :, labels]  # (B, N)
    label_top = label_scores.topk(top_k, dim=1).values
    local_top = positive_local.topk(top_k, dim=1).values.flatten(1)
    negative_top = positive_negative.topk(top_k, dim=1).values.flatten(1)
    everything = torch.cat([local_top, negative_top], dim=1)
    return -(torch.logsumexp(label_top / temperature, dim=1) - torch.logsumexp(everything / temperature, dim=1)).mean()


def negative_view_loss(
    negative_negative: Tensor, negative_local: Tensor, labels: Tensor, top_k: int, temperature: float = 1.0
) -> Tensor:
    """``L_neg`` on the negative view: the negative prompts' scores ``(B, N, M)`` at the k regions where the
    label's local prompt scores highest, against those plus the local prompts' own top-k ``(B, N, C)``."""
    rows = torch.arange(labels.shape[0], device=labels.device)
    regions = negative_local[rows, :, labels].topk(top_k, dim=1).indices  # (B, k)
    chosen = negative_negative.gather(1, regions.unsqueeze(-1).expand(-1, -1, negative_negative.shape[-1]))
    local_top = negative_local.topk(top_k, dim=1).values
    numerator = torch.logsumexp(chosen.flatten(1) / temperature, dim=1)
    denominator = torch.logsumexp(torch.cat([chosen, local_top], dim=-1).flatten(1) / temperature, dim=1)
    return -(numerator - denominator).mean()


def diversity_loss(negative_text: Tensor) -> Tensor:
    """``L_div``: ``Σ_ij cos(n_i, n_j) / (M (M − 1))``, the diagonal included (the official normalisation)."""
    count = negative_text.shape[0]
    normalised = F.normalize(negative_text, dim=-1)
    return (normalised @ normalised.t()).sum() / (count * max(count - 1, 1))


@register_method(
    family="clip",
    paper="ICLR 2025 — Local-Prompt: Extensible Local Prompts for Few-Shot Out-of-Distribution Detection",
    code="AuroraZengfh/Local-Prompt",
    example={"num_negative_prompts": 4, "n_ctx": 2, "top_k": 2, "test_top_k": 2, "num_positive_views": 1},
)
class LocalPrompt(CLIPPromptModule):
    """Class-specific and negative local prompts on regions, frozen global prompts (see the module docstring).

    Args:
        backbone: a CLIP-family backbone whose patch tokens map into the joint space (ViT towers,
            :class:`~lightning_prompts.backbones.StandInCLIP`).
        classnames: the ID classes.
        n_ctx: context vectors per local prompt (16).
        num_negative_prompts: negative local prompts ``M`` (300).
        top_k: regions per prompt in the training losses (50).
        test_top_k: regions per prompt for the prediction and R-MCM (10).
        num_positive_views: positive views per image, one optimizer step each (8).
        negative_weight, diversity_weight: the weights of ``L_neg`` (5) and ``L_div`` (0.5).
        temperature: ``T`` of the losses and scores (1).
        init_std: standard deviation of the prompts' random initialisation (0.02).
        **kwargs: see :class:`~lightning_prompts.methods.CLIPPromptModule` (``frozen_template`` is the global
            prompt, "a photo of a {}."); the default evaluator is OOD detection with ``score: r_mcm``.
    """

    default_optimizer: ClassVar[dict[str, Any]] = {
        "class_path": "torch.optim.SGD",
        "init_args": {"lr": 0.002, "momentum": 0.9, "weight_decay": 5e-4},
    }
    produced_fields: ClassVar[frozenset[str]] = frozenset({"logits", "image_features", "text_features"})
    #: one optimizer step per positive view on the method's own three losses
    accepts_loss_terms: ClassVar[bool] = False
    manual_steps: ClassVar[str] = "one step per positive view, as the official code does"

    def __init__(
        self,
        backbone: VisionLanguageBackbone,
        classnames: Sequence[str] | None = None,
        n_ctx: int = 16,
        num_negative_prompts: int = 300,
        top_k: int = 50,
        test_top_k: int = 10,
        num_positive_views: int = 8,
        negative_weight: float = 5.0,
        diversity_weight: float = 0.5,
        temperature: float = 1.0,
        init_std: float = 0.02,
        **kwargs: Any,
    ) -> None:
        if min(n_ctx, num_negative_prompts, top_k, test_top_k, num_positive_views) < 1:
            raise ConfigurationError("LocalPrompt: n_ctx, prompt counts, top-k and views must be at least 1.")
        if kwargs.get("evaluator") is None:
            from lightning_prompts.evaluation import OODEvaluator

            kwargs["evaluator"] = OODEvaluator(score="r_mcm")
        super().__init__(backbone, classnames, **kwargs)
        self.automatic_optimization = False  # one optimizer step per positive view
        self.top_k, self.test_top_k, self.num_positive_views = top_k, test_top_k, num_positive_views
        self.negative_weight, self.diversity_weight, self.temperature = negative_weight, diversity_weight, temperature
        self.prompt = ClassContextPrompt(self.backbone, self.classnames, n_ctx, class_specific=True, init_std=init_std)
        # no class word: the prompt text is "X X … X ." as in the official code
        negatives = [""] * num_negative_prompts
        self.negative_prompt = ClassContextPrompt(
            self.backbone, negatives, n_ctx, class_specific=True, init_std=init_std
        )
        self._negative_cache: tuple[Any, Tensor] | None = None

    # -- text and image features --------------------------------------------------------------------------
    def rebuild_class_prompts(self, classnames: Sequence[str]) -> None:
        self.prompt.set_classnames(classnames, self.backbone)

    def class_text_features(self) -> Tensor:
        """The local prompts' features ``(C, D)``, L2-normalised."""
        prompts, eot = self.prompt()
        return F.normalize(self.backbone.encode_text_embeddings(prompts, eot), dim=-1)

    def negative_text_features(self) -> Tensor:
        """The negative local prompts' features ``(M, D)``, L2-normalised (computed once per parameter
        version in evaluation, like the class prompts: 300 prompts need not pass the text encoder per batch)."""
        key = (self.negative_prompt.ctx._version, self.device)
        cacheable = not (self.training or torch.is_grad_enabled())
        if cacheable and self._negative_cache is not None and self._negative_cache[0] == key:
            return self._negative_cache[1]
        prompts, eot = self.negative_prompt()
        features = F.normalize(self.backbone.encode_text_embeddings(prompts, eot), dim=-1)
        self._negative_cache = (key, features) if cacheable else None
        return features

    @torch.no_grad()
    def encode_views(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised global features ``(B, D)`` and (unnormalised) local features ``(B, N, D)``."""
        encoding = self.backbone.encode_image(images)
        return F.normalize(encoding.features, dim=-1), self.backbone.local_features(encoding)

    def image_features(self, images: Tensor) -> Tensor:
        return self.encode_views(images)[0]

    # -- inference ----------------------------------------------------------------------------------------
    def forward(self, images: Tensor, fields: frozenset[str] = frozenset()) -> PromptOutput:
        """Global and regional logits; ``logits`` = ``cos_global + log mean_top-k exp(cos_local / T)``."""
        global_features, local = self.encode_views(images)
        local = F.normalize(local, dim=-1)
        scale = self.logit_scale
        global_text = self.frozen_text_features()
        local_text = self.encode_class_prompts()
        global_logits = similarity_logits(scale, global_features, global_text)
        local_logits = similarity_logits(scale, local, local_text)
        negative_logits = similarity_logits(scale, local, self.negative_text_features())
        k = min(self.test_top_k, local.shape[1])
        # the logits are fp32 (similarity_logits): under bf16 the log-sum-exp (about log k) rounded in steps larger
        # than the classes' gaps, and a third of the rows tied at the top over 1,000 classes
        regional = (local_logits / scale / self.temperature).topk(k, dim=1).values  # (B, k, C)
        logits = global_logits / scale + torch.logsumexp(regional, dim=1) - math.log(k)
        extras = {
            "global_logits": global_logits,
            "local_logits": local_logits,
            "negative_local_logits": negative_logits,
        }
        return PromptOutput(logits=logits, image_features=global_features, text_features=local_text, extras=extras)

    def regional_id_scores(self, output: PromptOutput) -> Tensor:
        """R-MCM of a forward pass's output (higher: more in-distribution)."""
        from lightning_prompts.evaluation.ood_scores import regional_mcm

        extras = output.extras
        return regional_mcm(
            extras["global_logits"],
            extras["local_logits"],
            extras["negative_local_logits"],
            self.logit_scale.detach(),
            self.test_top_k,
            self.temperature,
        )

    # -- training -----------------------------------------------------------------------------------------
    def local_losses(
        self, positive: Tensor, negative: Tensor, labels: Tensor, local_text: Tensor, negative_text: Tensor
    ) -> dict[str, Tensor]:
        """The three losses for one positive view's and the negative view's local features ``(B, N, D)``."""
        positive, negative = F.normalize(positive, dim=-1), F.normalize(negative, dim=-1)
        scale = self.logit_scale
        k = min(self.top_k, positive.shape[1])
        pos_local = scale * positive @ local_text.t()
        neg_local = scale * negative @ local_text.t()
        pos_negative = scale * positive @ negative_text.t()
        neg_negative = scale * negative @ negative_text.t()
        terms = {
            "local": regional_contrast_loss(pos_local, pos_negative, labels, k, self.temperature),
            "local_negative": negative_view_loss(neg_negative, neg_local, labels, k, self.temperature),
            "diversity": diversity_loss(negative_text),
        }
        terms["loss"] = terms["local"] + self.negative_weight * terms["local_negative"]
        terms["loss"] = terms["loss"] + self.diversity_weight * terms["diversity"]
        return terms

    @torch.no_grad()
    def select_views(self, views: Sequence[Tensor], labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Local features of every view ``(V, B, N, D)``, the positive views ``(P, B)`` (most similar first)
        and the negative view ``(B,)``: by the cosine of each view's global feature to the frozen global
        text feature of the label."""
        encoded = [self.encode_views(view) for view in views]
        global_features = torch.stack([g for g, _ in encoded])  # (V, B, D)
        local = torch.stack([loc for _, loc in encoded])
        label_text = self.frozen_text_features()[labels].to(global_features.dtype)  # (B, D)
        similarity = (global_features * label_text).sum(dim=-1)  # (V, B)
        positives = similarity.topk(self.num_positive_views, dim=0).indices
        negative = similarity.topk(1, dim=0, largest=False).indices[0]
        return local, positives, negative

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        views = self.training_views(batch)
        labels = batch[LABEL]
        local, positives, negative = self.select_views(views, labels)
        rows = torch.arange(labels.shape[0], device=labels.device)
        optimizer = self.optimizers()
        for step in range(self.num_positive_views):
            terms = self.local_losses(
                local[positives[step], rows], local[negative, rows], labels,
                self.encode_class_prompts(), self.negative_text_features(),
            )  # fmt: skip
            optimizer.zero_grad()
            self.manual_backward(terms["loss"])
            optimizer.step()
        batch_size = int(labels.shape[0])
        for name, value in terms.items():
            self.log(f"train/{name}", value.detach(), batch_size=batch_size, prog_bar=name == "loss")
        return terms["loss"].detach()

    def training_views(self, batch: Any) -> list[Tensor]:
        """The batch's views (``image``, ``image_view2``, …)."""
        views = [batch[IMAGE]]
        while image_view(len(views) + 1) in batch:
            views.append(batch[image_view(len(views) + 1)])
        if len(views) < self.num_positive_views + 1:
            raise ConfigurationError(
                f"LocalPrompt ranks {self.num_positive_views} positive views and one negative among each image's "
                f"views; the batch has {len(views)} (set the data module's views: 16, as the paper does)."
            )
        return views

    def check_ready(self, stage: str, callbacks: Any, datamodule: Any | None) -> None:
        super().check_ready(stage, callbacks, datamodule)
        views = getattr(datamodule, "views", None)
        if stage == "fit" and views is not None and views < self.num_positive_views + 1:
            raise ConfigurationError(
                f"LocalPrompt needs at least {self.num_positive_views + 1} views of each training image "
                f"(num_positive_views + 1 negative); the data module makes {views} (set views: 16)."
            )
