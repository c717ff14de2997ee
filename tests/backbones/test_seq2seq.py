"""Encoder-decoder models (T5, DePT's and EPT's backbone) through ``HFText(task="seq2seq-lm")``: soft tokens enter the
encoder as PEFT's ``SEQ_2_SEQ_LM`` prompt tuning puts them, and classes are scored by their label word as the
decoder's first token."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import recorded_key_values
from peft import PeftModel

from lightning_prompts.backbones import HFText
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


def prefixes_from_a_longer_run(backbone: HFText, tokens: dict, lead: torch.Tensor, placeholders: torch.Tensor):
    """Per-row prefixes that make ``tokens`` run exactly as the plain model runs ``[lead; text]`` into a decoder
    fed ``[placeholders; start]``: each layer's keys and values of the lead (encoder self-attention, and the
    encoder output's for cross-attention) and of the placeholders (decoder self-attention), read off that longer
    run. Returns the ``(B, m, sites, 2, W)`` table and the longer run's last-position logits ``(B, V)``."""
    model = backbone.model
    batch, m = tokens["input_ids"].shape[0], lead.shape[0]
    ids = torch.cat([lead.expand(batch, -1), tokens["input_ids"]], dim=1)
    mask = torch.cat([torch.ones(batch, m, dtype=torch.long), tokens["attention_mask"]], dim=1)
    start = torch.full((batch, 1), model.config.decoder_start_token_id)
    decoder_ids = torch.cat([placeholders.expand(batch, -1), start], dim=1)
    recorded, out = recorded_key_values(
        model, lambda: model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids)
    )
    sites = [torch.stack([keys[:, :m], values[:, :m]], dim=2) for keys, values in recorded]  # (B, m, 2, W) each
    return torch.stack(sites, dim=2), out.logits[:, -1]


def without_encoder_positions(backbone: HFText) -> HFText:
    """BART adds learned positions to the encoder's input, where the longer run's text sits ``m`` places later than
    the prefixed run's: zeroed, both runs see the same encoder input (T5's relative bias needs nothing)."""
    positions = getattr(backbone.model.get_encoder(), "embed_positions", None)
    if positions is not None:
        with torch.no_grad():
            positions.weight.zero_()
    return backbone


@pytest.mark.parametrize(
    "name,attention", [("tiny-t5", "sdpa"), ("tiny-t5", "eager"), ("tiny-bart", "sdpa"), ("tiny-bart", "eager")]
)
def test_encoder_decoder_prefixes_are_extra_positions_before_the_text_in_all_three_attentions(name, attention):
    """Li & Liang's encoder-decoder prefixes (encoder self-attention, decoder self-attention, cross-attention),
    pinned to the plain model on a longer input: prefixes read off the lead's positions of that run give exactly
    its logits (T5's relative position bias included: the prefix sits before the text, as in a cache)."""
    from lightning_prompts.prompts.prefix import PrefixHook

    backbone = HFText(name, task="seq2seq-lm", model_kwargs={"attn_implementation": attention})
    backbone = without_encoder_positions(scaled_up(backbone))
    assert backbone.prefix_layers == 2 + 2 * 2 and backbone.key_value_heads == (2, 16)
    tokens = backbone.tokenize(TEXTS)
    assert not tokens["attention_mask"].all()  # padding: the masks get the prefix's columns
    lead, placeholders = torch.tensor([7, 12, 9]), torch.tensor([20, 5, 31])
    with torch.no_grad():
        table, expected = prefixes_from_a_longer_run(backbone, tokens, lead, placeholders)
        ours = backbone.forward_embeddings(None, **tokens, hooks=PrefixHook(table)).logits
        plain = backbone.forward_embeddings(None, **tokens).logits
        without_cross = table.clone()
        without_cross[:, :, 4:] = 0  # the cross-attention prefixes matter on their own
        partial = backbone.forward_embeddings(None, **tokens, hooks=PrefixHook(without_cross)).logits
    assert ours.shape == expected.shape == (3, backbone.model.config.vocab_size)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, plain, atol=1e-2) and not torch.allclose(ours, partial, atol=1e-2)


def test_bart_keeps_the_texts_encoder_positions_and_moves_the_decoders_past_its_prefix():
    """Which positions BART's learned embeddings give: the encoder's text keeps its own (the prefixes enter below
    its input and take none); the decoder's first token sits after its prefix, as after a cache."""
    from lightning_prompts.prompts.prefix import PrefixHook

    backbone = HFText("tiny-bart", task="seq2seq-lm")
    tokens = backbone.tokenize(TEXTS)
    seen: dict[str, list[torch.Tensor]] = {"encoder": [], "decoder": []}
    for part in seen:
        stack = getattr(backbone.model, f"get_{part}")()
        stack.embed_positions.register_forward_hook(lambda module, args, out, part=part: seen[part].append(out))
    table = torch.randn(len(TEXTS), 2, 6, 2, 32)
    with torch.no_grad():
        backbone.forward_embeddings(None, **tokens)
        backbone.forward_embeddings(None, **tokens, hooks=PrefixHook(table))
    plain, prefixed = seen["encoder"]
    torch.testing.assert_close(prefixed, plain)
    weights = backbone.model.get_decoder().embed_positions.weight
    offset = backbone.model.get_decoder().embed_positions.offset
    torch.testing.assert_close(seen["decoder"][0].reshape(-1, 32)[0], weights[offset])
    torch.testing.assert_close(seen["decoder"][1].reshape(-1, 32)[0], weights[offset + 2])


@pytest.mark.parametrize("name", ["tiny-t5", "tiny-bart"])
def test_prefix_tuning_on_an_encoder_decoder_trains_every_site_and_checkpointing_changes_nothing(name):
    torch.manual_seed(0)
    backbone = scaled_up(HFText(name, task="seq2seq-lm"))
    method = PrefixTuning(backbone, ["neg", "pos", "mid"], num_virtual_tokens=2, label_words=["0", "1", "2"])
    assert method.prefix().shape == (2, 6, 2, 32)  # m, sites (2 encoder, 2 decoder, 2 cross), key/value, W
    assert method.max_text_tokens == backbone.max_length  # the encoder's text keeps every position
    tokens = method.tokenize(TEXTS)
    labels = torch.tensor([0, 1, 2])

    def step():
        method.prefix.table.grad = None
        logits = method(**tokens).logits
        torch.nn.functional.cross_entropy(logits, labels).backward()
        return logits.detach(), method.prefix.table.grad.view(2, 6, 2, 32).clone()

    logits, grad = step()
    assert logits.shape == (3, 3) and not torch.allclose(logits[0], logits[1], atol=1e-3)
    assert (grad.abs().sum(dim=(0, 2, 3)) > 0).all()  # every site's keys and values get a gradient
    backbone.gradient_checkpointing = True
    checkpointed_logits, checkpointed_grad = step()
    torch.testing.assert_close(checkpointed_logits, logits)
    torch.testing.assert_close(checkpointed_grad, grad)


def test_other_encoder_decoder_layouts_are_refused_with_a_clear_error():
    from lightning_prompts.backbones.encoder_decoder_prefixes import encoder_decoder_layers

    with pytest.raises(NotImplementedError, match="T5's and BART's architectures"):
        encoder_decoder_layers(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("name", ["tiny-t5", "tiny-bart"])
@pytest.mark.parametrize("beams", [1, 2])
def test_generation_after_encoder_decoder_prefixes_is_the_plain_models_generation_on_the_longer_input(beams, name):
    """Greedy and beam search after the three prefixes equal the plain model's own generation on ``[lead; text]``
    with its decoder started from ``[placeholders; start]``, the run the prefixes were read off."""
    from lightning_prompts.prompts.prefix import PrefixHook

    backbone = without_encoder_positions(scaled_up(HFText(name, task="seq2seq-lm")))
    model = backbone.model
    tokens = backbone.tokenize(TEXTS)
    # the placeholders open with the start token, or generate() would put one before them
    lead, placeholders = torch.tensor([7, 12, 9]), torch.tensor([model.config.decoder_start_token_id, 5, 31])
    options = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False, "num_beams": beams}
    options["num_return_sequences"] = beams
    with torch.no_grad():
        table, _ = prefixes_from_a_longer_run(backbone, tokens, lead, placeholders)
        ours = backbone.generate_after_prefixes(PrefixHook(table), **tokens, **options)
        batch = len(TEXTS)
        start = torch.full((batch, 1), model.config.decoder_start_token_id)
        expected = model.generate(
            input_ids=torch.cat([lead.expand(batch, -1), tokens["input_ids"]], dim=1),
            attention_mask=torch.cat([torch.ones(batch, 3, dtype=torch.long), tokens["attention_mask"]], dim=1),
            decoder_input_ids=torch.cat([placeholders.expand(batch, -1), start], dim=1),
            **options,
        )[:, 4:]
    assert ours.shape == (batch * beams, 6)
    assert ours.tolist() == expected.tolist()
    assert len({tuple(row) for row in ours.tolist()}) > 1


def test_prefix_tuning_generates_on_t5_with_its_own_prefixes_and_refuses_a_peft_export(tmp_path):
    backbone = scaled_up(HFText("tiny-t5", task="seq2seq-lm"))
    method = PrefixTuning(backbone, ["neg", "pos"], num_virtual_tokens=2, label_words=["0", "1"]).eval()
    with torch.no_grad():
        method.prefix.table.normal_(std=0.5)
        ids, mask = method.generation_batch(TEXTS)
        expected = backbone.generate_after_prefixes(
            method.prefix.hooks(), ids, mask, max_new_tokens=4, min_new_tokens=4
        )
        plain = backbone.generate_after_prompt(None, ids, mask, max_new_tokens=4, min_new_tokens=4)
    ours = method.generate(TEXTS, decode=False, max_new_tokens=4, min_new_tokens=4)
    assert ours.tolist() == expected.tolist() and ours.tolist() != plain.tolist()
    assert method.generate(TEXTS[:1], max_new_tokens=4) == backbone.tokenizer.batch_decode(
        expected[:1], skip_special_tokens=True
    )
    with pytest.raises(NotImplementedError, match="decoder's self-attention only"):
        method.export_peft(tmp_path / "peft")


def prefix_tuning_step(processes: int, root) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step of prefix tuning on T5 over the whole synthetic training set (16 texts: one global batch), on one
    process or two (gloo, 8 texts each): the prefix table before and after."""
    from lightning.pytorch import Trainer, seed_everything

    from lightning_prompts.data import SyntheticText, TextClassificationDataModule

    seed_everything(0, verbose=False)
    data = TextClassificationDataModule(synthetic=SyntheticText(examples_per_class=8), batch_size=16 // processes)
    method = PrefixTuning(
        scaled_up(HFText("tiny-t5", task="seq2seq-lm")),
        data.classnames,
        num_virtual_tokens=2,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.5),
    )
    before = method.prefix.table.detach().clone()
    trainer = Trainer(strategy="ddp_fork" if processes > 1 else "auto", devices=processes, accelerator="cpu",
                      max_steps=1, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=str(root))  # fmt: skip
    trainer.fit(method, data)
    return before, method.prefix.table.detach().clone()


def test_t5_prefix_tuning_on_two_processes_is_one_process_on_the_global_batch(tmp_path):
    before, alone = prefix_tuning_step(1, tmp_path / "one")
    _, shared = prefix_tuning_step(2, tmp_path / "two")
    assert (alone - before).abs().max() > 1e-3  # the step moved the prefixes
    torch.testing.assert_close(shared, alone, rtol=1e-5, atol=1e-6)
