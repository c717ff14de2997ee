"""ConES on CLIP classification (no official code): the equations of docs/methods/cones.md pinned by a
re-computation: z_c = s · <f(x)/|f(x)|, e_c/|e_c|>, e initialised from the zero-shot text features,
only e trains, the text encoder never runs in training, unseen classes fall back to zero-shot features."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import synthetic_fewshot
from lightning.pytorch import Trainer

from lightning_prompts.methods import ConES, ZeroShotCLIP

TEMPLATES = ["a photo of a {}.", "a drawing of a {}."]


def test_initial_embeddings_are_the_zero_shot_ensemble_and_logits_follow_the_formula(tiny_clip):
    names = ["tabby cat", "golden_retriever", "canoe"]
    model = ConES(tiny_clip, names, templates=TEMPLATES).eval()
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        zero_shot = ZeroShotCLIP(tiny_clip, names, templates=TEMPLATES).eval()(images).logits
        assert torch.allclose(model(images).logits, zero_shot, atol=1e-5)  # at init: zero-shot CLIP
        # move the embeddings far enough that the ranking of classes changes, then re-compute by hand
        model.class_embeddings.add_(torch.randn_like(model.class_embeddings) * 2)
        image = F.normalize(tiny_clip.encode_image(images).features, dim=-1)
        expected = tiny_clip.logit_scale * image @ F.normalize(model.class_embeddings, dim=-1).t()
        logits = model(images).logits
    assert torch.allclose(logits, expected, atol=1e-5)
    assert not torch.allclose(logits, zero_shot, atol=1e-2)  # the learned embeddings, not the zero-shot ones


def test_only_the_embeddings_train_and_the_text_encoder_never_runs_in_training(tiny_clip, trainer_kwargs, monkeypatch):
    data = synthetic_fewshot()
    model = ConES(tiny_clip, data.classnames)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["class_embeddings"]
    assert model.class_embeddings.shape == (4, tiny_clip.embed_dim)
    calls = []
    encode = type(tiny_clip).encode_text
    monkeypatch.setattr(type(tiny_clip), "encode_text", lambda self, *a, **k: calls.append(1) or encode(self, *a, **k))
    before = model.class_embeddings.detach().clone()
    Trainer(max_steps=3, limit_val_batches=0, **trainer_kwargs).fit(model, data)
    assert not torch.equal(model.class_embeddings, before)
    assert calls == []  # embeddings were made at construction; training never encodes text


def test_new_classes_keep_learned_embeddings_and_score_unseen_ones_zero_shot(tiny_clip):
    model = ConES(tiny_clip, ["cat", "dog"]).eval()
    with torch.no_grad():
        model.class_embeddings.mul_(-1)  # learned: far from zero-shot
    model.set_classnames(["dog", "canoe"])
    features = model.encode_class_prompts()
    assert torch.allclose(features[0], F.normalize(model.class_embeddings[1], dim=-1))
    canoe = F.normalize(tiny_clip.encode_text(["a photo of a canoe."], normalize=True), dim=-1)[0]
    assert torch.allclose(features[1], canoe, atol=1e-6)


@pytest.mark.parametrize("folder", ["cones", "clip_adapter"])
def test_a_checkpoint_is_tested_with_the_recipe_it_was_trained_with(folder, tmp_path, monkeypatch):
    """fit, then test --ckpt_path last with the same recipe: the stored hyperparameters match the config
    (the frozen template these methods derive is not one of them). The test adds OOD sets, so it also
    shows that a checkpoint trained for accuracy is tested with another evaluator (the data page's
    command)."""
    from pathlib import Path

    from lightning_prompts.cli import run_cli

    recipes = Path(__file__).resolve().parents[2] / "recipes"
    monkeypatch.chdir(tmp_path)
    common = ["--config", str(recipes / folder / "dtd.yaml"), "--config", str(recipes / "_tiny" / "clip.yaml")]
    common += ["--trainer.fast_dev_run", "false", "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1"]
    common += ["--trainer.default_root_dir", str(tmp_path)]
    run_cli(["fit", *common])
    cli = run_cli(["test", *common, "--ckpt_path", "last", "--data.init_args.ood_sets", "{mine: unused}"])
    assert type(cli.model.evaluator).__name__ == "OODEvaluator"
    assert "test/acc" in cli.trainer.callback_metrics and "test/auroc_mine" in cli.trainer.callback_metrics


def test_the_optimiser_is_the_clip_familys_sgd_and_the_recipes_add_dassls_cosine(tiny_clip):
    """The page's decision: SGD, lr 0.002, momentum 0.9, weight decay 5e-4 by default; the recipes add Dassl's cosine
    schedule (one constant warm-up epoch at 1e-5)."""
    from pathlib import Path

    import yaml

    optimizer = ConES(tiny_clip, ["cat", "dog"]).configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    assert type(optimizer) is torch.optim.SGD
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.002, 0.9, 5e-4)
    recipes = Path(__file__).resolve().parents[2] / "recipes"
    defaults = yaml.safe_load((recipes / "cones" / "_defaults.yaml").read_text())["model"]["init_args"]
    assert defaults["optimizer"] == {
        "class_path": "torch.optim.SGD",
        "init_args": {"lr": 0.002, "momentum": 0.9, "weight_decay": 5e-4},
    }
    schedule = yaml.safe_load((recipes / "cones" / defaults["lr_scheduler"]).read_text())
    assert schedule["class_path"] == "WarmupCosineLR" and schedule["init_args"]["warmup_lr"] == 1e-5
