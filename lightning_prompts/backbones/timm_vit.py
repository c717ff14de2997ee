"""Vision Transformers through ``timm``: the backbone of the visual prompt methods (VPT, …).

The seam is :meth:`TimmViT.forward_features` with prompt tokens: shallow prompts are inserted
once, after the positional embedding and after the class/register tokens (so they carry no
position); deep prompts *replace* the prompt slot before every later block, as in VPT-deep.
The returned pooled feature is what timm's own head would read (class token or average of the
patch tokens, prompt tokens excluded), after the final norm.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_prompts.backbones.base import Backbone, expand_to_batch
from lightning_prompts.prompts.pet import BlockPET, attention_with_prefix

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
    """

    family = "vit"

    def __init__(
        self,
        model_name: str = "vit_base_patch16_224.augreg2_in21k_ft_in1k",
        pretrained: bool = True,
        checkpoint_path: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        import timm
        from timm.models.vision_transformer import VisionTransformer

        self.model_name = model_name
        kwargs = dict(model_kwargs or {})
        timm_name = model_name
        if model_name == "tiny":
            timm_name, kwargs, pretrained = "test_vit", {**TINY_KWARGS, **kwargs}, False
        self.source = checkpoint_path or ("pretrained" if pretrained else "random")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = timm.create_model(
                timm_name,
                pretrained=pretrained and checkpoint_path is None,
                num_classes=0,
                checkpoint_path=checkpoint_path or "",
                **kwargs,
            )
        if not isinstance(self.model, VisionTransformer):
            raise NotImplementedError(
                f"timm model {model_name!r} is a {type(self.model).__name__}; TimmViT needs a timm VisionTransformer."
            )
        config = self.model.pretrained_cfg or {}
        self.image_mean = tuple(config.get("mean", (0.485, 0.456, 0.406)))
        self.image_std = tuple(config.get("std", (0.229, 0.224, 0.225)))
        self.freeze()

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

    def forward_features(
        self,
        images: Tensor,
        prompts: Tensor | None = None,
        deep_prompts: Sequence[Tensor] | None = None,
        block_pets: Mapping[int, BlockPET] | None = None,
    ) -> ViTEncoding:
        """Run the ViT with prompt tokens and/or PET modules.

        Args:
            images: ``(B, 3, H, W)`` normalised images.
            prompts: ``(n, W)`` or ``(B, n, W)`` tokens inserted after the prefix tokens, before block 0.
            deep_prompts: tokens for blocks ``1..len(deep_prompts)``; before block ``i`` the prompt slot
                is replaced by ``deep_prompts[i-1]`` (the previous block's outputs there are dropped).
            block_pets: ``{block index: BlockPET}``: those blocks run with the adapter, LoRA or prefix
                (:mod:`lightning_prompts.prompts.pet`); the backbone itself is not modified.
        """
        if deep_prompts and prompts is None:
            raise ValueError("deep prompts need first-layer prompts (the slot they replace).")
        model = self.model
        x = self.embed(images)
        start = self.num_prefix_tokens
        n = 0
        if prompts is not None:
            prompts = expand_to_batch(prompts, x.shape[0]).to(x.dtype)
            n = prompts.shape[1]
            x = torch.cat([x[:, :start], prompts, x[:, start:]], dim=1)
        for index, block in enumerate(model.blocks):
            if deep_prompts and 1 <= index <= len(deep_prompts):
                fresh = expand_to_batch(deep_prompts[index - 1], x.shape[0]).to(x.dtype)
                x = torch.cat([x[:, :start], fresh, x[:, start + n :]], dim=1)
            pet = block_pets.get(index) if block_pets else None
            x = block(x) if pet is None else block_with_pet(block, x, pet)
        x = model.norm(x)
        prompt_tokens = x[:, start : start + n]
        x = torch.cat([x[:, :start], x[:, start + n :]], dim=1)
        pooled = model.forward_head(x, pre_logits=True)  # pool + fc_norm (head_drop is off in eval)
        return ViTEncoding(pooled=pooled, patch_tokens=x[:, start:], prompt_tokens=prompt_tokens)


def block_with_pet(block: Any, x: Tensor, pet: BlockPET) -> Tensor:
    """A timm ViT ``Block`` in eval mode (no dropout, no drop-path) with ``pet`` inserted: the same
    steps as timm's ``Block.forward``/``Attention.forward``, plus the LoRA increment on the qkv
    projection, the prefix keys/values in the attention, and the adapter beside the attention."""
    attn = block.attn
    if getattr(attn, "gate", None) is not None:
        raise NotImplementedError("PET modules are not supported on gated attention.")
    hidden = block.norm1(x)
    batch, tokens, _ = hidden.shape
    qkv = attn.qkv(hidden)
    if pet.lora is not None:
        qkv = qkv + pet.lora(hidden).to(qkv.dtype)
    q, k, v = qkv.reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if pet.prefix is not None:
        out = attention_with_prefix(q, k, v, attn.scale, pet.prefix)
    else:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    out = out.transpose(1, 2).reshape(batch, tokens, -1)
    out = attn.proj(getattr(attn, "norm", torch.nn.Identity())(out))
    if pet.adapter is not None:
        out = out + pet.adapter(hidden).to(out.dtype)
    x = x + block.ls1(out)
    return x + block.ls2(block.mlp(block.norm2(x)))
