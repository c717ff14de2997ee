"""CoOp's learnable context vectors and the class prompts built around them.

For each class the text encoder sees the token embeddings of ``"X X … X <classname>."`` with the
``n_ctx`` placeholder embeddings replaced by learned vectors:

    [SOS] [ctx_1 … ctx_n] [class tokens] [.] [EOT] [pad …]      (class token at the "end")

The fixed parts are kept as buffers: ``token_prefix`` (the SOS embedding) and ``token_suffix``
(everything after the context slots). They depend on the class names only, so they are *not*
saved in checkpoints and are rebuilt by :meth:`ClassContextPrompt.set_classnames` whenever the
classes change (base -> novel, another dataset), as the official CoOp loader does by deleting
them from its checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_prompts.backbones.vision_language import VisionLanguageBackbone

ClassTokenPosition = Literal["end", "middle", "front"]


class ClassContextPrompt(nn.Module):
    """Learnable context shared by all classes (CoOp) or one per class (CoOp's CSC).

    Args:
        backbone: the CLIP whose tokenizer and token embeddings build the prompts.
        classnames: the classes (``_`` becomes a space, as in CoOp).
        n_ctx: number of context vectors. With ``ctx_init`` and ``n_ctx=None`` it is the number of
            words of ``ctx_init`` (CoOp's rule). With both given and ``n_ctx`` smaller than the
            phrase, the first ``n_ctx`` tokens become learnable and the rest of the phrase stays
            fixed in the suffix (MaPLe/CoPrompt behave like this; we reproduce it).
        ctx_init: initialise the context from the embeddings of this phrase ("a photo of a").
        class_specific: one context per class (CSC). Unlike the official code, which silently
            shares the context when ``ctx_init`` is set, we copy the initial phrase to every class.
        class_token_position: ``"end"``, ``"middle"`` (class name between the two halves of the
            context) or ``"front"``.
        init_std: standard deviation of the random initialisation (CoOp: 0.02).
    """

    def __init__(
        self,
        backbone: VisionLanguageBackbone,
        classnames: Sequence[str],
        n_ctx: int | None = 16,
        ctx_init: str | None = None,
        class_specific: bool = False,
        class_token_position: ClassTokenPosition = "end",
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if class_token_position not in ("end", "middle", "front"):
            raise ValueError(f"class_token_position must be 'end', 'middle' or 'front', got {class_token_position!r}.")
        width = backbone.text_width
        if ctx_init:
            ctx_init = ctx_init.replace("_", " ").strip()
            n_ctx = n_ctx or len(ctx_init.split(" "))
            init_ids = backbone.tokenize([ctx_init], what="context initialisation")
            available = int(backbone.eot_positions(init_ids)[0]) - 1
            if n_ctx > available:
                raise ValueError(f"n_ctx={n_ctx} but ctx_init {ctx_init!r} has only {available} tokens.")
            with torch.no_grad():
                vectors = backbone.embed_tokens(init_ids)[0, 1 : 1 + n_ctx].detach().clone().float()
            self.prompt_prefix = ctx_init
        else:
            if not n_ctx or n_ctx < 1:
                raise ValueError(f"n_ctx must be a positive number of context vectors, got {n_ctx}.")
            vectors = torch.empty(n_ctx, width).normal_(std=init_std)
            self.prompt_prefix = " ".join(["X"] * n_ctx)
        self.n_ctx, self.class_specific, self.position = n_ctx, class_specific, class_token_position
        if class_specific:
            count = len(classnames)
            vectors = (
                vectors.unsqueeze(0).repeat(count, 1, 1)
                if ctx_init
                else torch.empty(count, n_ctx, width).normal_(std=init_std)
            )
        self.ctx = nn.Parameter(vectors)
        self.set_classnames(classnames, backbone)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def prompt_texts(self, classnames: Sequence[str]) -> list[str]:
        """The strings that are tokenized (placeholders where the context vectors go)."""
        return [f"{self.prompt_prefix} {name}." for name in classnames]

    @torch.no_grad()
    def set_classnames(self, classnames: Sequence[str], backbone: VisionLanguageBackbone) -> None:
        """Rebuild the fixed prompt parts for a new list of classes."""
        names = [name.replace("_", " ") for name in classnames]
        if not names:
            raise ValueError("ClassContextPrompt needs at least one class name.")
        if self.class_specific and len(names) != self.ctx.shape[0]:
            raise ValueError(
                f"Class-specific context was learned for {self.ctx.shape[0]} classes and cannot build prompts "
                f"for {len(names)} other classes (evaluating on unseen classes needs a shared context)."
            )
        token_ids = backbone.tokenize(self.prompt_texts(names), what="class prompt")
        embeddings = backbone.embed_tokens(token_ids)
        self.classnames = list(classnames)
        self.register_buffer("eot_positions", backbone.eot_positions(token_ids), persistent=False)
        self.register_buffer("token_prefix", embeddings[:, :1].clone(), persistent=False)
        self.register_buffer("token_suffix", embeddings[:, 1 + self.n_ctx :].clone(), persistent=False)
        # tokens of each class name (without the trailing "."): what "middle"/"front" move around
        self.name_lengths = [backbone.token_count(name) - 2 for name in names]

    def forward(self, ctx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Return the class prompts' token embeddings ``(C, L, width)`` and their EOT positions ``(C,)``.

        ``ctx`` replaces the learned context for this call (GRAM's adapted context ``ctx − α·ψ(g)``).
        """
        ctx = self.ctx if ctx is None else ctx
        count = self.token_prefix.shape[0]
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(count, -1, -1)
        ctx = ctx.to(self.token_prefix.dtype)
        prefix, suffix = self.token_prefix, self.token_suffix
        if self.position == "end":
            prompts = torch.cat([prefix, ctx, suffix], dim=1)
        else:
            rows = []
            half = self.n_ctx // 2
            for i, length in enumerate(self.name_lengths):
                name, rest = suffix[i : i + 1, :length], suffix[i : i + 1, length:]
                if self.position == "middle":
                    parts = [prefix[i : i + 1], ctx[i : i + 1, :half], name, ctx[i : i + 1, half:], rest]
                else:
                    parts = [prefix[i : i + 1], name, ctx[i : i + 1], rest]
                rows.append(torch.cat(parts, dim=1))
            prompts = torch.cat(rows, dim=0)
        # moving the class name does not change the number of tokens, so EOT stays where it was
        return prompts, self.eot_positions
