"""The Point-MAE point-cloud Transformer (Pang et al., ECCV 2022), the frozen backbone of IDPT.

A cloud ``(B, N, 3)`` is cut into ``G`` patches (farthest point sampling for the centres, the ``k``
nearest points of each, relative to its centre: :mod:`lightning_prompts.backbones.point_ops`); a
mini-PointNet embeds each patch into a token and an MLP embeds each centre into a position. The
Transformer adds the positions to the tokens before **every** block (``x = block(x + pos)``), then a
LayerNorm. There is no class token in the pre-trained encoder: the fine-tuning models (IDPT's, VPT's)
bring their own, so :meth:`PointMAE.encode` takes the token sequence the method lays out.

The module names repeat the official ``MaskTransformer`` (``encoder.first_conv``/``second_conv``,
``pos_embed``, ``blocks.<i>.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``), and
:func:`read_point_mae_state` reads the checkpoints of Point-MAE and of the IDPT repository
(``{"base_model": {"module.MAE_encoder.…"}}`` for pre-training, ``{"base_model": {"blocks.blocks.…"}}``
after fine-tuning) with ``torch.load(weights_only=True)``.

Block hooks: ``before_block`` / ``positions_before_block`` (tokens and their positions before each
block; a prompt that inserts tokens inserts their positions too), ``after_blocks``, and the
attention / MLP / qkv branches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_prompts.backbones.base import Backbone
from lightning_prompts.backbones.hooks import BlockContext, BlockHook, BlockSites, attached
from lightning_prompts.backbones.point_ops import group_patches
from lightning_prompts.registry import register_backbone
from lightning_prompts.utils.tensor_files import load_tensor_file


class MiniPointNet(nn.Module):
    """Point-MAE's patch encoder: per-point ``3→128→256``, a max-pooled global feature concatenated back,
    ``512→512→C``, and a max over the patch's points."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.first_conv = nn.Sequential(nn.Conv1d(3, 128, 1), nn.BatchNorm1d(128), nn.ReLU(), nn.Conv1d(128, 256, 1))
        self.second_conv = nn.Sequential(
            nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512), nn.ReLU(), nn.Conv1d(512, channels, 1)
        )

    def forward(self, patches: Tensor) -> Tensor:
        """``(B, G, k, 3)`` patches → ``(B, G, C)`` tokens."""
        batch, groups, size, _ = patches.shape
        points = patches.reshape(batch * groups, size, 3).transpose(1, 2)
        feature = self.first_conv(points)
        pooled = feature.max(dim=2, keepdim=True).values
        feature = self.second_conv(torch.cat([pooled.expand(-1, -1, size), feature], dim=1))
        return feature.max(dim=2).values.reshape(batch, groups, -1)


class PointAttention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection without bias (Point-MAE's)."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, width = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, width // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(batch, length, width))


class PointMLP(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PointBlock(nn.Module):
    """A pre-norm Transformer block (attention, then a 4× MLP), without drop-path: the backbone is frozen."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(width), PointAttention(width, num_heads)
        self.norm2, self.mlp = nn.LayerNorm(width), PointMLP(width, 4 * width)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


@dataclass
class PointPatches:
    """A cloud cut into patches: ``tokens`` and their ``positions`` ``(B, G, W)``, ``centres`` ``(B, G, 3)``."""

    tokens: Tensor
    positions: Tensor
    centres: Tensor


@dataclass
class PointEncoding:
    """The normalised outputs: ``tokens`` in the layout the method gave (prefix + patches), ``inserted`` the
    outputs at the positions a hook inserted (``None`` if none)."""

    tokens: Tensor
    inserted: Tensor | None


_ENCODER_PREFIXES = ("encoder.", "pos_embed.", "blocks.", "norm.")


def read_point_mae_state(path: Path) -> dict[str, Tensor]:
    """The encoder weights of a Point-MAE / IDPT checkpoint, renamed to :class:`PointMAE`'s modules.

    Reads ``base_model`` (or a plain state dict), drops the ``module.`` (DataParallel) and ``MAE_encoder.``
    / ``base_model.`` prefixes and ``blocks.blocks.`` → ``blocks.``, and keeps the encoder's keys only (the
    decoder, mask token and fine-tuning heads are not the backbone's).
    """
    saved = load_tensor_file(path, "Point-MAE checkpoint")
    state = saved.get("base_model", saved) if isinstance(saved, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no state dict (expected Point-MAE's {{'base_model': …}}).")
    renamed: dict[str, Tensor] = {}
    for key, value in state.items():
        key = key.replace("module.", "", 1) if key.startswith("module.") else key
        for prefix in ("MAE_encoder.", "base_model."):
            key = key.removeprefix(prefix)
        key = key.replace("blocks.blocks.", "blocks.", 1)
        if key.startswith(_ENCODER_PREFIXES) and isinstance(value, Tensor):
            renamed[key] = value
    if "pos_embed.2.weight" not in renamed:
        raise ValueError(f"{path} is not a Point-MAE encoder checkpoint (no pos_embed / MAE_encoder weights).")
    return renamed


class PointTransformerEncoder(nn.Module):
    """The layers of Point-MAE's encoder (``MaskTransformer`` without its masking): patch grouping and the
    mini-PointNet (:meth:`embed`), position MLP, blocks and final norm. :class:`PointMAE` freezes one;
    :class:`~lightning_prompts.pretraining.point_mae.PointMAEPretraining` trains one."""

    def __init__(self, num_patches: int, patch_size: int, width: int, depth: int, num_heads: int) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}.")
        self.num_patches, self.patch_size, self.width, self.depth = num_patches, patch_size, width, depth
        self.encoder = MiniPointNet(width)
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, width))
        self.blocks = nn.ModuleList(PointBlock(width, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    def group(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """``(centres (B, G, 3), patches (B, G, k, 3))`` of clouds ``(B, N, 3)``, patches relative to centres,
        found in float32 (half-precision distances tie) and returned in the backbone's dtype."""
        if points.dim() != 3 or points.shape[-1] != 3:
            raise ValueError(f"point clouds must be (B, N, 3) coordinates, got {tuple(points.shape)}.")
        if points.shape[1] < max(self.num_patches, self.patch_size):
            raise ValueError(
                f"clouds of {points.shape[1]} points cannot make {self.num_patches} patches of {self.patch_size}."
            )
        centres, patches = group_patches(points.float(), self.num_patches, self.patch_size)
        dtype = self.norm.weight.dtype  # float32 unless the module was cast (bf16-true)
        return centres.to(dtype), patches.to(dtype)

    def embed(self, points: Tensor) -> PointPatches:
        """Patch tokens and positions of clouds ``(B, N, 3)``."""
        centres, patches = self.group(points)
        return PointPatches(self.encoder(patches), self.pos_embed(centres), centres)

    def run(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """The blocks without hooks (``x = block(x + pos)``) and the final norm."""
        for block in self.blocks:
            tokens = block(tokens + positions)
        return self.norm(tokens)


def point_mae_checkpoint(encoder: PointTransformerEncoder) -> dict[str, dict[str, Tensor]]:
    """An encoder's weights in the layout of Point-MAE's pre-training checkpoints (``base_model`` with
    ``MAE_encoder.`` keys and ``blocks.blocks.<i>``), which :func:`read_point_mae_state` and the official
    fine-tuning code both read."""
    state = {}
    for key, value in encoder.state_dict().items():
        official = key.replace("blocks.", "blocks.blocks.", 1) if key.startswith("blocks.") else key
        state[f"MAE_encoder.{official}"] = value.detach().cpu().clone()
    return {"base_model": state}


@register_backbone(family="points")
class PointMAE(Backbone):
    """The frozen Point-MAE encoder (see the module docstring).

    Args:
        checkpoint_path: a Point-MAE (``pretrain.pth``) or IDPT checkpoint; ``None`` keeps random weights.
        num_patches: patches per cloud (64 for 1,024 points, 128 for 2,048).
        patch_size: points per patch (32).
        width: token width (384), also the patch encoder's output.
        depth: Transformer blocks (12).
        num_heads: attention heads (6).
        seed: seed for random initialisation.
    """

    family = "points"

    def __init__(
        self,
        checkpoint_path: str | None = None,
        num_patches: int = 64,
        patch_size: int = 32,
        width: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.checkpoint_path, self.num_patches, self.patch_size = checkpoint_path, num_patches, patch_size
        self.width, self.depth, self.num_heads = width, depth, num_heads
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = PointTransformerEncoder(num_patches, patch_size, width, depth, num_heads)
        if checkpoint_path is not None:
            self._load(Path(checkpoint_path))
        self.freeze()

    def _load(self, path: Path) -> None:
        state = read_point_mae_state(path)
        stored_width = int(state["pos_embed.2.weight"].shape[0])
        stored_depth = len({key.split(".")[1] for key in state if key.startswith("blocks.")})
        if (stored_width, stored_depth) != (self.width, self.depth):
            raise ValueError(
                f"{path} holds a {stored_depth}-block, {stored_width}-wide encoder but the backbone is configured "
                f"with depth={self.depth}, width={self.width}; configure it as stored."
            )
        missing, _ = self.model.load_state_dict(state, strict=False)
        if missing:
            raise ValueError(f"{path} lacks encoder weights: {missing[:5]}{'…' if len(missing) > 5 else ''}")

    @property
    def name(self) -> str:
        shape = f"point-mae-{self.depth}x{self.width}"
        return f"{shape}/{Path(self.checkpoint_path).name}" if self.checkpoint_path else f"{shape}/random"

    def embed(self, points: Tensor) -> PointPatches:
        """Patch tokens and positions of clouds ``(B, N, 3)`` (``N >= patch_size``)."""
        return self.model.embed(points)

    def encode(
        self, tokens: Tensor, positions: Tensor, hooks: BlockHook | None = None, prefix_tokens: int = 0
    ) -> PointEncoding:
        """Run the blocks on ``tokens`` ``(B, L, W)`` with ``positions`` added before each block; ``prefix_tokens``
        tokens (a method's class token) precede the patches."""
        if tokens.shape != positions.shape:
            raise ValueError(f"tokens {tuple(tokens.shape)} and positions {tuple(positions.shape)} differ.")
        contexts = [BlockContext(i, self.depth, prefix_tokens, "points") for i in range(self.depth)]
        sites = [BlockSites(attention=b.attn, mlp=b.mlp, qkv=b.attn.qkv) for b in self.model.blocks]
        with attached(hooks, sites, contexts, self.name):
            for block, context in zip(self.model.blocks, contexts):
                if hooks is not None:
                    tokens = hooks.before_block(context, tokens)
                    positions = hooks.positions_before_block(context, positions)
                    if tokens.shape != positions.shape:
                        raise ValueError(
                            f"a hook changed the tokens before block {context.index} to {tuple(tokens.shape)} but "
                            f"the positions to {tuple(positions.shape)}; insert positions with the tokens."
                        )
                tokens = block(tokens + positions)
        inserted = None
        if hooks is not None:
            end = BlockContext(self.depth, self.depth, prefix_tokens, "points")
            tokens, inserted = hooks.after_blocks(end, tokens)
        norm = self.model.norm
        return PointEncoding(norm(tokens), None if inserted is None else norm(inserted))
