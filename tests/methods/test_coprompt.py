"""CoPrompt and ConsistencyRegularization against the official formulas (ShuvenduRoy/CoPrompt)."""

from __future__ import annotations

import copy
import json
import random

import open_clip
import pytest
import torch
import torch.nn.functional as F
from helpers import RecordTrainingSteps, synthetic_fewshot
from lightning.pytorch import Trainer, seed_everything

from lightning_prompts.batch import IMAGE, IMAGE_VIEW2
from lightning_prompts.callbacks import ConsistencyRegularization
from lightning_prompts.errors import DatasetError, MissingOutputFieldError
from lightning_prompts.methods import VPT, CoOp, CoPrompt
from lightning_prompts.prompts import ResidualAdapter


def test_adapter_mixing_ratios_match_coprompt():
    torch.manual_seed(0)
    adapter = ResidualAdapter(8, ratio=0.2)
    features = torch.randn(3, 8)
    w1, w2 = adapter.layers[0].weight, adapter.layers[2].weight
    official = 0.2 * F.relu(F.relu(features @ w1.t()) @ w2.t()) + 0.8 * features  # Adapter(x) ends with ReLU
    assert torch.allclose(adapter(features), official, atol=1e-6)
    assert w1.shape == (2, 8) and adapter.layers[0].bias is None


def test_coprompt_features_go_through_the_adapters(tiny_clip):
    model = CoPrompt(tiny_clip, ["cat", "dog"], depth=2)
    images = torch.randn(2, 3, 32, 32)
    raw_image = model.encode_prompted_images(images)
    expected = F.normalize(0.1 * model.image_adapter.layers(raw_image) + 0.9 * raw_image, dim=-1)
    assert torch.allclose(model(images).image_features, expected, atol=1e-6)
    raw_text = model.encode_text_prompts()
    expected_text = F.normalize(0.2 * model.text_adapter.layers(raw_text) + 0.8 * raw_text, dim=-1)
    assert torch.allclose(model.class_text_features(), expected_text, atol=1e-6)
    assert isinstance(model.configure_callbacks()[0], ConsistencyRegularization)


def official_consistency(text_s, text_t, image_s, image_t, weight):
    """CoPrompt's cosine distillation: W * [(1 - mean cos text) + (1 - mean cos image)]."""
    cos_text = F.cosine_similarity(text_s, text_t, dim=1, eps=1e-7)
    cos_image = F.cosine_similarity(image_s, image_t, dim=1, eps=1e-7)
    return weight * ((1.0 - cos_text.mean()) + (1.0 - cos_image.mean()))


def test_consistency_term_equals_the_official_formula(tiny_clip, tmp_path):
    descriptions = {
        "cat": ["a small furry pet", "an animal that purrs"],
        "dog": ["a loyal pet", "an animal that barks"],
    }
    path = tmp_path / "descriptions.json"
    path.write_text(json.dumps(descriptions))
    model = CoOp(tiny_clip, ["cat", "dog"], n_ctx=4)
    term = ConsistencyRegularization(weight=4.0, descriptions=str(path), seed=3)
    images, second_view = torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32)
    output = model.compute_output({IMAGE: images, IMAGE_VIEW2: second_view}, {"frozen_image_features"})
    teacher = term.teacher_text_features(model)
    index = random.Random(3).randrange(2)  # the description the term draws first
    expected = official_consistency(
        output.text_features, teacher[index], output.image_features, output.frozen_image_features, 4.0
    )
    assert torch.allclose(term(model, {}, output), expected, atol=1e-6)
    manual = tiny_clip.encode_text([descriptions["cat"][index], descriptions["dog"][index]], normalize=True)
    assert torch.allclose(teacher[index], manual, atol=1e-6)


def test_mse_distance_is_on_normalised_features(tiny_clip):
    model = CoOp(tiny_clip, ["cat", "dog"], n_ctx=4)
    output = model.compute_output({IMAGE: torch.randn(2, 3, 32, 32)}, {"frozen_image_features"})
    term = ConsistencyRegularization(weight=1.0, distance="mse", image=False)
    expected = F.mse_loss(output.text_features, term.teacher_text_features(model)[0])
    assert torch.allclose(term(model, {}, output), expected, atol=1e-6)


def test_teacher_text_features_are_computed_once(tiny_clip, monkeypatch):
    model = CoOp(tiny_clip, ["cat", "dog"], n_ctx=4)
    term = ConsistencyRegularization(templates=["a photo of a {}.", "a drawing of a {}."])
    calls = []
    original = tiny_clip.encode_text
    monkeypatch.setattr(tiny_clip, "encode_text", lambda *a, **k: calls.append(1) or original(*a, **k))
    output = model.compute_output({IMAGE: torch.randn(2, 3, 32, 32)}, {"frozen_image_features"})
    for _ in range(5):
        term(model, {}, output)
    assert len(calls) == 2  # one call per class, at the first step only
    assert term.teacher_text_features(model).shape == (2, 2, tiny_clip.embed_dim)


def test_coprompt_trains_with_two_views_and_logs_its_consistency_term(tiny_clip, trainer_kwargs):
    data = synthetic_fewshot(views=2, augmentation="randaugment")
    model = CoPrompt(tiny_clip, data.classnames, depth=2, consistency_weight=2.0)
    trainer = Trainer(max_steps=2, **trainer_kwargs)
    trainer.fit(model, data)
    metrics = trainer.callback_metrics
    assert float(metrics["train/consistency"]) > 0
    assert float(metrics["train/loss"]) == pytest.approx(
        float(metrics["train/task_loss"]) + float(metrics["train/consistency"]), rel=1e-5
    )


@pytest.mark.parametrize("method", ["coop", "vpt"])
def test_consistency_composes_with_other_methods(method, tiny_clip, tiny_vit, trainer_kwargs):
    data = synthetic_fewshot(views=2, augmentation="vtab")
    if method == "coop":
        model, term = CoOp(tiny_clip, data.classnames, n_ctx=4), ConsistencyRegularization(weight=1.0)
    else:  # VPT has no text side: regularise the image features only
        model, term = VPT(tiny_vit, data.classnames, num_tokens=2), ConsistencyRegularization(weight=1.0, text=False)
    trainer = Trainer(max_steps=2, callbacks=[term], **trainer_kwargs)
    trainer.fit(model, data)
    metrics = trainer.callback_metrics
    assert float(metrics["train/consistency"]) > 0
    assert float(metrics["train/loss"]) > float(metrics["train/task_loss"])


def test_text_consistency_on_vpt_names_the_missing_field(tiny_vit, trainer_kwargs):
    data = synthetic_fewshot(augmentation="vtab")
    trainer = Trainer(max_steps=1, callbacks=[ConsistencyRegularization()], **trainer_kwargs)
    with pytest.raises(
        MissingOutputFieldError, match="ConsistencyRegularization needs the output field 'text_features'.*VPT"
    ):
        trainer.fit(VPT(tiny_vit, data.classnames), data)
    assert trainer.global_step == 0


def test_missing_class_in_the_description_file(tiny_clip, tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"cat": ["a cat"]}))
    term = ConsistencyRegularization(descriptions=str(path))
    with pytest.raises(DatasetError, match="no descriptions for class 'dog'"):
        term.teacher_text_features(CoOp(tiny_clip, ["cat", "dog"], n_ctx=4))


def test_missing_description_file_fails_before_training(tiny_clip, trainer_kwargs, tmp_path):
    data = synthetic_fewshot()
    model = CoPrompt(tiny_clip, data.classnames, depth=2, descriptions=str(tmp_path / "missing.json"))
    trainer = Trainer(max_steps=1, **trainer_kwargs)
    with pytest.raises(DatasetError, match="missing.json does not exist"):
        trainer.fit(model, data)
    assert trainer.global_step == 0


def test_one_training_step_is_ce_plus_lambda_text_and_second_view_image_consistency(tiny_clip, trainer_kwargs):
    """CoPrompt's whole objective for one step, by hand: CE of the prompted logits + λ·[(1 − mean cos to the frozen
    template text) + (1 − mean cos to the frozen image encoder on ``image_view2``)]."""
    seed_everything(0)
    data = synthetic_fewshot(views=2, augmentation="randaugment")
    model = CoPrompt(tiny_clip, data.classnames, depth=2, consistency_weight=2.0)
    with torch.no_grad():  # a prompt far from the initial words: the prompted model differs from the frozen one
        model.prompt.text.ctx.normal_(std=1.0)
    before = copy.deepcopy(model)
    recorder = RecordTrainingSteps()
    Trainer(max_steps=1, limit_val_batches=0, callbacks=[recorder], **trainer_kwargs).fit(model, data)
    seen = recorder.steps[0]
    batch = seen["batch"]
    images, second, labels = batch[IMAGE], batch[IMAGE_VIEW2], batch["label"]
    assert not torch.allclose(images, second)  # two different augmented views
    clip = tiny_clip.model
    with torch.no_grad():
        output = before(images)  # the prompted student (MaPLe + adapters, pinned by the tests above)
        ce = -output.logits.log_softmax(dim=-1)[torch.arange(len(labels)), labels].mean()
        names = [name.replace("_", " ") for name in data.classnames]
        teacher_text = F.normalize(clip.encode_text(open_clip.tokenize([f"a photo of a {n}." for n in names])), dim=-1)
        teacher_image = F.normalize(clip.encode_image(second), dim=-1)  # the frozen encoder on the SECOND view
        text_term = 1.0 - (F.normalize(output.text_features, dim=-1) * teacher_text).sum(-1).mean()
        image_term = 1.0 - (F.normalize(output.image_features, dim=-1) * teacher_image).sum(-1).mean()
    assert float(text_term) > 1e-3 and float(image_term) > 1e-3
    expected = ce + 2.0 * (text_term + image_term)
    torch.testing.assert_close(seen["loss"], expected, rtol=1e-4, atol=1e-5)
