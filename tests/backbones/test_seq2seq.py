"""Encoder-decoder models (T5, DePT's and EPT's backbone) through ``HFText(task="seq2seq-lm")``: soft tokens enter the
encoder as PEFT's ``SEQ_2_SEQ_LM`` prompt tuning puts them, and classes are scored by their label word as the
decoder's first token."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import PeftModel

from lightning_prompts.backbones import HFText
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods import PrefixTuning, PromptTuning

TEXTS = ["the film was great and moving", "dull", "an awful, tedious and clumsy film with a weak plot!"]


def scaled_up(backbone: HFText) -> HFText:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # weights large enough that the classes score differently
        for weight in backbone.model.parameters():
            if weight.dim() == 2:
                weight.normal_(std=0.3, generator=generator)
    return backbone


def test_prompt_tuning_on_t5_matches_peft_after_export(tmp_path):
    backbone = scaled_up(HFText("tiny", task="seq2seq-lm"))
    assert backbone.model_name_or_path == "tiny-t5" and backbone.model.config.is_encoder_decoder
    method = PromptTuning(backbone, ["neg", "pos", "mid"], num_virtual_tokens=4, label_words=["0", "1", "2"]).eval()
    peft_model = PeftModel.from_pretrained(copy.deepcopy(backbone.model), str(method.export_peft(tmp_path / "a")))
    tokens = method.tokenize(TEXTS)
    start = torch.full((len(TEXTS), 1), backbone.model.config.decoder_start_token_id)
    with torch.no_grad():
        ours = method(tokens["input_ids"], tokens["attention_mask"]).logits
        theirs = peft_model.eval()(**tokens, decoder_input_ids=start).logits[:, 0][:, method.label_word_ids]
        plain = backbone.model(**tokens, decoder_input_ids=start).logits[:, 0][:, method.label_word_ids]
    assert ours.shape == (3, 3)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.allclose(ours, plain, atol=1e-3)  # the prompt changes the encoding
    assert not torch.allclose(ours[0], ours[1], atol=1e-3)


def test_key_value_prefixes_are_refused_on_an_encoder_decoder():
    with pytest.raises(ConfigurationError, match="use soft tokens"):
        PrefixTuning(HFText("tiny-t5", task="seq2seq-lm"), ["neg", "pos"], num_virtual_tokens=2)
