"""Prompt tuning: the soft prompt enters like PEFT's, and PEFT loads our export with equal logits."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from lightning.pytorch import Trainer
from peft import PeftModel

from lightning_prompts.backbones import HFText
from lightning_prompts.data import SyntheticText, TextClassificationDataModule
from lightning_prompts.errors import ContextLengthError
from lightning_prompts.methods import PromptTuning

TEXTS = ["the film was great and moving", "dull", "an awful, tedious and clumsy film with a weak plot!"]


def trained(task: str, trainer_kwargs, **kwargs) -> PromptTuning:
    backbone = HFText("tiny-bert" if task == "sequence-classification" else "tiny-gpt2", task=task)
    data = TextClassificationDataModule(synthetic=SyntheticText(examples_per_class=8), batch_size=8)
    method = PromptTuning(backbone, data.classnames, num_virtual_tokens=5, **kwargs)
    Trainer(max_steps=3, **trainer_kwargs).fit(method, data)
    return method.eval()


def test_sequence_classification_matches_peft_after_export(trainer_kwargs, tmp_path):
    method = trained("sequence-classification", trainer_kwargs)
    base = copy.deepcopy(method.backbone.model)
    with torch.no_grad():  # PEFT must take the head from the adapter, not from the copy
        for head in base.classifier.parameters():
            head.zero_()
    directory = method.export_peft(tmp_path / "adapter")
    peft_model = PeftModel.from_pretrained(base, str(directory)).eval()
    tokens = method.tokenize(TEXTS)
    with torch.no_grad():
        ours = method(tokens["input_ids"], tokens["attention_mask"]).logits
        theirs = peft_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).logits
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_causal_lm_verbalizer_matches_peft_after_export(trainer_kwargs, tmp_path):
    method = trained("causal-lm", trainer_kwargs, text_template="{text} it was")
    directory = method.export_peft(tmp_path / "adapter")
    peft_model = PeftModel.from_pretrained(copy.deepcopy(method.backbone.model), str(directory)).eval()
    tokens = method.tokenize(TEXTS)
    with torch.no_grad():
        ours = method(tokens["input_ids"], tokens["attention_mask"]).logits
        full = peft_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).logits
    last = tokens["attention_mask"].sum(1) - 1 + 5  # last real token, after the 5 virtual tokens
    theirs = full[torch.arange(len(TEXTS)), last][:, method.label_word_ids]
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_soft_prompt_is_prepended_with_ones_in_the_mask():
    backbone = HFText("tiny-bert")
    method = PromptTuning(backbone, ["neg", "pos"], num_virtual_tokens=3, init="random")
    tokens = method.tokenize(TEXTS)
    embeds = torch.cat(
        [method.prompt.embedding.unsqueeze(0).expand(3, -1, -1), backbone.word_embeddings(tokens["input_ids"])], 1
    )
    mask = torch.cat([torch.ones(3, 3, dtype=torch.long), tokens["attention_mask"]], 1)
    with torch.no_grad():
        expected = backbone.model(inputs_embeds=embeds, attention_mask=mask).logits
        assert torch.allclose(method(**tokens).logits, expected, atol=1e-6)
    trainable = {n for n, p in method.named_parameters() if p.requires_grad}
    assert trainable == {"prompt.embedding", "backbone.model.classifier.weight", "backbone.model.classifier.bias"}


def test_text_initialisation_repeats_the_tokens_like_peft():
    backbone = HFText("tiny-bert")
    method = PromptTuning(backbone, ["neg", "pos"], num_virtual_tokens=7, init="text", init_text="ok")
    ids = backbone.tokenizer("ok")["input_ids"]  # [CLS] o ##k [SEP]
    expected = backbone.word_embeddings.weight[torch.tensor((ids * 2)[:7])]
    assert torch.equal(method.prompt.embedding.detach(), expected)


def test_text_initialisation_without_special_tokens_takes_the_words_alone():
    backbone = HFText("tiny-bert")
    method = PromptTuning(
        backbone, ["neg", "pos"], num_virtual_tokens=5, init="text_without_special_tokens", init_text="ok"
    )
    ids = backbone.tokenizer("ok", add_special_tokens=False)["input_ids"]  # o ##k: no [CLS], no [SEP]
    assert len(ids) == 2 and backbone.tokenizer.cls_token_id not in ids
    expected = backbone.word_embeddings.weight[torch.tensor((ids * 3)[:5])]
    assert torch.equal(method.prompt.embedding.detach(), expected)
    with pytest.raises(ValueError, match="init='text_without_special_tokens' needs init_text"):
        PromptTuning(backbone, ["neg", "pos"], init="text_without_special_tokens")


def decoder_adding_bos() -> HFText:
    """The tiny Gemma-3 with a tokenizer that starts every text with a beginning-of-sequence token, as
    Gemma's and Llama's do (the tiny causal tokenizer adds nothing)."""
    from tokenizers import processors

    backbone = HFText("tiny-gemma3", task="causal-lm")
    tokenizer = backbone.tokenizer
    tokenizer.bos_token = "[CLS]"
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A", special_tokens=[("[CLS]", tokenizer.bos_token_id)]
    )
    return backbone


def test_text_initialisation_warns_when_the_bos_token_recurs_inside_the_prompt():
    backbone = decoder_adding_bos()
    bos = backbone.tokenizer.bos_token_id
    words = backbone.tokenizer("ok", add_special_tokens=False)["input_ids"]
    assert backbone.tokenizer("ok")["input_ids"] == [bos, *words]
    with pytest.warns(UserWarning, match=r"inside the 7-token prompt \(positions \[3, 6\]\)"):
        method = PromptTuning(backbone, ["neg", "pos"], num_virtual_tokens=7, init="text", init_text="ok")
    rows = backbone.word_embeddings(torch.tensor([bos, *words] * 2 + [bos]))
    assert torch.allclose(method.prompt.embedding.detach(), rows)  # PEFT's layout, kept under "text"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = PromptTuning(
            backbone, ["neg", "pos"], num_virtual_tokens=7, init="text_without_special_tokens", init_text="ok"
        )
        first_only = PromptTuning(backbone, ["neg", "pos"], num_virtual_tokens=3, init="text", init_text="ok")
    assert torch.allclose(plain.prompt.embedding.detach(), backbone.word_embeddings(torch.tensor((words * 4)[:7])))
    assert torch.allclose(first_only.prompt.embedding.detach(), backbone.word_embeddings(torch.tensor([bos, *words])))


@pytest.mark.parametrize("init", ["text", "vocab"])
def test_initialisation_takes_the_embedding_modules_scale(init):
    # Gemma scales its embedding table by sqrt(d) in forward: a soft token read from the raw table would
    # start sqrt(32) ~ 5.7 times smaller than the real tokens beside it
    backbone = HFText("tiny-gemma3", task="causal-lm")
    method = PromptTuning(backbone, ["neg", "pos"], num_virtual_tokens=4, init=init, init_text="ok", seed=3)
    table = backbone.word_embeddings.weight
    prompt = method.prompt.embedding.detach()
    rows = [int((table * 32**0.5 - row).abs().sum(1).argmin()) for row in prompt]
    assert torch.allclose(prompt, table[rows] * 32**0.5, atol=1e-5)
    assert torch.allclose(prompt, backbone.word_embeddings(torch.tensor(rows)), atol=1e-6)
    if init == "text":
        ids = backbone.tokenizer("ok")["input_ids"]
        assert rows == (ids * 4)[:4]


def test_random_init_is_lesters_uniform():
    method = PromptTuning(HFText("tiny-bert"), ["neg", "pos"], num_virtual_tokens=50, init="random")
    values = method.prompt.embedding.detach()
    assert values.min() >= -0.5 and values.max() <= 0.5 and values.std() > 0.2


def test_checkpoint_keeps_prompt_and_head_only(trainer_kwargs, tmp_path):
    method = trained("sequence-classification", trainer_kwargs)
    state = {k for k in method.trainable_state_keys()}
    assert state == {"prompt.embedding", "backbone.model.classifier.weight", "backbone.model.classifier.bias"}


def test_too_long_text_fails_at_setup(trainer_kwargs, tmp_path):
    rows = "text,label\n" + "\n".join([f"short {i},a" for i in range(4)] + [("word " * 200) + ",b"] * 4)
    (tmp_path / "train.csv").write_text(rows)
    data = TextClassificationDataModule(train_file=str(tmp_path / "train.csv"), val_fraction=0.25)
    method = PromptTuning(HFText("tiny-bert"), data.classnames, num_virtual_tokens=5)
    trainer = Trainer(max_steps=1, **trainer_kwargs)
    with pytest.raises(ContextLengthError, match="of the context length 128"):
        trainer.fit(method, data)
    assert trainer.global_step == 0
    truncating = PromptTuning(HFText("tiny-bert"), data.classnames, num_virtual_tokens=5, truncate=True)
    Trainer(max_steps=1, **trainer_kwargs).fit(truncating, data)


def test_label_words_must_start_with_distinct_tokens():
    with pytest.raises(ValueError, match="distinct tokens"):
        PromptTuning(HFText("tiny-gpt2", task="causal-lm"), ["a", "b"], label_words=["good", "great"])


def test_several_label_words_score_a_class_by_their_mean_logit():
    """POST's verbalizer: a class's score is the mean next-token logit of its words (the tiny tokenizer reads
    each word by its first letter, so the words start with distinct letters)."""
    backbone = HFText("tiny-gpt2", task="causal-lm")
    groups = [["terrible", "bad", "awful"], ["good", "excellent", "fine"], "moderate"]
    method = PromptTuning(backbone, ["neg", "pos", "mid"], label_words=groups, num_virtual_tokens=3, init="random")
    words = [*groups[0], *groups[1], groups[2]]
    one_per_word = PromptTuning(backbone, words, label_words=words, num_virtual_tokens=3, init="random", seed=1)
    one_per_word.prompt.load_state_dict(method.prompt.state_dict())
    tokens = method.tokenize(TEXTS)
    with torch.no_grad():
        ours = method(tokens["input_ids"], tokens["attention_mask"]).logits
        each = one_per_word(tokens["input_ids"], tokens["attention_mask"]).logits
    expected = torch.stack([each[:, 0:3].mean(1), each[:, 3:6].mean(1), each[:, 6]], dim=1)
    assert ours.shape == (len(TEXTS), 3)
    assert torch.allclose(ours, expected, atol=1e-6)
    assert not torch.allclose(ours, each[:, [0, 3, 6]], atol=1e-4)  # not the first word's alone


def test_label_words_are_one_per_class_and_never_empty():
    backbone = HFText("tiny-gpt2", task="causal-lm")
    with pytest.raises(ValueError, match="2 label words for 3 classes"):
        PromptTuning(backbone, ["a", "b", "c"], label_words=["bad", "good"])
    with pytest.raises(ValueError, match="needs a label word"):
        PromptTuning(backbone, ["a", "b"], label_words=[["bad"], []])
    with pytest.raises(ValueError, match="distinct tokens"):  # the same tokens (b, a) for both classes
        PromptTuning(backbone, ["a", "b"], label_words=[["bad", "awful"], ["awesome", "brilliant"]])
    shared = PromptTuning(backbone, ["a", "b"], label_words=[["bad", "awful"], ["good", "amazing"]])
    assert shared.label_word_ids == [5, 4, 10, 4]  # a token in two classes adds to both means


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_sentence_encoder_pooling_reads_text_tokens_only(pooling):
    backbone = HFText("tiny-bert", pooling=pooling)
    method = PromptTuning(backbone, ["neg", "pos"], num_virtual_tokens=3)
    tokens = method.tokenize(TEXTS)
    prompt = method.prompt.embedding.unsqueeze(0).expand(3, -1, -1)
    embeds = torch.cat([prompt, backbone.word_embeddings(tokens["input_ids"])], 1)
    mask = torch.cat([torch.ones(3, 3, dtype=torch.long), tokens["attention_mask"]], 1)
    with torch.no_grad():
        hidden = backbone.model.bert(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        if pooling == "cls":
            pooled = hidden[:, 3]
        else:
            text = tokens["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden[:, 3:] * text).sum(1) / text.sum(1)
        expected = backbone.model.classifier(pooled)
        assert torch.allclose(method(**tokens).logits, expected, atol=1e-5)
    with pytest.raises(NotImplementedError, match="PEFT"):
        method.export_peft("unused")


@pytest.mark.parametrize("task", ["sequence-classification", "causal-lm"])
def test_p_tuning_mlp_exports_as_peft_p_tuning_with_the_same_logits(task, trainer_kwargs, tmp_path):
    method = trained(
        task,
        trainer_kwargs,
        encoder_hidden_size=16,
        **({"text_template": "{text} it was"} if task == "causal-lm" else {}),
    )
    mlp = method.encoder.mlp
    expected = mlp[4](torch.relu(mlp[2](torch.relu(mlp[0](method.prompt.embedding)))))
    assert torch.allclose(method.soft_tokens(), expected)  # PEFT's MLP: Linear, ReLU, Linear, ReLU, Linear
    assert {n for n, p in method.named_parameters() if p.requires_grad and n.startswith("encoder")} == {
        f"encoder.mlp.{i}.{kind}" for i in (0, 2, 4) for kind in ("weight", "bias")
    }
    directory = method.export_peft(tmp_path / "adapter")
    import json

    assert json.loads((directory / "adapter_config.json").read_text())["peft_type"] == "P_TUNING"
    peft_model = PeftModel.from_pretrained(copy.deepcopy(method.backbone.model), str(directory)).eval()
    tokens = method.tokenize(TEXTS)
    with torch.no_grad():
        ours = method(tokens["input_ids"], tokens["attention_mask"]).logits
        full = peft_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).logits
    if task == "causal-lm":
        last = tokens["attention_mask"].sum(1) - 1 + 5
        full = full[torch.arange(len(TEXTS)), last][:, method.label_word_ids]
    assert torch.allclose(ours, full, atol=1e-5)


def generating_method(name: str, std: float) -> PromptTuning:
    """Prompt tuning on a tiny decoder whose weights are large enough that the next token depends on the text."""
    torch.manual_seed(0)
    backbone = HFText(name, task="causal-lm")
    with torch.no_grad():
        for param in backbone.model.parameters():
            param.normal_(std=std)
    return PromptTuning(backbone, ["good", "bad"], num_virtual_tokens=3, init="random", text_template="{text} so:")


def greedy_reference(method: PromptTuning, text: str, steps: int) -> list[int]:
    """Greedy decoding written out over our own forward: ``[soft; text; generated…]`` unpadded, arg-max each step."""
    tokens = method.tokenize([text])
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    generated = []
    with torch.no_grad():
        for _ in range(steps):
            token = method.backbone.forward_embeddings(method.soft_tokens(), ids, mask).logits.argmax(-1)
            generated.append(int(token))
            ids, mask = torch.cat([ids, token[:, None]], dim=1), torch.cat([mask, mask.new_ones(1, 1)], dim=1)
    return generated


@pytest.mark.parametrize(("name", "std"), [("tiny-gpt2", 0.5), ("tiny-gemma3", 0.1)])
def test_generate_continues_every_text_of_a_batch_as_it_would_alone(name, std):
    """Texts of different lengths in one batch: the padded ones are continued exactly as a greedy loop over our
    forward continues each text alone (the padding masked, positions from the mask)."""
    method = generating_method(name, std)
    generated = method.generate(TEXTS, decode=False, max_new_tokens=6)
    references = [greedy_reference(method, text, 6) for text in TEXTS]
    assert generated.tolist() == references
    assert len({tuple(row) for row in references}) == len(TEXTS)  # each text is continued differently
    decoded = method.generate(TEXTS, max_new_tokens=6)
    assert decoded == method.backbone.tokenizer.batch_decode(generated, skip_special_tokens=True)


def test_generate_is_greedy_decoding_over_peft_s_forward_of_the_exported_prompt(tmp_path):
    """Independent of our forward: greedy decoding written out over PEFT's model loaded from our export (the whole
    sequence each step, no cache) gives our tokens. PEFT's own ``generate`` on the same adapter gives others from
    the third token on (peft 0.21.2, transformers 5.25), which is why we decode through the base model ourselves."""
    method = generating_method("tiny-gpt2", 0.5)
    adapter = str(method.export_peft(tmp_path))
    peft_model = PeftModel.from_pretrained(copy.deepcopy(method.backbone.model), adapter).eval()
    tokenizer = method.backbone.tokenizer
    theirs = []
    with torch.no_grad():
        for text in method.format_texts(TEXTS):
            ids = tokenizer([text], return_tensors="pt")["input_ids"]
            for _ in range(6):
                ids = torch.cat([ids, peft_model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            theirs.append(ids[0, -6:].tolist())
    assert method.generate(TEXTS, decode=False, max_new_tokens=6).tolist() == theirs


def test_generate_needs_a_causal_language_model():
    from lightning_prompts.errors import ConfigurationError

    method = PromptTuning(HFText("tiny-bert"), ["a", "b"], num_virtual_tokens=2)
    with pytest.raises(ConfigurationError, match="sequence-to-sequence language model.*sequence-classification"):
        method.generate(["text"])
