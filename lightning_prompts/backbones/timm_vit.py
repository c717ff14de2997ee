"""Vision Transformers through ``timm``: the backbone of the visual prompt methods (VPT, LAE, …).

The seam is :meth:`TimmViT.forward_features` with a :class:`~lightning_prompts.backbones.hooks.BlockHook`:
timm's own blocks run one after the other, the hook edits the tokens between them (prompt tokens go
after the class/register tokens, so they carry no position; deep prompts *replace* the slot before
later blocks, as in VPT-deep) and adds branches or prefixes inside them (LAE's adapter, LoRA and
prefix) through PyTorch hooks on timm's ``attn``/``attn.qkv``/``mlp`` modules. The returned pooled
feature is what timm's own head would read (class token or average of the patch tokens, prompt tokens
excluded), after the final norm.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_prompts.backbones.attention import prefix_attention
from lightning_prompts.backbones.base import Backbone, weight_dtype
from lightning_prompts.backbones.hooks import (
    AttentionPrefix,
    BlockContext,
    BlockHook,
    BlockSites,
    PromptTokens,
    attached,
    compose,
)
from lightning_prompts.backbones.layer_checkpointing import checkpoint_if_recording, run_block
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.registry import register_backbone
from lightning_prompts.utils.tensor_files import load_weights_file, require_file

#: timm's smallest ViT, shrunk further, for tests and the ``recipes/_tiny/vit.yaml`` overlay.
TINY_KWARGS: dict[str, Any] = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2}


@dataclass
class ViTEncoding:
    """Result of :meth:`TimmViT.forward_features`.

    Attributes:
        pooled: ``(B, W)`` the feature timm's head reads (after the final norm and ``fc_norm``).
        patch_tokens: ``(B, N, W)`` last-layer patch tokens after the final norm, prompts removed.
        prompt_tokens: ``(B, n, W)`` last-layer outputs at the prompt slot (empty without prompts).
    """

    pooled: Tensor
    patch_tokens: Tensor
    prompt_tokens: Tensor


@register_backbone(family="vit")
class TimmViT(Backbone):
    """A frozen timm ``VisionTransformer``.

    Args:
        model_name: a timm model name, e.g. ``"vit_base_patch16_224.augreg2_in21k_ft_in1k"`` or
            ``"vit_base_patch16_224.orig_in21k"`` (VPT's backbone); ``"tiny"`` builds timm's
            ``test_vit`` shrunk by :data:`TINY_KWARGS`.
        pretrained: load timm's pre-trained weights (from the hub or timm's cache).
        checkpoint_path: load weights from this local file instead (timm ``checkpoint_path``).
        model_kwargs: extra keyword arguments for ``timm.create_model`` (``img_size``, ``drop_path_rate``…).
        seed: seed for random initialisation (tests, tiny overlays).
        gradient_checkpointing: keep only each block's input for the backward pass and recompute the block there
            (memory for VPT-deep, adapters and MULTI-LANE's lanes on large ViTs, at about one more forward);
            gradients equal the plain pass's bitwise, and hooks inside the blocks run again in the recomputation.
        dtype: the dtype the frozen weights are kept and run in: ``"float32"`` (default), ``"bfloat16"`` or
            ``"float16"``, half the weight memory for large towers. The prompts, adapters and heads the methods
            train stay float32, so a 16-bit backbone runs under ``precision: bf16-mixed`` (or ``16-mixed``),
            whose autocast meets the two in one dtype; other precisions are refused before the first step.
    """

    family = "vit"

    def __init__(
        self,
        model_name: str = "vit_base_patch16_224.augreg2_in21k_ft_in1k",
        pretrained: bool = True,
        checkpoint_path: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        seed: int = 0,
        gradient_checkpointing: bool = False,
        dtype: str = "float32",
    ) -> None:
        super().__init__()
        import timm
        from timm.models.vision_transformer import VisionTransformer

        weights = weight_dtype(dtype, "TimmViT")  # before any weights are read
        self.model_name, self.gradient_checkpointing = model_name, gradient_checkpointing
        kwargs = dict(model_kwargs or {})
        timm_name = model_name
        if model_name == "tiny":
            timm_name, kwargs, pretrained = "test_vit", {**TINY_KWARGS, **kwargs}, False
        self.source = checkpoint_path or ("pretrained" if pretrained else "random")
        owner = f"TimmViT {model_name!r} checkpoint_path"
        if checkpoint_path:
            require_file(checkpoint_path, owner)
        if not timm.is_model(timm_name):
            close = difflib.get_close_matches(timm_name.partition(".")[0], timm.list_models("vit*"), n=3, cutoff=0.7)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else " (see timm.list_models('vit*'))."
            raise ConfigurationError(f"TimmViT: timm has no model {model_name!r}{hint}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                self.model = timm.create_model(
                    timm_name, pretrained=pretrained and checkpoint_path is None, num_classes=0, **kwargs
                )
            except (RuntimeError, OSError) as error:  # an unknown pretrained tag; weights not downloadable (offline)
                raise ConfigurationError(
                    f"TimmViT {model_name!r}: {str(error).rstrip('.')}. Offline, give checkpoint_path (a local "
                    f"weights file) or pretrained: false."
                ) from error
        if not isinstance(self.model, VisionTransformer):
            raise NotImplementedError(
                f"timm model {model_name!r} is a {type(self.model).__name__}; TimmViT needs a timm VisionTransformer."
            )
        if checkpoint_path:
            # what timm.create_model(checkpoint_path=...) does, with clear errors: timm's are an empty
            # FileNotFoundError for a missing file and advice to load with weights_only=False for a foreign one.
            # weights_only is explicit: timm 1.0.9 to 1.0.25 defaulted to False, which lets a file run code
            load_weights_file(
                checkpoint_path,
                lambda: timm.models.load_checkpoint(self.model, checkpoint_path, weights_only=True),
                owner,
            )
        config = self.model.pretrained_cfg or {}
        self.image_mean = tuple(config.get("mean", (0.485, 0.456, 0.406)))
        self.image_std = tuple(config.get("std", (0.229, 0.224, 0.225)))
        self.freeze()
        self.keep_weights_in(weights)

    @property
    def name(self) -> str:
        return f"{self.model_name}/{self.source}"

    @property
    def width(self) -> int:
        """Token width (the size of one prompt token)."""
        return int(self.model.embed_dim)

    @property
    def depth(self) -> int:
        return len(self.model.blocks)

    @property
    def patch_size(self) -> int:
        return int(self.model.patch_embed.patch_size[0])

    @property
    def image_size(self) -> int:
        return int(self.model.patch_embed.img_size[0])

    @property
    def num_prefix_tokens(self) -> int:
        """Class and register tokens that come before the patches (prompts go after them)."""
        return int(self.model.num_prefix_tokens)

    def embed(self, images: Tensor) -> Tensor:
        """Patch embedding, class/register tokens and positional embedding: ``(B, prefix + N, W)``."""
        model = self.model
        x = model.patch_embed(images)
        x = model._pos_embed(x)
        x = model.patch_drop(x)
        return model.norm_pre(x)

    def block_sites(self) -> list[BlockSites]:
        """Where hooks enter each timm block: ``attn`` (input: ``norm1`` output), ``attn.qkv``, ``mlp``."""
        sites = []
        for block in self.model.blocks:
            attention = block.attn
            sites.append(
                BlockSites(
                    attention=attention,
                    mlp=block.mlp,
                    qkv=getattr(attention, "qkv", None),
                    prefixed_attention=_prefixed_timm_attention(attention),
                )
            )
        return sites

    def forward_features(
        self,
        images: Tensor,
        prompts: Tensor | None = None,
        deep_prompts: Sequence[Tensor] | None = None,
        hooks: BlockHook | None = None,
    ) -> ViTEncoding:
        """Run the ViT with prompt tokens and/or a block hook.

        Args:
            images: ``(B, 3, H, W)`` normalised images.
            prompts: ``(n, W)`` or ``(B, n, W)`` tokens inserted after the prefix tokens, before block 0
                (shorthand for a :class:`~lightning_prompts.backbones.hooks.PromptTokens` hook).
            deep_prompts: tokens for blocks ``1..len(deep_prompts)``; before block ``i`` the prompt slot
                is replaced by ``deep_prompts[i-1]`` (the previous block's outputs there are dropped).
            hooks: what prompt modules change between and inside the blocks (token edits, adapters,
                LoRA, prefixes); the backbone itself is not modified.
        """
        slot = PromptTokens(prompts, deep_prompts, "after_prefix") if prompts is not None or deep_prompts else None
        hook = compose(slot, hooks)
        model = self.model
        x = self.embed(images)
        depth = len(model.blocks)
        contexts = [BlockContext(i, depth, self.num_prefix_tokens, "vision") for i in range(depth)]
        for block, site, context in zip(model.blocks, self.block_sites(), contexts):
            if hook is not None:
                x = hook.before_block(context, x)
            inside = functools.partial(attached, hook, [site], [context], self.name)
            x = run_block(block, x, self.gradient_checkpointing, inside)
        x = model.norm(x)
        prompt_tokens = None
        if hook is not None:
            x, prompt_tokens = hook.after_blocks(BlockContext(depth, depth, self.num_prefix_tokens, "vision"), x)
        if prompt_tokens is None:
            prompt_tokens = x[:, :0]
        pooled = model.forward_head(x, pre_logits=True)  # pool + fc_norm (head_drop is off in eval)
        return ViTEncoding(pooled=pooled, patch_tokens=x[:, self.num_prefix_tokens :], prompt_tokens=prompt_tokens)

    def forward_side_stream(
        self, images: Tensor, side: Tensor, step: Callable[[int, Any, Tensor, Tensor], Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Run the frozen ViT unchanged beside a *side stream* of tokens that reads it but never writes to it.

        Before block ``i`` runs on the main tokens ``x``, ``side = step(i, block, x, side)`` (``block`` is the
        timm block, whose weights the step may reuse); after the last block both streams go through the final
        norm. Returns ``(x, side)``. MULTI-LANE's lanes are such a stream: per-task tokens that summarise the
        frozen stream's patches and attend among themselves with the frozen weights. With
        ``gradient_checkpointing`` each step keeps its inputs only and is recomputed in backward (the frozen
        stream records nothing: it needs no gradient).
        """
        model = self.model
        x = self.embed(images)
        for index, block in enumerate(model.blocks):
            side = checkpoint_if_recording(self.gradient_checkpointing, step, index, block, x, side)
            x = block(x)
        return model.norm(x), model.norm(side.to(model.norm.weight.dtype))  # 16-bit weights: the norm's dtype


def _prefixed_timm_attention(attention: Any) -> Any:
    """timm ``Attention`` in eval mode with extra keys/values: the steps of its ``forward`` with the
    prefix joined to the keys and values (``attn.qkv`` is still called, so a LoRA hook on it applies)."""
    if not all(hasattr(attention, name) for name in ("qkv", "num_heads", "head_dim", "scale", "proj")):
        return None

    def forward(hidden: Tensor, prefix: AttentionPrefix) -> Tensor:
        if getattr(attention, "gate", None) is not None:
            raise NotImplementedError("attention prefixes are not supported on gated attention.")
        batch, tokens, _ = hidden.shape
        qkv = attention.qkv(hidden)
        q, k, v = (
            qkv.reshape(batch, tokens, 3, attention.num_heads, attention.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        )
        q, k = attention.q_norm(q), attention.k_norm(k)
        out = prefix_attention(q, k, v, attention.scale, prefix)
        out = out.transpose(1, 2).reshape(batch, tokens, -1)
        return attention.proj(getattr(attention, "norm", torch.nn.Identity())(out))

    return forward
