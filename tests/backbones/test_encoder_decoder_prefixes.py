"""The encoder-decoder prefix mechanism on every architecture it claims (T5, mT5, BART, mBART, Pegasus, Marian), pinned
to the plain model on a longer input: each attention's keys and values at the lead's (encoder) and placeholders'
(decoder) positions of that run, handed over as prefixes, give exactly its logits."""

from __future__ import annotations

import pytest
import torch
import transformers
from helpers import recorded_key_values

from lightning_prompts.backbones.encoder_decoder_prefixes import (
    encoder_decoder_prefixes,
    prefix_site_count,
)
from lightning_prompts.backbones.hf_text import TINY_CONFIGS

#: the tiny BART's and the tiny T5's sizes (each architecture reads its own names and ignores the other's)
SIZES = {
    name: value
    for config in (TINY_CONFIGS["tiny-bart"], TINY_CONFIGS["tiny-t5"])
    for name, value in config.items()
    if name != "model_type"
}


def tiny(model_type: str) -> torch.nn.Module:
    config = transformers.AutoConfig.for_model(
        model_type, vocab_size=60, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, **SIZES
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForSeq2SeqLM.from_config(config).eval()
    with torch.no_grad():  # weights large enough that tokens score differently
        for weight in model.parameters():
            if weight.dim() == 2:
                weight.normal_(std=0.3)
        # learned or sinusoidal encoder positions would move with the longer run's text: zeroed, both runs agree
        positions = getattr(model.get_encoder(), "embed_positions", None)
        if positions is not None:
            positions.weight.zero_()
    return model


@pytest.mark.parametrize("model_type", ["t5", "mt5", "bart", "mbart", "pegasus", "marian"])
def test_prefixes_read_off_a_longer_run_give_its_logits(model_type):
    model = tiny(model_type)
    batch, m, heads, width = 3, 3, 2, 16
    ids = torch.randint(3, 60, (batch, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # padding: the masks get the prefix's columns
    lead, placeholders = torch.randint(3, 60, (1, m)).expand(batch, -1), torch.randint(3, 60, (1, m))
    start = torch.zeros(batch, 1, dtype=torch.long)
    with torch.no_grad():  # the longer run, every attention's key and value projections recorded
        recorded, longer = recorded_key_values(
            model,
            lambda: model(
                input_ids=torch.cat([lead, ids], dim=1),
                attention_mask=torch.cat([torch.ones(batch, m, dtype=torch.long), mask], dim=1),
                decoder_input_ids=torch.cat([placeholders.expand(batch, -1), start], dim=1),
            ),
        )
    longer = longer.logits[:, -1]

    def heads_first(t: torch.Tensor) -> torch.Tensor:  # (B, m, W) → (B, heads, m, head_dim)
        return t[:, :m].reshape(batch, m, heads, width).transpose(1, 2)

    prefixes = [(heads_first(keys), heads_first(values)) for keys, values in recorded]
    assert len(prefixes) == prefix_site_count(model) == 6
    with torch.no_grad():
        with encoder_decoder_prefixes(model, prefixes) as cache:
            ours = model(input_ids=ids, attention_mask=mask, decoder_input_ids=start, cache=cache).logits[:, -1]
        plain = model(input_ids=ids, attention_mask=mask, decoder_input_ids=start).logits[:, -1]
    torch.testing.assert_close(ours, longer, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, plain, atol=1e-2)


def test_a_wrong_number_of_prefixes_is_refused():
    model = tiny("bart")
    prefix = (torch.zeros(1, 2, 1, 16), torch.zeros(1, 2, 1, 16))
    with pytest.raises(ValueError, match="takes 6 prefixes"), encoder_decoder_prefixes(model, [prefix] * 4):
        pass
