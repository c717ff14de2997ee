"""``TextPromptModule.generate`` for the methods whose prompt enters at the input (DePT, EPT, IDP; PromptTuning's
own tests are in test_prompt_tuning.py): pinned to greedy decoding written out over the causal LM's plain forward
on ``[prompt; text + offset; generated]``, one text at a time, unpadded."""

from __future__ import annotations

import pytest
import torch

from lightning_prompts.backbones import HFText
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods import EPT, IAPT, IDP, PANDA, POST, DePT, DPPromptTuning, PrefixTuning
from lightning_prompts.prompts.instance_prompts import InstancePromptHook

TEXTS = ["the film was great and moving", "dull", "an awful, tedious and clumsy film with a weak plot!"]
STEPS = 6


def causal_lm(name: str, std: float) -> HFText:
    torch.manual_seed(0)
    backbone = HFText(name, task="causal-lm")
    with torch.no_grad():  # weights large enough that what follows depends on the prompt
        for param in backbone.model.parameters():
            param.normal_(std=std)
    return backbone


def trained_looking(method, std: float = 1.0):
    """Every trained parameter drawn afresh (DePT's B starts at zero: its offset would prove nothing)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in [p for p in method.parameters() if p.requires_grad]:
            param.copy_(torch.randn(param.shape, generator=generator) * std)
    return method.eval()


def greedy(backbone: HFText, prompt: torch.Tensor, ids: torch.Tensor, offset: torch.Tensor | None) -> list[int]:
    """Greedy decoding over the model's own forward: the prompt, the text's embeddings plus the offset, then the
    generated tokens' embeddings with none; the whole sequence each step, no cache."""
    embed = backbone.word_embeddings
    text = embed(ids) + (0 if offset is None else offset)
    generated: list[int] = []
    with torch.no_grad():
        for _ in range(STEPS):
            new = embed(torch.tensor(generated, dtype=torch.long))
            inputs = torch.cat([prompt, text, new])[None]
            generated.append(int(backbone.model(inputs_embeds=inputs).logits[0, -1].argmax()))
    return generated


def real_ids(method, text: str) -> torch.Tensor:
    tokens = method.tokenize([text])
    return tokens["input_ids"][0, : int(tokens["attention_mask"].sum())]


@pytest.mark.parametrize(("name", "std"), [("tiny-gpt2", 0.5), ("tiny-gemma3", 0.1)])
@pytest.mark.parametrize("method_class", [DePT, EPT])
def test_dept_and_ept_continue_each_text_after_the_prompt_with_the_offset_on_the_text_only(method_class, name, std):
    backbone = causal_lm(name, std)
    kwargs = {"spaces": 2, "space_rank": 2} if method_class is EPT else {}
    method = method_class(backbone, ["good", "bad"], num_virtual_tokens=3, rank=4, max_length=48, **kwargs)
    trained_looking(method, std=0.2)
    with torch.no_grad():  # the prompt, and the offset rows of all 48 positions a text can meet
        prompt, offset = method.prompt_inputs(torch.zeros(1, 48, dtype=torch.long), torch.ones(1, 48))
    references = []
    for text in TEXTS:
        ids = real_ids(method, text)
        references.append(greedy(backbone, prompt, ids, offset[: len(ids)]))
    assert method.generate(TEXTS, decode=False, max_new_tokens=STEPS).tolist() == references
    assert len({tuple(row) for row in references}) == len(TEXTS)  # each text is continued differently
    # the offset matters: without it the first text goes on otherwise
    assert greedy(backbone, prompt, real_ids(method, TEXTS[0]), None) != references[0]
    assert method.generate(TEXTS[:1], max_new_tokens=STEPS) == backbone.tokenizer.batch_decode([references[0]])


@pytest.mark.parametrize("method_class", [DPPromptTuning, POST, PANDA])
def test_methods_built_on_prompt_or_prefix_tuning_generate_as_their_base(method_class):
    """DP prompt tuning and POST continue each text after their soft tokens, PANDA after its prefixes (the key/value
    cache generation starts from): greedy decoding written out over the model's forward, one text at a time."""
    backbone = causal_lm("tiny-gpt2", 0.5)
    method = trained_looking(method_class(backbone, ["good", "bad"], num_virtual_tokens=3))
    references = []
    for text in TEXTS:
        ids = real_ids(method, text)
        if method_class is not PANDA:
            with torch.no_grad():
                references.append(greedy(backbone, method.soft_tokens(), ids, None))
            continue
        generated: list[int] = []
        with torch.no_grad():
            for _ in range(STEPS):
                tokens = torch.cat([ids, torch.tensor(generated, dtype=torch.long)])[None]
                logits = backbone.forward_embeddings(None, tokens, torch.ones_like(tokens), hooks=method.prefix.hooks())
                generated.append(int(logits.logits.argmax(-1)))
        references.append(generated)
    assert method.generate(TEXTS, decode=False, max_new_tokens=STEPS).tolist() == references
    assert len({tuple(row) for row in references}) == len(TEXTS)  # each text is continued differently


@pytest.mark.parametrize(("name", "std", "seed"), [("tiny-gpt2", 0.5, 3), ("tiny-gemma3", 0.1, 0)])
def test_idp_continues_each_text_after_the_prompt_it_chooses(name, std, seed):
    """The bank's seed per model is one where the three texts do not all choose one prompt."""
    backbone = causal_lm(name, std)
    method = IDP(backbone, ["good", "bad"], num_prompts=3, num_virtual_tokens=2, seed=seed).eval()
    with torch.no_grad():
        method.bank.mul_(1.0 / method.bank.std())  # prompts the size of words or larger: they steer the model
    tokens = method.tokenize(TEXTS)
    chosen = method.select(tokens["input_ids"], tokens["attention_mask"]).tolist()
    assert len(set(chosen)) > 1  # the batch runs with different prompts
    references = [greedy(backbone, method.bank[i].detach(), real_ids(method, t), None) for i, t in zip(chosen, TEXTS)]
    assert method.generate(TEXTS, decode=False, max_new_tokens=STEPS).tolist() == references
    # the bank's prompts continue the first text differently: which one generation used matters
    continuations = {
        tuple(greedy(backbone, prompt.detach(), real_ids(method, TEXTS[0]), None)) for prompt in method.bank
    }
    assert len(continuations) > 1


def iapt_reference(method: IAPT, text: str) -> list[int]:
    """Greedy decoding over IAPT's forward pass on ``[slot; instruction; generated]``, the whole sequence each step,
    with the generators reading the instruction only (the generated tokens are masked out of their pooling)."""
    backbone, ids = method.backbone, real_ids(method, text)[None]
    generated: list[int] = []
    with torch.no_grad():
        for _ in range(STEPS):
            all_ids = torch.cat([ids, torch.tensor([generated], dtype=torch.long)], dim=1)
            instruction = torch.cat([torch.ones_like(ids), torch.zeros(1, len(generated), dtype=torch.long)], dim=1)
            first = method.generators(0, backbone.word_embeddings(all_ids), instruction)
            hook = InstancePromptHook(method.generators, instruction, slot_update=method.slot_update)
            logits = backbone.forward_embeddings(first, all_ids, torch.ones_like(all_ids), hooks=hook).logits
            generated.append(int(logits.argmax(-1)))
    return generated


@pytest.mark.parametrize(("name", "std", "slot_update"), [("tiny-gpt2", 0.5, "replace"), ("tiny-gemma3", 0.1, "add")])
def test_iapt_continues_each_text_after_the_tokens_its_instruction_generates(name, std, slot_update):
    backbone = causal_lm(name, std)
    method = IAPT(backbone, ["good", "bad"], num_virtual_tokens=2, bottleneck=4, slot_update=slot_update)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # trained-looking generators: tokens that depend on the input and differ by layer
        for parameter in method.generators.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)
    method.eval()
    references = [iapt_reference(method, text) for text in TEXTS]
    assert method.generate(TEXTS, decode=False, max_new_tokens=STEPS).tolist() == references
    assert len({tuple(row) for row in references}) == len(TEXTS)
    # the per-layer tokens matter: with the layer-0 tokens alone (no hook) the texts go on otherwise
    without_layers = []
    for text in TEXTS:
        ids = real_ids(method, text)
        first = method.generators(0, backbone.word_embeddings(ids[None]), torch.ones(1, len(ids))).detach()[0]
        without_layers.append(greedy(backbone, first, ids, None))
    assert without_layers != references


def test_iapt_generation_needs_a_causal_language_model():
    method = IAPT(HFText("tiny-bert"), ["good", "bad"], num_virtual_tokens=2, bottleneck=4)
    with pytest.raises(ConfigurationError, match="causal language model"):
        method.generate(["text"])


def test_dept_on_an_encoder_decoder_decodes_from_the_prompted_encoder():
    """T5, as DePT's official code evaluates: ``[prompt; text + offset]`` in the encoder, greedy decoding from the
    decoder's start token, written out step by step over the model's forward."""
    torch.manual_seed(0)
    backbone = HFText("tiny-t5", task="seq2seq-lm")
    with torch.no_grad():
        for param in backbone.model.parameters():
            param.normal_(std=0.5)
    method = trained_looking(DePT(backbone, ["good", "bad"], num_virtual_tokens=3, rank=4, max_length=48), std=0.2)
    start = backbone.model.config.decoder_start_token_id
    references = []
    for text in TEXTS:
        ids = real_ids(method, text)
        with torch.no_grad():
            prompt, offset = method.prompt_inputs(ids[None], torch.ones(1, len(ids)))
            encoder_inputs = torch.cat([prompt, backbone.word_embeddings(ids) + offset])[None]
            decoded = [start]
            for _ in range(STEPS):
                logits = backbone.model(inputs_embeds=encoder_inputs, decoder_input_ids=torch.tensor([decoded])).logits
                decoded.append(int(logits[0, -1].argmax()))
        references.append(decoded[1:])
    ours = method.generate(TEXTS, decode=False, max_new_tokens=STEPS, min_new_tokens=STEPS)
    assert ours.tolist() == references
    assert len({tuple(row) for row in references}) == len(TEXTS)


def test_a_prompt_trained_and_loaded_from_its_checkpoint_generates_the_same(trainer_kwargs, tmp_path):
    """The user's way: fit, then ``load_from_checkpoint`` (which rebuilds the frozen model from the stored config)
    and generate: the same tokens as the trained module in memory."""
    from lightning.pytorch import Trainer

    from lightning_prompts.data import SyntheticText, TextClassificationDataModule

    data = TextClassificationDataModule(synthetic=SyntheticText(examples_per_class=8), batch_size=8)
    backbone = HFText("tiny-gpt2", task="causal-lm")
    method = DePT(backbone, data.classnames, num_virtual_tokens=3, rank=4, max_length=48, offset_lr=0.5)
    trainer = Trainer(max_steps=3, **trainer_kwargs)
    trainer.fit(method, data)
    assert method.offset(48).abs().max() > 0  # the offset trained away from its zero start
    trainer.save_checkpoint(tmp_path / "dept.ckpt")
    restored = DePT.load_from_checkpoint(tmp_path / "dept.ckpt").eval()
    with torch.no_grad():
        assert torch.equal(restored.offset(48), method.offset(48)) and torch.equal(restored.prompt(), method.prompt())
    expected = method.eval().generate(TEXTS, decode=False, max_new_tokens=STEPS)
    assert restored.generate(TEXTS, decode=False, max_new_tokens=STEPS).tolist() == expected.tolist()


def prefix_reference(method: PrefixTuning, text: str) -> list[int]:
    """Greedy decoding over PrefixTuning's forward on ``[text; generated]``, the whole sequence each step."""
    ids = real_ids(method, text)[None]
    generated: list[int] = []
    with torch.no_grad():
        for _ in range(STEPS):
            all_ids = torch.cat([ids, torch.tensor([generated], dtype=torch.long)], dim=1)
            hooks = method.prefix.hooks()
            logits = method.backbone.forward_embeddings(None, all_ids, torch.ones_like(all_ids), hooks=hooks).logits
            generated.append(int(logits.argmax(-1)))
    return generated


@pytest.mark.parametrize("method_class", [PrefixTuning, IAPT])
def test_a_cache_is_repeated_for_several_sequences_per_text(method_class):
    """Generation repeats each text for its beams or returned sequences, not a cache handed to it (before: a size
    mismatch at the first step). Two sequences per text sampled from the top token only are both the greedy one,
    in the texts' order; beam search returns one sequence per text."""
    backbone = causal_lm("tiny-gpt2", 0.5)
    if method_class is PrefixTuning:
        method = PrefixTuning(backbone, ["good", "bad"], num_virtual_tokens=3)
        with torch.no_grad():
            for param in method.prefix.parameters():
                param.normal_(std=1.0)
        reference = prefix_reference
    else:
        method = IAPT(backbone, ["good", "bad"], num_virtual_tokens=2, bottleneck=4)
        reference = iapt_reference
    method.eval()
    expected = [reference(method, text) for text in TEXTS]
    sampled = method.generate(
        TEXTS, decode=False, max_new_tokens=STEPS, do_sample=True, top_k=1, num_return_sequences=2
    ).tolist()
    assert sampled == [row for row in expected for _ in range(2)]
    assert method.generate(TEXTS, decode=False, max_new_tokens=STEPS, num_beams=3).shape == (len(TEXTS), STEPS)
    beams = method.generate(TEXTS, decode=False, max_new_tokens=STEPS, num_beams=3, num_return_sequences=2)
    assert beams.shape == (2 * len(TEXTS), STEPS)


def test_max_length_is_refused_for_max_new_tokens():
    """transformers' max_length counts the input: after a prompt, the positions it counted differed by method (a
    default of 20 new tokens silently won over it before)."""
    method = IDP(causal_lm("tiny-gpt2", 0.5), ["good", "bad"], num_prompts=2, num_virtual_tokens=2)
    with pytest.raises(ConfigurationError, match="max_new_tokens"):
        method.generate(TEXTS, max_length=40)
