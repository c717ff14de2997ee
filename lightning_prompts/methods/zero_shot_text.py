"""Zero-shot text classification: a frozen language model classifies texts with nothing trained.

The baseline a text prompt method is compared with (prompt tuning's "zero-shot" row), the text counterpart of
:class:`~lightning_prompts.methods.ZeroShotCLIP`. Two ways, picked by the backbone's task:

* **a causal LM or an encoder-decoder** scores each class by the next-token logit of its label word after the
  text put into ``text_template`` (a verbalizer: ``"Review: {text}\\nSentiment:"`` with label words
  ``negative``, ``positive``; several words per class average their logits), exactly as the text prompt methods
  score classes, without a prompt;
* **a sentence encoder** (sequence classification with ``pooling`` ``"mean"``, ``"cls"`` or ``"last"``, e.g.
  MiniLM-L6 with mean pooling, the way it was trained for sentence embeddings) compares each text's pooled
  embedding with each class description's (``class_template`` filled with the class name, ``"a {} review."``):
  the classifier's rows are the descriptions' embeddings, L2-normalised, with zero bias, so a text goes to the
  class whose description points the most its way (the highest cosine similarity; the logits are the cosine
  times the text embedding's norm, which does not change the ranking).

No method paper: the standard zero-shot baselines of the prompt-tuning papers (Lester et al. 2021 compare with
GPT-3's few-shot prompting; the sentence-embedding zero-shot is how sentence-transformers users classify without
training). ``fit`` only validates; use ``validate`` or ``test``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from lightning_prompts.backbones.hf_text import HFText
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods.base.text import LabelWords, TextPromptModule
from lightning_prompts.registry import register_method


@register_method(
    family="text",
    title="Zero-shot text",
    paper="none: the zero-shot baseline of text prompt tuning (label-word scoring; sentence-embedding similarity)",
    example={"contract_backbone": "tiny-gpt2", "text_template": "{text} is about"},
)
class ZeroShotText(TextPromptModule):
    """A frozen language model's zero-shot classification (see the module docstring).

    Args:
        backbone: the frozen :class:`~lightning_prompts.backbones.HFText`: a causal LM or an encoder-decoder (label
            words), or a sequence-classification encoder with ``pooling`` ``"mean"``, ``"cls"`` or ``"last"``
            (class descriptions).
        classnames: the classes, in label order (linked from the data module).
        label_words: causal LM and encoder-decoder: each class's word, or words (default: the class names).
        text_template: how an input is presented, e.g. ``"Review: {text}\\nSentiment:"``.
        class_template: encoder: each class's description, ``{}`` for the class name (``"a {} review."``).
        truncate: cut texts that do not fit the context (otherwise too long a text is an error before the run).
        **kwargs: see :class:`~lightning_prompts.methods.PromptModule` (nothing is optimised).
    """

    def __init__(
        self,
        backbone: HFText,
        classnames: Sequence[str] | None = None,
        label_words: LabelWords | None = None,
        text_template: str = "{text}",
        class_template: str = "{}",
        truncate: bool = False,
        **kwargs: Any,
    ) -> None:
        if "{}" not in class_template:
            raise ValueError(f"class_template needs a '{{}}' for the class name, got {class_template!r}.")
        if isinstance(backbone, HFText) and backbone.task == "sequence-classification":
            if backbone.pooling == "model":
                raise ConfigurationError(
                    f"ZeroShotText on an encoder compares pooled embeddings; {backbone.name} has pooling 'model' "
                    "(its own pooler and untrained classifier): give the backbone pooling 'mean' (sentence "
                    "encoders such as MiniLM), 'cls' or 'last', or a causal LM with label words."
                )
            if label_words:
                raise ConfigurationError(
                    "label_words score a language model's next token; an encoder compares class descriptions "
                    "(class_template)."
                )
        super().__init__(backbone, classnames, label_words, text_template, truncate, **kwargs)
        self.class_template = class_template
        model: HFText = self.backbone
        if model.task == "sequence-classification":
            descriptions = [class_template.format(name.replace("_", " ")) for name in self.classnames]
            rows = F.normalize(model.pooled_text_features(descriptions), dim=-1)
            (head,) = model.head_modules().values()
            with torch.no_grad():
                head.weight.copy_(rows.to(head.weight))
                if head.bias is not None:
                    head.bias.zero_()
            head.requires_grad_(False)
