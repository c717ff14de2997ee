"""PANDA: CE + 0.1·β·MSE/B against a frozen vanilla-transfer teacher; β as the cosine of task embeddings."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer

from lightning_prompts.backbones import HFText
from lightning_prompts.data import SyntheticText, TextClassificationDataModule
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods import PANDA, PrefixTuning
from lightning_prompts.methods.panda import panda_loss, prompt_transferability, rank_source_prompts

TEXTS = ["the film was great and moving", "dull", "an awful, tedious and clumsy film"]


def data():
    return TextClassificationDataModule(synthetic=SyntheticText(examples_per_class=8), batch_size=8)


def trained_prefix(tmp_path, trainer_kwargs, seed, name, backbone=("tiny-bert", "sequence-classification"), **kwargs):
    method = PrefixTuning(HFText(*backbone), data().classnames, num_virtual_tokens=4, seed=seed, **kwargs)
    Trainer(max_steps=3, **trainer_kwargs).fit(method, data())
    return method.eval(), method.export_prompt(tmp_path / f"{name}.safetensors")


def test_loss_is_ce_plus_the_official_distillation_term():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(4, 3, generator=generator), torch.randn(4, 3, generator=generator)
    targets = torch.tensor([0, 2, 1, 1])
    by_hand = F.cross_entropy(student, targets) + 0.1 * 0.7 * ((student - teacher) ** 2).mean() / 4
    assert torch.allclose(panda_loss(student, teacher, targets, beta=0.7), by_hand)


@pytest.mark.parametrize("backbone", [("tiny-bert", "sequence-classification"), ("tiny-t5", "seq2seq-lm")])
def test_student_distils_from_the_frozen_vanilla_transfer_model(tmp_path, trainer_kwargs, backbone):
    """On an encoder (P-tuning v2's classifier head) and on T5 (prefixes in all three attentions, label words)."""
    teacher, path = trained_prefix(tmp_path, trainer_kwargs, seed=1, name="teacher", backbone=backbone)
    student = PANDA(HFText(*backbone), data().classnames, num_virtual_tokens=4, teacher_prompt=str(path), beta=0.5)
    student.check_ready("fit", [], None)
    before = {k: v.detach().clone() for k, v in student.named_parameters() if v.requires_grad}
    tokens = student.tokenize(TEXTS)
    targets = torch.tensor([1, 0, 0])
    with torch.no_grad():
        expected_teacher = teacher(**tokens).logits
    assert torch.allclose(student.teacher_logits(**tokens), expected_teacher, atol=1e-6)
    student.train()
    output = student.forward_batch({"text": TEXTS, "label": targets})
    assert torch.allclose(output.extras["teacher_logits"], expected_teacher, atol=1e-6)
    assert not output.extras["teacher_logits"].requires_grad  # the teacher runs under no_grad
    loss = student.task_loss(output, targets)
    assert torch.allclose(loss, panda_loss(output.logits, expected_teacher, targets, 0.5))
    loss.backward()
    assert student.prefix.table.grad.abs().sum() > 0
    for key, value in before.items():  # the teacher's tensors only stood in for one call
        assert torch.equal(dict(student.named_parameters())[key], value)
    student.eval()
    assert "teacher_logits" not in student.forward_batch({"text": TEXTS, "label": targets}).extras


def test_a_teacher_without_its_head_is_refused(tmp_path, trainer_kwargs):
    teacher, _ = trained_prefix(tmp_path, trainer_kwargs, seed=1, name="teacher")
    prefix_only = teacher.export_prompt(tmp_path / "prefix_only.safetensors", prefix="prefix.")
    student = PANDA(HFText("tiny-bert"), data().classnames, num_virtual_tokens=4, teacher_prompt=str(prefix_only))
    with pytest.raises(ConfigurationError, match="head included"):
        student.check_ready("fit", [], None)


def test_fit_trains_only_the_student(tmp_path, trainer_kwargs):
    _, path = trained_prefix(tmp_path, trainer_kwargs, seed=1, name="teacher")
    student = PANDA(HFText("tiny-bert"), data().classnames, num_virtual_tokens=4, teacher_prompt=str(path))
    trainer = Trainer(max_steps=2, **trainer_kwargs)
    trainer.fit(student, data())
    assert torch.isfinite(trainer.logged_metrics["train/loss"])
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trainable == {"prefix.table", "backbone.model.classifier.weight", "backbone.model.classifier.bias"}


def mean_state(method, table, texts):
    """The target texts' mean last-layer state under a prefix table, computed directly."""
    copy_ = copy.deepcopy(method)
    with torch.no_grad():
        copy_.prefix.table.copy_(table)
        tokens = copy_.tokenize(texts)
        hidden = copy_.backbone.forward_embeddings(
            None, **tokens, output_hidden_states=True, hooks=copy_.prefix.hooks()
        )
        last = hidden.hidden_states[-1]
        mask = tokens["attention_mask"].unsqueeze(-1).float()
        return ((last * mask).sum(1) / mask.sum(1)).mean(0)


def test_transferability_is_the_cosine_of_the_task_embeddings(tmp_path, trainer_kwargs):
    near, near_path = trained_prefix(tmp_path, trainer_kwargs, seed=1, name="near")
    target, target_path = trained_prefix(tmp_path, trainer_kwargs, seed=1, name="target", dropout=0.1)
    far = PrefixTuning(HFText("tiny-bert"), data().classnames, num_virtual_tokens=4, seed=9)
    with torch.no_grad():
        far.prefix.table.mul_(5.0)
    far_path = far.export_prompt(tmp_path / "far.safetensors")
    method = PrefixTuning(HFText("tiny-bert"), data().classnames, num_virtual_tokens=4).eval()
    beta = prompt_transferability(method, near_path, target_path, TEXTS)
    expected = F.cosine_similarity(
        mean_state(method, near.prefix.table, TEXTS), mean_state(method, target.prefix.table, TEXTS), dim=0
    )
    assert beta == pytest.approx(float(expected), abs=1e-5)
    assert prompt_transferability(method, target_path, target_path, TEXTS) == pytest.approx(1.0, abs=1e-6)
    ranking = rank_source_prompts(method, {"far": far_path, "near": near_path}, target_path, TEXTS)
    assert [name for name, _ in ranking] == ["near", "far"] and ranking[0][1] > ranking[1][1]
