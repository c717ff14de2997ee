"""LAPT (YBZh/OpenOOD-VLM, released setting): the two contexts and the label layout, the cross-modal mixing
loss against a hand computation, and one checkpoint serving training (ID + negative folders) and test (ID
classes, more negatives)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_prompts.errors import ConfigurationError
from lightning_prompts.evaluation.ood_scores import id_mass
from lightning_prompts.methods.lapt import LAPT

NEGATIVES = ["teapot", "volcano", "violin", "glacier"]


def trained_layout(tiny_clip):
    torch.manual_seed(0)
    method = LAPT(tiny_clip, ["cat", "teapot", "dog", "volcano"], negative_labels=NEGATIVES, negative_groups=2)
    with torch.no_grad():  # contexts far from each other: ID and negative prompts differ clearly
        method.prompt.ctx.normal_(std=1.0)
        method.negative_prompt.ctx.normal_(std=1.0)
    return method


def test_id_names_and_negatives_take_their_own_context(tiny_clip):
    method = trained_layout(tiny_clip)
    assert method.prompt.classnames == ["cat", "dog"] and method.negative_prompt.classnames == NEGATIVES
    assert method.scored_labels() == ["cat", "teapot", "dog", "volcano", "violin", "glacier"]
    text = method.class_text_features()
    neg_prompts, neg_eot = method.negative_prompt()
    negatives = F.normalize(tiny_clip.encode_text_embeddings(neg_prompts, neg_eot), dim=-1)
    id_prompts, id_eot = method.prompt()
    ids = F.normalize(tiny_clip.encode_text_embeddings(id_prompts, id_eot), dim=-1)
    torch.testing.assert_close(
        text, torch.stack([ids[0], negatives[0], ids[1], negatives[1], negatives[2], negatives[3]])
    )
    assert {g["name"] for g in method.param_groups()} == {"prompt", "negative_prompt"}
    with pytest.raises(ConfigurationError, match="needs negative_labels"):
        LAPT(tiny_clip, ["cat", "dog"])


def test_mixing_loss_is_ce_of_mixed_image_and_template_features(tiny_clip):
    method = trained_layout(tiny_clip).train()
    images = torch.randn(3, 3, 32, 32)
    targets = torch.tensor([0, 1, 3])  # cat, teapot (a negative label with a training folder), volcano
    torch.manual_seed(5)
    output = method.forward_batch({"image": images})
    loss = method.task_loss(output, targets)
    torch.manual_seed(5)
    method.forward_batch({"image": images})  # same draws as above up to the loss
    lam = torch.distributions.Beta(1.0, 1.0).sample().expand(3)  # one λ per step, as the release draws it
    k = torch.randint(7, (3,))
    image = F.normalize(tiny_clip.encode_image(images).features, dim=-1)
    names = ["cat", "teapot", "volcano"]
    template = torch.stack(
        [tiny_clip.encode_text([method._templates[int(k[i])].format(names[i])], normalize=True)[0] for i in range(3)]
    )
    mixed = F.normalize(lam[:, None] * image + (1 - lam[:, None]) * template, dim=-1)
    logits = tiny_clip.logit_scale * mixed @ method.class_text_features().t()
    torch.testing.assert_close(loss, F.cross_entropy(logits, targets), rtol=1e-4, atol=1e-5)


def test_cross_distribution_mixing_pairs_id_with_negatives_and_adds_a_soft_cross_entropy(tiny_clip):
    method = LAPT(
        tiny_clip, ["cat", "teapot", "dog", "volcano"], negative_labels=NEGATIVES, cross_distribution=True
    ).train()
    with torch.no_grad():
        method.prompt.ctx.normal_(std=1.0)
        method.negative_prompt.ctx.normal_(std=1.0)
    targets = torch.tensor([0, 1, 2, 3, 2])  # cat, teapot, dog, volcano, dog: teapot and volcano are negatives
    torch.manual_seed(1)
    for _ in range(5):
        partners = method.distribution_partners(targets)
        assert set(partners[[0, 2, 4]].tolist()) <= {1, 3} and set(partners[[1, 3]].tolist()) <= {0, 2, 4}
    assert method.distribution_partners(torch.tensor([0, 2, 0])).tolist() == [0, 1, 2]  # no negative: itself
    images = torch.randn(5, 3, 32, 32)
    torch.manual_seed(7)
    output = method.forward_batch({"image": images})
    loss = method.task_loss(output, targets)
    torch.manual_seed(7)
    method.forward_batch({"image": images})
    lam = torch.distributions.Beta(1.0, 1.0).sample()  # the draws in task_loss's order
    k = torch.randint(7, (5,))
    lam_cd = torch.distributions.Beta(1.0, 1.0).sample()
    partners = method.distribution_partners(targets)
    image = F.normalize(tiny_clip.encode_image(images).features, dim=-1)
    text = method.class_text_features()
    names = ["cat", "teapot", "dog", "volcano", "dog"]
    template = torch.stack(
        [tiny_clip.encode_text([method._templates[int(k[i])].format(names[i])], normalize=True)[0] for i in range(5)]
    )
    cross_modal = F.cross_entropy(
        tiny_clip.logit_scale * F.normalize(lam * image + (1 - lam) * template, dim=-1) @ text.t(), targets
    )
    mixed = F.normalize(lam_cd * image + (1 - lam_cd) * image[partners], dim=-1)
    log_p = F.log_softmax(tiny_clip.logit_scale * mixed @ text.t(), dim=1)
    soft = -(lam_cd * log_p[torch.arange(5), targets] + (1 - lam_cd) * log_p[torch.arange(5), targets[partners]])
    torch.testing.assert_close(loss, cross_modal + soft.mean(), rtol=1e-4, atol=1e-5)


def test_one_checkpoint_serves_the_test_with_id_classes_and_more_negatives(tiny_clip):
    trained = trained_layout(tiny_clip)
    state = {k: v for k, v in trained.state_dict().items() if k in trained.trainable_state_keys()}
    more = [*NEGATIVES, "anvil", "harbor"]
    tested = LAPT(tiny_clip, ["cat", "dog"], negative_labels=more, negative_groups=3)
    tested.load_state_dict(state, strict=False)
    assert torch.equal(tested.prompt.ctx, trained.prompt.ctx)
    assert tested.scored_labels() == ["cat", "dog", *more]
    tested.eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = tested.forward_batch({"image": images}).logits
        # CLIP's scaled cosine of the frozen image features to every scored label's learned text feature
        image = F.normalize(tiny_clip.encode_image(images).features, dim=-1)
        expected = tiny_clip.model.logit_scale.exp() * image @ tested.class_text_features().t()
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-4)
    assert logits.shape == (2, 8) and logits.std(dim=1).min() > 1e-2
    score = id_mass(logits, num_id=2, groups=3)
    assert ((0 < score) & (score < 1)).all()


def test_lapt_reports_in_openoods_convention_and_the_testbed_in_mcms(tiny_clip):
    """The release evaluates with OpenOOD-VLM (OOD positive: FPR95 = ID rejected at 95 % OOD recall), an operating
    point other than MCM's; the testbed's table keeps MCM's for every method."""
    from pathlib import Path

    from lightning_prompts.recipes import merged_section

    evaluator = LAPT(tiny_clip, ["cat", "dog"], negative_labels=NEGATIVES).resolve_evaluator(None)
    assert (evaluator.score_name, evaluator.convention) == ("id_mass", "openood")
    recipes = Path(__file__).resolve().parents[2] / "recipes"
    assert "evaluator" not in merged_section(recipes / "lapt" / "ood_imagenet.yaml", "model")["init_args"]
    testbed = merged_section(recipes / "testbed" / "ood_lapt.yaml", "model")["init_args"]
    assert testbed["convention"] == "mcm" and "evaluator" not in testbed
    mcm = LAPT(tiny_clip, ["cat", "dog"], negative_labels=NEGATIVES, negative_groups=2, convention="mcm")
    assert (mcm.resolve_evaluator(None).convention, mcm.resolve_evaluator(None).negative_groups) == ("mcm", 2)


def test_lapt_recipes_preprocess_as_openood_with_lapts_bilinear():
    """OpenOOD's ImageNet preprocessors with LAPT's `--dataset.interpolation bilinear`: train RandomResizedCrop(224)
    + flip; test (ID and OOD sets) resize 256 + center crop 224; CLIP normalisation."""
    from pathlib import Path

    from torchvision.transforms import v2

    from lightning_prompts.data.transforms import build_transform
    from lightning_prompts.recipes import merged_section

    bilinear = v2.InterpolationMode.BILINEAR
    train = build_transform("openood", 224, "clip", train=True).transforms
    assert isinstance(train[0], v2.RandomResizedCrop) and train[0].interpolation == bilinear
    assert train[0].scale == (0.08, 1.0) and isinstance(train[1], v2.RandomHorizontalFlip)
    test = build_transform("openood", 224, "clip", train=False).transforms
    assert isinstance(test[0], v2.Resize) and test[0].size == [256] and test[0].interpolation == bilinear
    assert isinstance(test[1], v2.CenterCrop) and test[1].size == (224, 224)
    assert test[-1].mean == [0.48145466, 0.4578275, 0.40821073]
    recipes = Path(__file__).resolve().parents[2] / "recipes" / "lapt"
    for recipe in ("imagenet_train.yaml", "imagenet_train_cross_distribution.yaml", "ood_imagenet.yaml"):
        data = merged_section(recipes / recipe, "data")["init_args"]
        assert (data["augmentation"], data["normalization"]) == ("openood", "clip"), recipe


def test_the_cli_tests_a_checkpoint_with_the_id_classes_and_other_negative_labels(tmp_path):
    """The documented two stages (fit on ID + negative-label folders, then test on the ID classes against more
    negative labels in more groups) through the command: the test stage used to refuse the checkpoint as
    another model (other negative_labels, negative_groups) trained on other classes (the negatives' folders)."""
    from pathlib import Path

    from lightning_prompts.cli import run_cli
    from lightning_prompts.data.synthetic import write_image, write_unlabelled_images

    recipes = Path(__file__).resolve().parents[2] / "recipes"
    for label, name in enumerate(["cat", "dog", "teapot", "volcano"]):  # ID classes, then two negative labels
        for index in range(2):
            write_image(tmp_path / "fit" / "train" / name / f"{index}.jpg", label, index, 32, 0)
            if name in ("cat", "dog"):
                write_image(tmp_path / "test" / "test" / name / f"{index}.jpg", label, 10 + index, 32, 0)
                write_image(tmp_path / "test" / "train" / name / f"{index}.jpg", label, index, 32, 0)
    write_unlabelled_images(tmp_path / "ood", 4, 32, 0)
    common = ["--config", str(recipes / "lapt" / "imagenet_train.yaml"),
              "--config", str(recipes / "_tiny" / "lapt.yaml"), "--trainer.fast_dev_run", "false",
              "--trainer.default_root_dir", str(tmp_path / "run"),
              "--data.init_args.synthetic", "null"]  # fmt: skip
    fit = run_cli(["fit", *common, "--data.init_args.root", str(tmp_path / "fit"), "--trainer.max_epochs", "1",
                   "--trainer.limit_val_batches", "0", "--trainer.enable_checkpointing", "true"])  # fmt: skip
    assert fit.model.classnames == ["cat", "dog", "teapot", "volcano"]
    trained_context = fit.model.negative_prompt.ctx.detach().clone()
    more = "[teapot, volcano, violin, glacier, anvil, harbor]"
    test = run_cli(["test", *common, "--data.init_args.root", str(tmp_path / "test"), "--ckpt_path", "last",
                    "--model.init_args.negative_labels", more, "--model.init_args.negative_groups", "3",
                    "--data.init_args.ood_sets", f"{{far: {tmp_path / 'ood'}}}"])  # fmt: skip
    assert test.model.classnames == ["cat", "dog"] and len(test.model.scored_labels()) == 8
    assert torch.equal(test.model.negative_prompt.ctx, trained_context)  # the trained context, not a new one
    assert "test/auroc_far" in test.trainer.callback_metrics

    with pytest.raises(ConfigurationError, match="n_ctx: checkpoint 2, config 3"):  # another model: still refused
        run_cli(["test", *common, "--data.init_args.root", str(tmp_path / "test"), "--ckpt_path", "last",
                 "--model.init_args.n_ctx", "3"])  # fmt: skip
