"""GRAM: meta-learning a prompt initialisation and a gradient regulator on image–text pairs (Li et
al., "Gradient-Regulated Meta-Prompt Learning for Generalizable Vision-Language Models", ICCV 2023).

GRAM prepares prompt tuning rather than doing it: from unlabelled web image–caption pairs it learns
(i) an initial context ``P₀`` for CoOp-style text prompts and (ii) a gradient-regulating function ψ
(:class:`~lightning_prompts.optim.GradientRegulator`); a later few-shot tuning starts from ``P₀``
(``prompt_init`` of any method) with every prompt gradient replaced by ψ(gradient)
(:class:`~lightning_prompts.callbacks.GradientRegulation`).

One meta-task is a support set and a query set of pairs from two *different* domains; with the
CLIP contrastive loss ``L`` of captions prompted as ``[SOS] P <caption>. [EOT]`` against their images:

    g  = ∇_P L_support(P)                 (no second-order graph)
    P' = P − α · ψ(g)                     (one regulated inner step)
    meta-loss = L_query(P')               → updates P (first-order) and ψ (exactly, through ψ(g))

so ψ learns to turn a gradient computed on one domain into a step that helps on another.

No official code exists; where the paper is silent we decided (and the docs list it):

* domains: k-means (:func:`~lightning_prompts.utils.kmeans.kmeans`) of the frozen model's image and
  caption features concatenated ("cross-modal"), one level, ``num_domains`` clusters, computed once
  at the start of ``fit``; a ``domain`` column in the data overrides it. The paper's Cross-Modal
  Hierarchical Clustering builds a hierarchy; we use its first level.
* the meta-gradient of ``P`` is first-order (MAML's first-order approximation); ψ's is exact.
* ψ's form: see :mod:`lightning_prompts.optim.gradient_regulator` (coordinate-wise, identity at start).
* ``inner_lr`` 0.1 as the inner learning rate of SUPMER (the same group's language-model version of
  this idea, which has code); AdamW 0.002 for ``P`` and ψ.
* captions too long for the context are cut at word boundaries.
* validation: the symmetric contrastive loss and image→caption top-1 among a validation batch, with
  the current ``P`` (no inner step).

At the end of ``fit`` it writes ``<output_dir>/prompt_init.safetensors`` (the context, under CoOp's
name ``prompt.ctx``, with the backbone identity) and ``<output_dir>/regulator.safetensors``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch import Tensor

from lightning_prompts.backbones.vision_language import VisionLanguageBackbone
from lightning_prompts.batch import CAPTION, IMAGE, INDEX
from lightning_prompts.data.protocols import PairDomains, provided
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods.base import PromptModule
from lightning_prompts.metrics.validation_means import log_validation_mean
from lightning_prompts.optim.gradient_regulator import GradientRegulator
from lightning_prompts.prompts.text_context import ClassContextPrompt
from lightning_prompts.registry import register_pretraining
from lightning_prompts.utils.kmeans import kmeans


def contrastive_loss(image_features: Tensor, text_features: Tensor, scale: Tensor) -> Tensor:
    """CLIP's symmetric InfoNCE of matching rows (features L2-normalised), in float32: under ``bf16-true`` the
    caption features are bfloat16 while the cached image features stay float32."""
    logits = scale.float() * image_features.float() @ text_features.float().t()
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


@register_pretraining(
    family="clip",
    paper="Li et al., ICCV 2023 — Gradient-Regulated Meta-Prompt Learning for Generalizable Vision-Language Models",
    overlay="clip",
)
class GRAM(PromptModule):
    """Meta-learn a context initialisation and a gradient regulator (see the module docstring).

    Args:
        backbone: a frozen CLIP-family backbone (the one the prompts will later be tuned on).
        n_ctx, ctx_init, init_std: the context, as :class:`~lightning_prompts.methods.CoOp`'s (use the
            same values in the CoOp run that loads it).
        inner_lr: α of the regulated inner step.
        regulator_hidden: width of ψ's coordinate-wise MLP.
        num_domains: k-means clusters when the data has no domain column.
        output_dir: where ``prompt_init.safetensors`` and ``regulator.safetensors`` are written.
        classnames: unused (image–text pairs have no classes); accepted for the CLI link.
        **kwargs: ``optimizer``, ``lr_scheduler``, ``param_group_lr`` (groups ``prompt``, ``regulator``).
    """

    default_optimizer: ClassVar[dict[str, Any]] = {
        "class_path": "torch.optim.AdamW",
        "init_args": {"lr": 0.002, "weight_decay": 0.0},
    }

    def __init__(
        self,
        backbone: VisionLanguageBackbone,
        n_ctx: int | None = 4,
        ctx_init: str | None = "a photo of a",
        init_std: float = 0.02,
        inner_lr: float = 0.1,
        regulator_hidden: int = 16,
        num_domains: int = 8,
        output_dir: str | Path = "outputs/gram",
        classnames: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, None, **kwargs)
        if inner_lr <= 0:
            raise ValueError(f"inner_lr must be positive, got {inner_lr}.")
        if num_domains < 2:
            raise ValueError(f"num_domains must be at least 2 (support and query differ), got {num_domains}.")
        self.prompt = ClassContextPrompt(self.backbone, ["caption"], n_ctx=n_ctx, ctx_init=ctx_init, init_std=init_std)
        self.regulator = GradientRegulator(regulator_hidden)
        self.inner_lr, self.num_domains, self.output_dir = inner_lr, num_domains, Path(output_dir)
        self._fitted_captions: dict[str, str] = {}
        self._pair_image_features: Tensor | None = None  # frozen features of the training pairs, by index

    def param_groups(self) -> list[dict[str, Any]]:
        return [
            {"name": "prompt", "params": [self.prompt.ctx]},
            {"name": "regulator", "params": list(self.regulator.parameters())},
        ]

    # -- features -----------------------------------------------------------------------------------
    def fit_caption(self, caption: str) -> str:
        """``caption`` cut at a word boundary so that the prompted caption fits the text context."""
        fitted = self._fitted_captions.get(caption)
        if fitted is None:
            words = caption.replace("_", " ").split()
            limit = self.backbone.context_length
            while (
                len(words) > 1 and self.backbone.token_count(f"{self.prompt.prompt_prefix} {' '.join(words)}.") > limit
            ):
                words.pop()
            fitted = self._fitted_captions[caption] = " ".join(words)
        return fitted

    def caption_features(self, captions: Sequence[str], ctx: Tensor | None = None) -> Tensor:
        """L2-normalised features of ``[SOS] ctx <caption>. [EOT]`` (``ctx`` default: the learned one)."""
        self.prompt.set_classnames([self.fit_caption(caption) for caption in captions], self.backbone)
        embeddings, eot = self.prompt(ctx)
        return F.normalize(self.backbone.encode_text_embeddings(embeddings, eot), dim=-1)

    @torch.no_grad()
    def image_features(self, images: Tensor) -> Tensor:
        return F.normalize(self.backbone.encode_image(images, patch_tokens=False).features, dim=-1)

    # -- domains ------------------------------------------------------------------------------------
    def check_ready(self, stage: str, callbacks: Any, datamodule: Any | None) -> None:
        if stage in ("test", "predict"):  # from setup too: before any step
            raise ConfigurationError(
                f"GRAM has no {stage} stage: tune a method from its output (prompt_init, GradientRegulation)."
            )
        super().check_ready(stage, callbacks, datamodule)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and provided(self.datamodule, PairDomains) is None:
            raise ConfigurationError("GRAM meta-learns on image–text pairs: use ImageTextDataModule.")

    def on_fit_start(self) -> None:
        # here, not in setup: the module is on its device, and the training loader is not built yet
        datamodule = provided(self.datamodule, PairDomains)
        assert datamodule is not None
        if datamodule.domains is None:
            # without drawing from the run's generators (a loader's iterator draws a seed): a resumed run clusters
            # again after restoring them, and must leave them where the uninterrupted run has them
            with torch.random.fork_rng(devices=[]):
                datamodule.assign_domains(self.cluster_domains(datamodule.pairs_dataloader("train")))

    @torch.no_grad()
    def cluster_domains(self, loader: Any) -> list[int]:
        """k-means of the frozen model's concatenated image and caption features (one pass). The image
        features are kept (on the CPU) and reused by every meta-task: the preprocessing is deterministic
        and the image encoder frozen, so they never change."""
        images, texts = [], []
        for batch in loader:
            images.append(self.image_features(batch[IMAGE].to(self.device)).float().cpu())
            captions = [self.fit_caption(caption) for caption in batch[CAPTION]]
            texts.append(F.normalize(self.backbone.encode_text(captions), dim=-1).float().cpu())
        self._pair_image_features = torch.cat(images)
        features = torch.cat([self._pair_image_features, torch.cat(texts)], dim=1)
        clusters = min(self.num_domains, features.shape[0])
        labels, _ = kmeans(features, clusters, seed=0)
        sizes = torch.bincount(labels, minlength=clusters).tolist()
        rank_zero_info(f"GRAM: {features.shape[0]} training pairs in {clusters} domains of sizes {sizes}.")
        return labels.tolist()

    # -- steps --------------------------------------------------------------------------------------
    def meta_loss(
        self, images: Tensor, captions: Sequence[str], image_features: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(support loss, query loss after the regulated inner step)`` of one meta-task: the first
        half of the pairs is the support set, the second half the query set. ``image_features``: the
        images' frozen features when already known (then ``images`` is not encoded)."""
        half = len(captions) // 2
        image = self.image_features(images) if image_features is None else image_features
        scale = self.backbone.logit_scale
        ctx = self.prompt.ctx
        support = contrastive_loss(image[:half], self.caption_features(captions[:half]), scale)
        (gradient,) = torch.autograd.grad(support, ctx)  # first-order: no graph through the gradient
        adapted = ctx - self.inner_lr * self.regulator(gradient)
        query = contrastive_loss(image[half:], self.caption_features(captions[half:], adapted), scale)
        return support.detach(), query

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        captions = batch[CAPTION]
        if len(captions) < 4 or len(captions) % 2:
            raise ValueError(f"a meta-task batch holds a support and a query set of equal size, got {len(captions)}.")
        cached = None
        if self._pair_image_features is not None:
            cached = self._pair_image_features[batch[INDEX].cpu()].to(self.device)
        support, query = self.meta_loss(batch[IMAGE], captions, cached)
        size = len(captions) // 2
        self.log("train/support_loss", support, batch_size=size)
        self.log("train/loss", query, prog_bar=True, batch_size=size)
        return query

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        image = self.image_features(batch[IMAGE])
        text = self.caption_features(batch[CAPTION])
        # a batch of one pair (a split's last, or a process's share) is retrieved from itself: loss 0, accuracy 1;
        # it is logged with no weight (every process still takes part in the synchronisation of the means)
        size = image.shape[0] if image.shape[0] > 1 else 0
        why = "every batch held one pair: give each process at least 2 validation pairs per batch"
        loss = contrastive_loss(image, text, self.backbone.logit_scale)
        log_validation_mean(self, "loss", loss, size, when_empty=why)
        hits = (image @ text.t()).argmax(dim=1) == torch.arange(image.shape[0], device=image.device)
        log_validation_mean(self, "acc", hits.float().mean(), size, when_empty=why, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        pass  # val/acc is logged per batch (retrieval within the batch), not by the classification metric

    # -- outputs ------------------------------------------------------------------------------------
    @rank_zero_only
    def on_fit_end(self) -> None:
        self.export(self.output_dir)

    def export(self, directory: str | Path) -> tuple[Path, Path]:
        """Write ``prompt_init.safetensors`` and ``regulator.safetensors`` into ``directory``."""
        directory = Path(directory)
        prompt = self.export_prompt(directory / "prompt_init.safetensors", prefix="prompt.")
        regulator = self.regulator.save(directory / "regulator.safetensors")
        rank_zero_info(f"GRAM: wrote {prompt} and {regulator}.")
        return prompt, regulator
