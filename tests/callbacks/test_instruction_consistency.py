"""InstructionConsistency: KL between the outputs under two phrasings + CE on the paraphrase, pinned by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from lightning_prompts.backbones import HFText
from lightning_prompts.callbacks.instruction_consistency import (
    InstructionConsistency,
    instruction_template,
    read_paraphrases,
)
from lightning_prompts.cli import run_cli
from lightning_prompts.data import SyntheticText, TextClassificationDataModule
from lightning_prompts.errors import ConfigurationError, ContextLengthError, DatasetError
from lightning_prompts.methods import DePT, PromptTuning

TEXTS = ["the film was great and moving", "dull", "an awful, tedious and clumsy film"]
INSTRUCTIONS = ["classify the review:", "is this review good or bad?", "review: {text} verdict:"]


def paraphrase_file(tmp_path, content=None):
    path = tmp_path / "paraphrases.json"
    path.write_text(json.dumps(content if content is not None else {"sentiment": INSTRUCTIONS}))
    return str(path)


def method(**kwargs):
    torch.manual_seed(0)  # the head below, whatever ran before in this worker
    model = PromptTuning(
        HFText("tiny-gpt2", task="causal-lm"),
        ["bad", "good"],
        num_virtual_tokens=3,
        text_template="{text} it was",
        **kwargs,
    )
    with torch.no_grad():  # a head large enough that the phrasings score differently
        model.backbone.model.lm_head.weight.normal_(0, 1)
    return model


def test_term_is_kl_between_phrasings_plus_ce_on_the_paraphrase(tmp_path):
    model = method()
    term = InstructionConsistency(paraphrase_file(tmp_path), weight=0.5, ce_weight=0.3, temperature=2.0, seed=7)
    targets = torch.tensor([1, 0, 0])
    batch = {"text": TEXTS, "label": targets}
    anchor = model.forward_texts(TEXTS)
    drawn = InstructionConsistency(paraphrase_file(tmp_path), seed=7).draw()  # the same seed draws the same
    value = term(model, batch, anchor)
    template = instruction_template(INSTRUCTIONS[drawn], "{text} it was")
    paraphrased = model.forward_texts(TEXTS, template).logits
    p_anchor = torch.softmax(anchor.logits / 2.0, -1)
    log_p_para = torch.log_softmax(paraphrased / 2.0, -1)
    kl = (p_anchor * (torch.log(p_anchor) - log_p_para)).sum(-1).mean() * 4.0
    ce = -torch.log_softmax(paraphrased, -1)[torch.arange(3), targets].mean()
    assert kl > 1e-6  # the phrasings disagree, so the term is not trivially zero
    assert torch.allclose(value, 0.5 * (kl + 0.3 * ce), atol=1e-6)
    value.backward()  # both passes reach the prompt
    assert model.prompt.embedding.grad is not None and model.prompt.embedding.grad.abs().sum() > 0


def test_templates_and_the_paraphrase_file(tmp_path):
    assert instruction_template("classify:", "{text} it was") == "classify: {text} it was"
    assert instruction_template("review: {text} verdict:", "{text} it was") == "review: {text} verdict:"
    assert read_paraphrases(paraphrase_file(tmp_path)) == INSTRUCTIONS
    two_tasks = paraphrase_file(tmp_path, {"a": ["x", "y"], "b": ["z", "w"]})
    assert read_paraphrases(two_tasks, "b") == ["z", "w"]
    with pytest.raises(ConfigurationError, match="say which"):
        read_paraphrases(two_tasks)
    with pytest.raises(DatasetError, match="no task 'c'"):
        read_paraphrases(two_tasks, "c")
    with pytest.raises(DatasetError, match="at least two"):
        read_paraphrases(paraphrase_file(tmp_path, {"a": ["only one"]}))
    with pytest.raises(DatasetError, match="instruction strings"):
        read_paraphrases(paraphrase_file(tmp_path, {"a": ["x", 3]}))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        read_paraphrases(tmp_path / "bad.json")


def test_fits_any_text_method_and_resumes_its_draws(tmp_path, trainer_kwargs):
    data = TextClassificationDataModule(synthetic=SyntheticText(examples_per_class=8), batch_size=8)
    model = DePT(HFText("tiny-bert"), data.classnames, num_virtual_tokens=3, rank=2, max_length=80)
    term = InstructionConsistency(paraphrase_file(tmp_path), seed=1)
    trainer = Trainer(max_steps=2, callbacks=[term], **trainer_kwargs)
    trainer.fit(model, data)
    assert "train/instruction_consistency" in trainer.logged_metrics
    state = term.state_dict()
    json.dumps(state)  # plain lists: loadable with weights_only=True
    following = [term.draw() for _ in range(5)]
    restored = InstructionConsistency(paraphrase_file(tmp_path))
    restored.load_state_dict(state)
    assert [restored.draw() for _ in range(5)] == following


def test_bad_setups_fail_before_training(tmp_path, trainer_kwargs):
    data = TextClassificationDataModule(synthetic=SyntheticText(examples_per_class=4), batch_size=4)
    model = PromptTuning(HFText("tiny-bert", max_length=60), data.classnames, num_virtual_tokens=3)
    long_instruction = paraphrase_file(tmp_path, {"t": ["short", "x" * 30 + " " + "y" * 30]})
    with pytest.raises(ContextLengthError, match="in template"):
        Trainer(max_steps=1, callbacks=[InstructionConsistency(long_instruction)], **trainer_kwargs).fit(model, data)
    from lightning_prompts.backbones import OpenCLIP
    from lightning_prompts.methods import CoOp

    clip = CoOp(OpenCLIP("tiny", pretrained=None), ["cat", "dog"], n_ctx=2)
    with pytest.raises(ConfigurationError, match="needs a text method"):
        InstructionConsistency(paraphrase_file(tmp_path)).check_ready(clip, None)


def test_the_text_testbed_recipe_trains_with_the_seen_phrasings_and_holds_out_the_unseen(monkeypatch):
    # recipes/text_testbed/minilm/instruction_consistency.yaml: its callback runs (the recipe test of that folder
    # runs the folder's first PromptTuning recipe, without a callback); the unseen phrasings are never trained on
    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)  # the recipe names its paraphrase file from the repository root, as its command runs
    recipes = root / "recipes"
    cli = run_cli(["fit", "--config", str(recipes / "text_testbed" / "minilm" / "instruction_consistency.yaml"),
                   "--config", str(recipes / "_tiny" / "text.yaml")])  # fmt: skip
    terms = [c for c in cli.trainer.callbacks if isinstance(c, InstructionConsistency)]
    assert len(terms) == 1 and terms[0].task == "seen"
    assert "train/instruction_consistency" in cli.trainer.logged_metrics
    assert cli.model.text_template == "Review: {text}"
    seen = read_paraphrases(recipes / "text_testbed" / "sentiment_instructions.json", "seen")
    unseen = read_paraphrases(recipes / "text_testbed" / "sentiment_instructions.json", "unseen")
    assert (len(seen), len(unseen)) == (5, 4) and not set(seen) & set(unseen)
    assert terms[0].instructions() == seen
