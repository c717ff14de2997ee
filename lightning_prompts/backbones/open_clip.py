"""CLIP through ``open_clip``: the backbone of the vision-language prompt methods.

Seams (all the CLIP methods need, nothing more):

* text: :meth:`OpenCLIP.tokenize`, :meth:`OpenCLIP.token_count`, :meth:`OpenCLIP.embed_tokens`,
  :meth:`OpenCLIP.eot_positions` and :meth:`OpenCLIP.encode_text_embeddings`, which encodes from
  token *embeddings* (so learned context vectors can replace some of them) and accepts deep
  prompts that replace a slot of the sequence before each layer;
* image: :meth:`OpenCLIP.encode_image`, returning the global feature and the patch tokens, with
  shallow and deep visual prompt tokens for ViT towers;
* :attr:`OpenCLIP.logit_scale`.

**Truncated text encoding.** CLIP's text transformer is causal: the output at position ``p``
depends on positions ``<= p`` only, and the text feature is read at the end-of-text token. So
running the transformer on the first ``max(eot) + 1`` positions gives *exactly* the same
features as running all 77. The official CoOp/MaPLe code always runs 77 positions; class
prompts rarely need more than 20, so we run only what is needed (see
``benchmarks/clip_text_encoder.py``). Truncation is switched off where it would not be exact:
text towers without a causal mask, and pooling at the first/last position.

**Shared-prefix text pass.** Class prompts usually begin with the same tokens: ``[SOS] ctx_1 … ctx_n``
of a shared learned context (CoOp, MaPLe, CoPrompt, DAPT, GRAM's CoOp), or the words of a template.
Under the causal mask the hidden states of those positions are identical for every class in every
layer, so :meth:`OpenCLIP.encode_text_embeddings` finds the longest prefix all sequences share (one
comparison of the embeddings), runs it once, and runs only each class's own tokens (``name . [EOT]``),
grouped by length so no padding is computed, attending to the prefix's keys and values; the gradient to
a shared context flows through the prefix once. It is used automatically where it is exact: a causal
text tower, a prefix of at least two positions that ends before every end-of-text token, and block
hooks that only replace positions inside the prefix with values shared by every sequence (MaPLe's deep
prompts). ``shared_prefix=False`` on the backbone turns it off. See ``benchmarks/coop_step.py``.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from lightning_prompts.backbones.base import weight_dtype
from lightning_prompts.backbones.batch_first_attention import projected_batch_first
from lightning_prompts.backbones.class_token_block import class_token_through, reads_class_token_only
from lightning_prompts.backbones.hooks import BlockContext, BlockHook, BlockSites, PromptTokens, attached, compose
from lightning_prompts.backbones.layer_checkpointing import checkpoint_if_recording, run_block
from lightning_prompts.backbones.vision_language import GradCAMTarget, ImageEncoding, VisionLanguageBackbone
from lightning_prompts.errors import ConfigurationError, ContextLengthError
from lightning_prompts.registry import register_backbone
from lightning_prompts.utils.tensor_files import load_weights_file, require_file

#: OpenAI CLIP preprocessing constants (open_clip's defaults for OpenAI weights).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: A CLIP small enough for tests and the ``recipes/_tiny/clip.yaml`` overlay: the real BPE
#: vocabulary and 77-token context, and ViT-B/16's 12 layers in both towers (so deep-prompt recipes
#: keep their depth), but 32-wide text and 48-wide vision layers on 32-px images.
TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 48, "layers": 12, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 12},
}


def is_file_path(pretrained: str) -> bool:
    """Whether ``pretrained`` names a file rather than an open_clip tag: tags are plain words (``openai``,
    ``laion2b_s34b_b88k``), never with a folder or a suffix."""
    return Path(pretrained).suffix != "" or "/" in pretrained or os.sep in pretrained


def check_known_name(model_name: str, pretrained: str | None) -> None:
    """Refuse, before anything is built, a model name open_clip has no config for and a tag it has no weights
    for, suggesting the closest (open_clip raises a bare RuntimeError, a traceback on the command line)."""
    import difflib

    import open_clip

    models = open_clip.list_models()
    if model_name not in models:
        close = difflib.get_close_matches(model_name, models, n=3, cutoff=0.6)
        raise ConfigurationError(
            f"OpenCLIP: open_clip has no model {model_name!r}"
            + (f"; did you mean {', '.join(map(repr, close))}?" if close else " (open_clip.list_models() lists them).")
        )
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if pretrained is not None and pretrained.lower().replace("-", "_") not in tags:  # open_clip's own spelling rule
        close = difflib.get_close_matches(pretrained.lower(), tags, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
        raise ConfigurationError(
            f"OpenCLIP {model_name!r}: pretrained {pretrained!r} is neither a weights file nor one of its tags "
            f"{tags}; {hint}a file path needs a folder or a suffix (./weights.pt)."
        )


@register_backbone(family="clip")
class OpenCLIP(VisionLanguageBackbone):
    """A frozen open_clip CLIP model.

    Args:
        model_name: an open_clip model name (``"ViT-B-16"``, ``"RN50"``, ``"ViT-B-32-quickgelu"``…),
            an ``hf-hub:``/``local-dir:`` identifier, or ``"tiny"`` for :data:`TINY_CONFIG`.
        pretrained: an open_clip pretrained tag (``"openai"``, ``"laion2b_s34b_b88k"``…) or the
            path of a local checkpoint file; ``None`` keeps random weights.
        model_cfg: build the architecture from this open_clip config dict (``embed_dim``,
            ``vision_cfg``, ``text_cfg``, …) instead of a registered name; weights are random
            unless ``pretrained`` is a checkpoint path.
        force_quick_gelu: use QuickGELU (needed for OpenAI weights under a non ``-quickgelu`` name).
        cache_dir: where open_clip caches downloaded weights.
        seed: seed for random initialisation, so a random-weight backbone is rebuilt identically
            when a checkpoint is loaded (tests, tiny overlays).
        shared_prefix: encode the prefix all text sequences share once (see the module docstring); exact,
            so only worth turning off to compare.
        gradient_checkpointing: keep only each block's input for the backward pass and recompute the block
            there (both towers; in the shared-prefix text pass, the blocks over the sequences' own tokens): memory
            for deep visual prompts (MaPLe, VPT on CLIP) on large towers and for the text pass over ImageNet's 1,000
            classes, at about one more forward.
            Gradients equal the plain pass's bitwise; hooks inside the blocks run again in the recomputation.
        dtype: the dtype the frozen weights are kept and run in: ``"float32"`` (default), ``"bfloat16"`` or
            ``"float16"``, half the weight memory for large towers. The prompts, adapters and heads the methods
            train stay float32, so a 16-bit backbone runs under ``precision: bf16-mixed`` (or ``16-mixed``),
            whose autocast meets the two in one dtype; other precisions are refused before the first step.

    Example:
        >>> clip = OpenCLIP("ViT-B-16", pretrained="openai")            # doctest: +SKIP
        >>> tiny = OpenCLIP("tiny", pretrained=None)
        >>> tiny.encode_text(["a photo of a cat."]).shape
        torch.Size([1, 32])
    """

    def __init__(
        self,
        model_name: str = "ViT-B-16",
        pretrained: str | None = "openai",
        model_cfg: dict[str, Any] | None = None,
        force_quick_gelu: bool = False,
        cache_dir: str | None = None,
        seed: int = 0,
        shared_prefix: bool = True,
        gradient_checkpointing: bool = False,
        dtype: str = "float32",
    ) -> None:
        super().__init__()
        import open_clip

        weights = weight_dtype(dtype, "OpenCLIP")  # before any weights are read
        self.model_name, self.pretrained = model_name, pretrained
        self.shared_prefix, self.gradient_checkpointing = shared_prefix, gradient_checkpointing
        if model_cfg is None and model_name == "tiny":
            model_cfg = TINY_CONFIG
        # a local file (always one for a model built from a config) is loaded once the model is built, where a
        # failure can name it: open_clip's own errors name no file or advise weights_only=False. Tags, and the
        # hf-hub:/local-dir: model names (which ignore `pretrained`), keep open_clip's own loading.
        local = pretrained is not None and (
            model_cfg is not None or (is_file_path(pretrained) and ":" not in model_name)
        )
        owner = f"OpenCLIP {model_name!r} pretrained"
        if local:
            require_file(pretrained, owner)
        elif model_cfg is None and ":" not in model_name:
            check_known_name(model_name, pretrained)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if model_cfg is not None:
                self.model = open_clip.CLIP(**model_cfg, quick_gelu=force_quick_gelu)
                context_length = self.model.context_length
                self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
                self.image_mean, self.image_std = CLIP_MEAN, CLIP_STD
            else:
                try:
                    self.model = open_clip.create_model(
                        model_name,
                        pretrained=None if local else pretrained,
                        force_quick_gelu=force_quick_gelu,
                        cache_dir=cache_dir,
                    )
                except RuntimeError as error:
                    if "Failed to download" not in str(error):
                        raise
                    raise ConfigurationError(  # offline, or a hub outage: say what to give instead
                        f"OpenCLIP {model_name!r}: the {pretrained!r} weights could not be downloaded ({error}). "
                        f"Offline, give pretrained as a local weights file, or cache_dir where they were downloaded."
                    ) from None
                self.tokenizer = open_clip.get_tokenizer(model_name, cache_dir=cache_dir)
                self.image_mean = tuple(getattr(self.model.visual, "image_mean", None) or CLIP_MEAN)
                self.image_std = tuple(getattr(self.model.visual, "image_std", None) or CLIP_STD)
        if local:
            load_weights_file(pretrained, lambda: open_clip.load_checkpoint(self.model, pretrained), owner)
        if not hasattr(self.model, "token_embedding"):
            raise NotImplementedError(
                f"open_clip model {model_name!r} has a custom text tower ({type(self.model).__name__}); "
                "prompted text encoding needs CLIP's own text transformer (token_embedding, transformer, "
                "ln_final, text_projection)."
            )
        self.freeze()
        self.keep_weights_in(weights)

    # -- description ------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return f"{self.model_name}/{self.pretrained}" if self.pretrained else self.model_name

    @property
    def context_length(self) -> int:
        return int(self.model.context_length)

    @property
    def text_width(self) -> int:
        """Width of the token embeddings (the size of a CoOp context vector)."""
        return int(self.model.token_embedding.embedding_dim)

    @property
    def embed_dim(self) -> int:
        """Size of the joint image-text embedding space."""
        return int(self.model.visual.output_dim)

    @property
    def text_layers(self) -> int:
        return len(self.model.transformer.resblocks)

    @property
    def is_vit(self) -> bool:
        return hasattr(self.model.visual, "conv1") and hasattr(self.model.visual, "class_embedding")

    @property
    def vision_width(self) -> int:
        """Width of the ViT tokens (the size of a visual prompt token)."""
        self._require_vit("vision_width")
        return int(self.model.visual.class_embedding.shape[-1])

    @property
    def patch_size(self) -> int:
        """The ViT tower's patch side (the VPT initialisation bound reads it)."""
        self._require_vit("the patch size")
        return int(self.model.visual.conv1.kernel_size[0])

    @property
    def vision_layers(self) -> int:
        self._require_vit("vision_layers")
        return len(self.model.visual.transformer.resblocks)

    #: Images must have :attr:`image_size` pixels a side: the tower's position embedding (ViT) or attention
    #: pool (ResNet) has one entry per patch of that size, so another size fails inside the first forward.
    requires_image_size = True

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def logit_scale(self) -> Tensor:
        """``exp(logit_scale)``: the temperature CLIP multiplies cosine similarities with (100 for OpenAI)."""
        return self.model.logit_scale.exp()

    @property
    def truncates_text(self) -> bool:
        """Whether text encoding can stop at the last end-of-text token without changing any output."""
        return self.model.attn_mask is not None and self.model.text_pool_type in ("argmax", "eos")

    # -- text seams --------------------------------------------------------------------------
    def token_count(self, text: str) -> int:
        """Number of tokens of ``text`` including start and end tokens."""
        return len(self.tokenizer.encode(text)) + 2

    def tokenize(self, texts: Sequence[str], what: str = "text") -> Tensor:
        """Tokenize to ``(N, context_length)`` ids; raise instead of silently truncating.

        Args:
            texts: the strings.
            what: how to call one string in an error message ("class prompt", "description"…).
        """
        for text in texts:
            count = self.token_count(text)
            if count > self.context_length:
                raise ContextLengthError(
                    f"The {what} {text!r} needs {count} tokens, more than the context length "
                    f"{self.context_length} of {self.name}. Shorten it (fewer context tokens or a "
                    f"shorter class name)."
                )
        device = self.model.positional_embedding.device
        return self.tokenizer(list(texts)).to(device)

    def embed_tokens(self, token_ids: Tensor) -> Tensor:
        """Token embeddings ``(N, L, text_width)`` (no positional embedding)."""
        return self.model.token_embedding(token_ids)

    def eot_positions(self, token_ids: Tensor) -> Tensor:
        """Index of the token whose output is the text feature, per sequence."""
        pool = self.model.text_pool_type
        if pool == "argmax":
            return token_ids.argmax(dim=-1)
        if pool == "eos":
            return (token_ids == self.model.text_eos_id).int().argmax(dim=-1)
        if pool == "first":
            return torch.zeros(token_ids.shape[0], dtype=torch.long, device=token_ids.device)
        return torch.full((token_ids.shape[0],), token_ids.shape[1] - 1, device=token_ids.device)

    def encode_text_embeddings(
        self,
        embeddings: Tensor,
        eot_positions: Tensor,
        deep_prompts: Sequence[Tensor] | None = None,
        deep_prompt_start: int = 1,
        truncate: bool = True,
        hooks: BlockHook | None = None,
    ) -> Tensor:
        """Encode token embeddings into projected text features ``(N, D)`` (not normalised).

        Args:
            embeddings: ``(N, L, text_width)`` token embeddings, e.g. ``[SOS, ctx…, class, ., EOT, pad…]``.
            eot_positions: ``(N,)`` position to read the feature from (see :meth:`eot_positions`).
            deep_prompts: prompts for layers ``1..len(deep_prompts)``: before layer ``i``, positions
                ``deep_prompt_start : deep_prompt_start + n`` are *replaced* by ``deep_prompts[i-1]``
                (``(n, text_width)`` or ``(N, n, text_width)``), as in MaPLe's text branch (shorthand for
                a :class:`~lightning_prompts.backbones.hooks.PromptTokens` hook).
            deep_prompt_start: first position of the deep-prompt slot (1 = right after SOS).
            truncate: run only the first ``max(eot_positions) + 1`` positions, and the shared prefix once where
                it is exact (see module doc). ``False``: the reference pass, every position of every sequence
                through the plain blocks.
            hooks: a block hook for the text transformer (token edits, attention/MLP branches).
        """
        model = self.model
        length = embeddings.shape[1]
        if truncate and self.truncates_text:
            length = int(eot_positions.max()) + 1
        cast_dtype = model.transformer.get_cast_dtype()
        x = embeddings[:, :length].to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
        attn_mask = model.attn_mask[:length, :length] if model.attn_mask is not None else None
        slot = PromptTokens(None, deep_prompts, deep_prompt_start) if deep_prompts else None
        hook = compose(slot, hooks)
        shared = self.shared_prefix_length(embeddings[:, :length], eot_positions, hook) if truncate else 0
        checkpointed = self.gradient_checkpointing
        if shared:
            x = _run_with_shared_prefix(
                model.transformer, x, attn_mask, shared, hook, eot_positions, checkpointed=checkpointed
            )
        else:
            rows = torch.arange(x.shape[0], device=x.device)
            x = _run_blocks(model.transformer, x, attn_mask, hook, "text", self.name, False, checkpointed)
            x = x[rows, eot_positions]
        x = model.ln_final(x)  # per token: only the rows read are normalised
        projection = model.text_projection
        if projection is None:
            return x
        return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection

    def shared_prefix_length(self, embeddings: Tensor, eot_positions: Tensor, hook: BlockHook | None) -> int:
        """How many leading positions the text pass may encode once for all sequences (0: none), where
        that is exact (see the module docstring)."""
        transformer = self.model.transformer
        if not (self.shared_prefix and self.truncates_text and transformer.batch_first) or embeddings.shape[0] < 2:
            return 0
        with torch.no_grad():
            same = (embeddings == embeddings[:1]).all(dim=-1).all(dim=0)
            length = int(same.long().cumprod(0).sum())
        length = min(length, int(eot_positions.min()))  # every feature is read in the per-sequence part
        if length < 2 or (hook is not None and not hook.within_shared_prefix(length)):
            return 0
        return length

    # -- image seam --------------------------------------------------------------------------
    def encode_image(
        self,
        images: Tensor,
        prompts: Tensor | None = None,
        deep_prompts: Sequence[Tensor] | None = None,
        location: Literal["append", "prepend"] = "append",
        hooks: BlockHook | None = None,
        after_ln_pre: bool = False,
        patch_tokens: bool = True,
    ) -> ImageEncoding:
        """Encode images, optionally with visual prompt tokens or a block hook (ViT towers only).

        Args:
            images: ``(B, 3, H, W)`` normalised images.
            prompts: ``(n, W)`` or ``(B, n, W)`` tokens inserted after the positional embedding and
                before ``ln_pre``: after all patch tokens (``"append"``, MaPLe) or right after the
                class token (``"prepend"``, VPT).
            deep_prompts: tokens for layers ``1..len(deep_prompts)``; before layer ``i`` the prompt
                slot is *replaced* by ``deep_prompts[i-1]``.
            location: where the prompt slot is (see ``prompts``).
            hooks: a block hook for the vision transformer. Its edits before block 0 see the tokens
                *before* ``ln_pre`` (CLIP's input norm), where MaPLe and IVLP insert their prompts.
            after_ln_pre: apply the prompts and the hook's block-0 edit *after* ``ln_pre`` instead (MVLPT's
                visual prompts, VPT on CLIP), so the inserted tokens are not normalised by it.
            patch_tokens: ``False`` when the caller reads ``features`` only: a tower pooled at its class token then
                runs its last block for the class token alone while gradients are recorded (:mod:`.class_token_block`;
                the same features to float rounding, about a twelfth less compute on ViT-B/16, forward and
                backward) and ``patch_tokens`` is ``None``.
        """
        visual = self.model.visual
        slot = None
        if prompts is not None or deep_prompts:
            slot = PromptTokens(prompts, deep_prompts, "append" if location == "append" else "after_prefix")
        hook = compose(slot, hooks)
        if hook is None and not self.is_vit:
            return ImageEncoding(visual(images))
        self._require_vit("visual prompts / patch tokens")

        x = visual.conv1(images.to(visual.conv1.weight.dtype))
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        x = visual.patch_dropout(x)
        if hook is not None and not after_ln_pre:  # block 0's input edit comes before ln_pre (see above)
            x = hook.before_block(BlockContext(0, self.vision_layers, 1, "vision"), x)
        x = visual.ln_pre(x)
        # while gradients are recorded (a prompted tower in training, where the backward pass through the last block
        # is saved too); a forward without them keeps the batched whole block, where one image at a time would launch
        # more kernels on a GPU than it saves
        class_token_only = not patch_tokens and torch.is_grad_enabled() and reads_class_token_only(visual, hook)
        x = _run_blocks(
            visual.transformer, x, None, hook, "vision", self.name, not after_ln_pre, self.gradient_checkpointing,
            class_token_only,
        )  # fmt: skip
        if hook is not None and not class_token_only:  # drop the prompt tokens before pooling
            x, _ = hook.after_blocks(BlockContext(self.vision_layers, self.vision_layers, 1, "vision"), x)
        pooled, tokens = visual._pool(x)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return ImageEncoding(pooled, None if class_token_only else tokens)

    def local_features(self, encoding: ImageEncoding) -> Tensor:
        """The patch tokens after ``ln_post`` through the visual projection, as the class token is (GL-MCM,
        Local-Prompt). ViT towers with CLIP's token pooling only."""
        visual = self.model.visual
        if encoding.patch_tokens is None or getattr(visual, "attn_pool", None) is not None:
            raise NotImplementedError(f"{self.name}: local features need a ViT image tower with token pooling.")
        tokens = encoding.patch_tokens
        if getattr(visual, "final_ln_after_pool", False):  # the tokens left the pool without the final norm
            tokens = visual.ln_post(tokens)
        return tokens @ visual.proj if visual.proj is not None else tokens

    def gradcam_target(self) -> GradCAMTarget:
        """DAPT's choice: the tokens entering the last block's attention (``ln_1`` output); the patch
        tokens follow the class token (visual prompts, if any, are appended after them, as MaPLe does)."""
        self._require_vit("Grad-CAM")
        visual = self.model.visual
        height, width = visual.grid_size
        batch_first = visual.transformer.batch_first

        def tokens(output: Tensor) -> tuple[Tensor, tuple[int, int]]:
            output = output if batch_first else output.transpose(0, 1)
            return output[:, 1 : 1 + height * width], (height, width)

        return GradCAMTarget(visual.transformer.resblocks[-1].ln_1, tokens)

    def _require_vit(self, what: str) -> None:
        if not self.is_vit:
            raise NotImplementedError(
                f"{what} need a ViT image tower; {self.name} has {type(self.model.visual).__name__}."
            )


def _run_with_shared_prefix(
    transformer: torch.nn.Module,
    x: Tensor,
    attn_mask: Tensor,
    length: int,
    hook: BlockHook | None,
    eot_positions: Tensor,
    group_by_length: bool = True,
    checkpointed: bool = False,
) -> Tensor:
    """The features (each sequence's row at its end-of-text position, before ``ln_final``) of a causal,
    batch-first open_clip text ``Transformer`` whose first ``length`` positions are identical in every
    sequence: the prefix runs once, as a sequence of its own; then the sequences run their own tokens
    attending to the prefix's keys and values and to their own, in groups of one length, so no padding is
    computed. ``group_by_length=False`` runs them as one group padded to the longest instead, as exact: one
    pass of the blocks rather than one per length, but about three times the activations with ImageNet's
    class names (nine lengths). Not a default anywhere: ``benchmarks/coop_step.py`` times it on GPUs, where
    our grouped step ran slower than the reference at 100 classes (``docs/benchmarks.md``). ``checkpointed``: each
    block of the sequences' pass keeps its input only and is recomputed in backward (the prefix's own pass, one
    sequence of a few positions, keeps its activations)."""
    blocks = transformer.resblocks
    prefix = x[:1, :length]
    prefix_keys_values = []  # each block's keys and values of the prefix, projected once for every group
    for index, block in enumerate(blocks):
        if hook is not None:  # only replaces positions inside the prefix, identically for every sequence
            prefix = hook.before_block(BlockContext(index, len(blocks), 1, "text"), prefix)
        prefix_keys_values.append(_prefix_keys_values(block.attn, block.ln_1(prefix)))
        if index < len(blocks) - 1:  # the last block's keys and values are all the sequences read of the prefix
            prefix = block(prefix, attn_mask=attn_mask[:length, :length])
    ends = eot_positions + 1
    order, features = [], []
    for end in sorted(set(ends.tolist())) if group_by_length else [int(ends.max())]:
        # one group per sequence length (no padding computed), or every sequence padded to the longest: the
        # positions after a sequence's end-of-text token cannot reach it under the causal mask
        members = (ends == end).nonzero().view(-1) if group_by_length else torch.arange(len(ends), device=x.device)
        rest = x[members, length:end]
        mask = attn_mask[length:end, :end]
        for block, (prefix_k, prefix_v) in zip(blocks, prefix_keys_values):
            rest = checkpoint_if_recording(checkpointed, _sequences_block, block, prefix_k, prefix_v, rest, mask)
        order.append(members)
        features.append(rest[torch.arange(len(members), device=x.device), ends[members] - 1 - length])
    order_all = torch.cat(order)
    inverse = torch.empty_like(order_all)
    inverse[order_all] = torch.arange(order_all.numel(), device=order_all.device)
    return torch.cat(features)[inverse]


def _sequences_block(block: torch.nn.Module, prefix_k: Tensor, prefix_v: Tensor, rest: Tensor, mask: Tensor) -> Tensor:
    """One open_clip block over the sequences' own tokens ``rest``, attending to the prefix's keys and values too."""
    rest = rest + block.ls_1(_attend_with_prefix(block.attn, prefix_k, prefix_v, block.ln_1(rest), mask))
    return rest + block.ls_2(block.mlp(block.ln_2(rest)))


def _prefix_keys_values(attention: torch.nn.Module, prefix: Tensor) -> tuple[Tensor, Tensor]:
    """The keys and values ``(heads, P, head_width)`` of ``nn.MultiheadAttention`` (packed in-projection) for the
    normalised prefix ``(1, P, width)``: projected once per block, shared by every sequence and length group."""
    import torch.nn.functional as F

    width, heads = prefix.shape[-1], attention.num_heads
    w_kv = attention.in_proj_weight[width:]
    b_kv = attention.in_proj_bias[width:] if attention.in_proj_bias is not None else None
    return tuple(t.reshape(prefix.shape[1], heads, width // heads).transpose(0, 1)
                 for t in F.linear(prefix[0], w_kv, b_kv).chunk(2, -1))  # fmt: skip


def _attend_with_prefix(
    attention: torch.nn.Module, prefix_k: Tensor, prefix_v: Tensor, rest: Tensor, mask: Tensor
) -> Tensor:
    """``nn.MultiheadAttention`` (batch-first, packed in-projection) of the queries of ``rest`` over the keys
    and values of ``[prefix; rest]``, the prefix's given by :func:`_prefix_keys_values`. They are broadcast,
    never copied per sequence: the scores against the prefix and against the sequence's own tokens are
    computed apart and share one softmax."""
    import torch.nn.functional as F

    width, heads = rest.shape[-1], attention.num_heads
    head_width = width // heads
    w_q, w_kv = attention.in_proj_weight.split([width, 2 * width])
    b_q, b_kv = attention.in_proj_bias.split([width, 2 * width]) if attention.in_proj_bias is not None else (None, None)
    count, length, shared = rest.shape[0], rest.shape[1], prefix_k.shape[1]

    def heads_first(t: Tensor) -> Tensor:
        return t.reshape(t.shape[0], t.shape[1], heads, head_width).transpose(1, 2)

    # the prefix side as one matmul per head over every sequence's queries: (h, C·S, d) @ (h, d, P)
    rest_k, rest_v = (heads_first(t) for t in F.linear(rest, w_kv, b_kv).chunk(2, dim=-1))  # (C, h, S, d)
    q = heads_first(F.linear(rest, w_q, b_q)) * head_width**-0.5  # (C, h, S, d)
    by_head = q.transpose(0, 1).reshape(heads, count * length, head_width)
    prefix_scores = (by_head @ prefix_k.transpose(-2, -1)).reshape(heads, count, length, shared).transpose(0, 1)
    scores = torch.cat([prefix_scores, q @ rest_k.transpose(-2, -1)], dim=-1)  # (C, h, S, P + S)
    weights = (scores + mask.to(scores.dtype)).softmax(dim=-1)
    prefix_weights = weights[..., :shared].transpose(0, 1).reshape(heads, count * length, shared)
    from_prefix = (prefix_weights @ prefix_v).reshape(heads, count, length, head_width).transpose(0, 1)
    out = from_prefix + weights[..., shared:] @ rest_v
    return attention.out_proj(out.transpose(1, 2).reshape(count, length, width))


def _run_blocks(
    transformer: torch.nn.Module,
    x: Tensor,
    attn_mask: Tensor | None,
    hook: BlockHook | None,
    tower: str,
    backbone: str,
    first_edited: bool = False,
    checkpointed: bool = False,
    class_token_last: bool = False,
) -> Tensor:
    """Run an open_clip ``Transformer`` block by block with ``hook`` (``first_edited``: block 0's input
    edit was already applied by the caller; ``checkpointed``: each block under activation checkpointing, see
    :func:`~lightning_prompts.backbones.layer_checkpointing.run_block`; ``class_token_last``: the last block for the
    first token only, :func:`~lightning_prompts.backbones.class_token_block.class_token_through`, whose output is
    then ``(B, 1, W)``)."""
    blocks = transformer.resblocks
    contexts = [BlockContext(i, len(blocks), 1, tower) for i in range(len(blocks))]
    sites = [BlockSites(attention=block.attn, mlp=block.mlp) for block in blocks]
    for block, site, context in zip(blocks, sites, contexts):
        if hook is not None and not (first_edited and context.index == 0):
            x = hook.before_block(context, x)
        if class_token_last and context.index == len(blocks) - 1:
            return checkpoint_if_recording(checkpointed, class_token_through, block, x)
        inside = functools.partial(_attachments, hook, site, context, backbone)
        if transformer.batch_first:
            x = run_block(block, x, checkpointed, inside, attn_mask=attn_mask)
        else:  # older open_clip (and OpenAI CLIP) run sequence-first
            x = run_block(block, x.transpose(0, 1), checkpointed, inside, attn_mask=attn_mask).transpose(0, 1)
    return x


@contextlib.contextmanager
def _attachments(hook: BlockHook | None, site: BlockSites, context: BlockContext, backbone: str) -> Iterator[None]:
    """One block's run: its attention projecting the batch-first tokens (:mod:`.batch_first_attention`; the same
    arithmetic, without the transposed projection ``nn.MultiheadAttention`` runs) and ``hook`` attached."""
    with projected_batch_first(site.attention), attached(hook, [site], [context], backbone):
        yield
