"""DAPT, PullPushRegularization and GradCAMMasks against the official formulas (Ferenas/DAPT)."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from helpers import synthetic_fewshot
from lightning.pytorch import Trainer

from lightning_prompts.batch import IMAGE, MASK
from lightning_prompts.callbacks import GradCAMMasks, PullPushRegularization
from lightning_prompts.callbacks.gradcam_masks import gradcam_masks
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods import DAPT, CoOp
from lightning_prompts.outputs import PromptOutput

FIELDS = frozenset({"foreground_image_features", "background_image_features"})


class FakeModule:
    """What the term reads from a module (the module protocol): the epoch, the logit scale and the targets."""

    def __init__(self, epoch, scale):
        self.current_epoch, self.logit_scale = epoch, torch.tensor(scale)

    def log(self, *args, **kwargs):
        pass

    def batch_targets(self, batch):
        return batch["label"]


def random_output(classes=3, background=4, batch=5, dim=8):
    normal = lambda *shape: F.normalize(torch.randn(*shape), dim=-1)  # noqa: E731
    return PromptOutput(
        logits=torch.zeros(batch, classes),
        image_features=normal(batch, dim),
        text_features=normal(classes, dim),
        foreground_image_features=normal(batch, dim),
        background_image_features=normal(batch, dim),
        background_text_features=normal(background, dim),
    )


def test_early_stage_is_the_official_triplet():
    output, term = random_output(), PullPushRegularization()
    got = term(FakeModule(epoch=6, scale=100.0), {"label": torch.zeros(5, dtype=torch.long)}, output)
    expected = 0.8 * F.triplet_margin_loss(
        output.image_features, output.foreground_image_features, output.background_image_features, margin=1.5
    )
    assert torch.allclose(got, expected, atol=1e-6)


def test_late_stage_aligns_foreground_and_background():
    torch.manual_seed(0)
    output, term = random_output(), PullPushRegularization()
    labels = torch.tensor([0, 1, 2, 0, 1])
    got = term(FakeModule(epoch=7, scale=50.0), {"label": labels}, output)
    fg_score = 50.0 * output.foreground_image_features @ output.text_features.t()
    bg_similarity = output.background_image_features @ output.background_text_features.t()
    expected = 0.1 * F.cross_entropy(fg_score, labels) + 0.5 * F.cross_entropy(
        50.0 * bg_similarity, bg_similarity.argmax(dim=1)
    )
    assert torch.allclose(got, expected, atol=1e-5)


def test_stage_switch_and_stop_gradients():
    term = PullPushRegularization(switch_epoch=2)
    assert term.early_stage(2) and not term.early_stage(3)
    output = random_output()
    for field in ("image_features", "foreground_image_features", "background_image_features", "text_features"):
        getattr(output, field).requires_grad_(True)
    term(FakeModule(0, 100.0), {"label": torch.zeros(5, dtype=torch.long)}, output).backward()
    assert output.image_features.grad is not None and output.foreground_image_features.grad is None


def test_foreground_and_background_views_multiply_the_normalised_image(tiny_clip):
    model = CoOp(tiny_clip, ["cat", "dog"], n_ctx=4)
    term = PullPushRegularization(background_words=["sky"])
    images, masks = torch.randn(2, 3, 32, 32), (torch.rand(2, 1, 32, 32) > 0.5).float()
    output = model.compute_output({IMAGE: images, MASK: masks}, FIELDS)
    assert torch.allclose(output.foreground_image_features, model.image_features(images * masks), atol=1e-6)
    assert torch.allclose(output.background_image_features, model.image_features(images * (1 - masks)), atol=1e-6)
    assert term.background_text_features(model, output).shape == (1, tiny_clip.embed_dim)


def test_maple_background_prompts_run_through_the_deep_text_prompts(tiny_clip):
    model = DAPT(tiny_clip, ["cat"], depth=3, background_words=["sky"])
    with torch.no_grad():
        model.prompt.deep_text[0].add_(1.0)
    frozen = tiny_clip.encode_text(["a clean origami sky."], normalize=True)
    output = model.compute_output({IMAGE: torch.randn(1, 3, 32, 32)}, {"background_text_features"})
    assert not torch.allclose(output.background_text_features, frozen, atol=1e-3)


def test_gradcam_masks_follow_dapt(tiny_clip):
    model = CoOp(tiny_clip, ["cat", "dog"], n_ctx=4)
    images, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 0])
    masks = gradcam_masks(model, images, labels)
    # independent re-computation: hook the last block's ln_1, gradient of the label logits
    captured = {}
    block = tiny_clip.model.visual.transformer.resblocks[-1].ln_1
    handle = block.register_forward_hook(lambda m, i, o: captured.__setitem__("o", o))
    x = images.clone().requires_grad_(True)
    score = model(x).logits.gather(1, labels.view(-1, 1)).sum()
    (grad,) = torch.autograd.grad(score, captured["o"])
    handle.remove()
    tokens, grads = captured["o"][:, 1:17].detach(), grad[:, 1:17]
    cam = F.relu((tokens * grads.mean(1, keepdim=True)).sum(-1)).view(3, 1, 4, 4)
    cam = F.interpolate(cam, size=(32, 32), mode="bilinear", align_corners=True)
    expected = ((cam / (cam.max() + 1e-6)) >= 0.5).float()
    assert torch.equal(masks, expected)
    assert masks.shape == (3, 1, 32, 32) and 0 < masks.mean() < 1


def test_gradcam_masks_are_the_same_with_block_checkpointing(tiny_clip):
    """The hooked ``ln_1`` runs inside the last block's checkpoint (and again in its recomputation): the captured
    activations and their gradient are the plain pass's."""
    from lightning_prompts.backbones import OpenCLIP

    checkpointed = OpenCLIP("tiny", pretrained=None, gradient_checkpointing=True)
    checkpointed.model.load_state_dict(tiny_clip.model.state_dict())
    torch.manual_seed(0)
    images, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 0])
    masks = {}
    for name, clip in (("plain", tiny_clip), ("checkpointed", checkpointed)):
        torch.manual_seed(1)
        masks[name] = gradcam_masks(DAPT(clip, ["cat", "dog"], depth=3), images, labels)
    assert torch.equal(masks["checkpointed"], masks["plain"])
    assert 0 < masks["plain"].mean() < 1


@pytest.mark.parametrize("masks", ["data", "gradcam"])
def test_dapt_trains_with_disk_or_gradcam_masks(masks, tiny_clip, trainer_kwargs):
    data = synthetic_fewshot(masks=masks == "data", augmentation="vtab")
    model = DAPT(tiny_clip, data.classnames, depth=3, masks=masks, switch_epoch=0)
    trainer = Trainer(max_epochs=2, limit_val_batches=0, **trainer_kwargs)
    trainer.fit(model, data)
    metrics = trainer.callback_metrics
    assert float(metrics["train/pull_push_stage"]) == 2.0  # the second epoch is past switch_epoch=0
    assert float(metrics["train/loss"]) == pytest.approx(
        float(metrics["train/task_loss"]) + float(metrics["train/pull_push"]), rel=1e-5
    )


def test_pull_push_composes_with_coop_and_needs_masks(tiny_clip, trainer_kwargs):
    with_masks = synthetic_fewshot(masks=True)
    trainer = Trainer(max_steps=1, callbacks=[PullPushRegularization()], **trainer_kwargs)
    trainer.fit(CoOp(tiny_clip, with_masks.classnames, n_ctx=4), with_masks)
    assert float(trainer.callback_metrics["train/pull_push"]) > 0
    without = synthetic_fewshot()
    trainer = Trainer(max_steps=1, callbacks=[PullPushRegularization()], **trainer_kwargs)
    with pytest.raises(ConfigurationError, match="needs foreground masks"):
        trainer.fit(CoOp(tiny_clip, without.classnames, n_ctx=4), without)
    assert trainer.global_step == 0


def test_epoch_refresh_needs_deterministic_preprocessing(tiny_clip, trainer_kwargs):
    data = synthetic_fewshot(augmentation="clip")  # random crops
    trainer = Trainer(
        max_steps=1, callbacks=[GradCAMMasks(refresh="epoch"), PullPushRegularization()], **trainer_kwargs
    )
    with pytest.raises(ConfigurationError, match="deterministic training preprocessing"):
        trainer.fit(CoOp(tiny_clip, data.classnames, n_ctx=4), data)


def test_frozen_background_features_are_computed_once(tiny_clip, monkeypatch):
    model = CoOp(tiny_clip, ["cat", "dog"], n_ctx=4)
    term = PullPushRegularization(background_words=["sky", "road"])
    output = model(torch.randn(1, 3, 32, 32))  # CoOp provides no background text: the term encodes its own
    calls = []
    encode = type(tiny_clip).encode_text
    monkeypatch.setattr(type(tiny_clip), "encode_text", lambda self, *a, **k: calls.append(1) or encode(self, *a, **k))
    first = term.background_text_features(model, output)
    assert torch.equal(term.background_text_features(model, output), first) and len(calls) == 1
    term.background_prompts = ["a clean origami sea."]
    assert term.background_text_features(model, output).shape[0] == 1 and len(calls) == 2


def official_background_text_features(clip, prompt, texts):
    """DAPT's background prompts through MaPLe's deep-prompted text encoder, written out: the first layer sees the
    plain tokens of "a clean origami {word}." (no learned context), layers 1..depth-1 overwrite positions 1..n_ctx
    with their deep prompts."""
    model, n = clip.model, prompt.n_ctx
    tokenized = open_clip.tokenize(texts)
    x = model.token_embedding(tokenized) + model.positional_embedding
    for index, block in enumerate(model.transformer.resblocks):
        if 1 <= index <= len(prompt.deep_text):
            deep = prompt.deep_text[index - 1].expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :1], deep, x[:, 1 + n :]], dim=1)
        x = block(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    return F.normalize(x[torch.arange(len(texts)), tokenized.argmax(dim=-1)] @ model.text_projection, dim=-1)


def test_background_prompts_are_the_plain_template_through_the_deep_text_prompts(tiny_clip):
    torch.manual_seed(0)
    model = DAPT(tiny_clip, ["cat", "dog"], depth=3, background_words=["sky", "road", "tablecloth"])
    with torch.no_grad():  # every learned piece far from its initial value, so that each one would show
        model.prompt.text.ctx.normal_(std=1.0)
        for deep in model.prompt.deep_text:
            deep.normal_(std=1.0)
    texts = ["a clean origami sky.", "a clean origami road.", "a clean origami tablecloth."]
    with torch.no_grad():
        output = model.compute_output({IMAGE: torch.randn(1, 3, 32, 32)}, {"background_text_features"})
        expected = official_background_text_features(tiny_clip, model.prompt, texts)
    torch.testing.assert_close(output.background_text_features, expected, rtol=1e-5, atol=1e-5)
    assert (expected @ expected.t()).fill_diagonal_(0).abs().max() < 0.999  # the words give different features


def test_late_stage_foreground_features_get_no_gradient():
    """Stage 2: ``CE(s·sg(f_fg)·Tᵀ, y)``: only the text side learns from the foreground alignment; the background
    term reaches the background image and text features."""
    torch.manual_seed(0)
    output, term = random_output(), PullPushRegularization()
    for field in ("image_features", "text_features", "foreground_image_features", "background_image_features",
                  "background_text_features"):  # fmt: skip
        getattr(output, field).requires_grad_(True)
    labels = torch.tensor([0, 1, 2, 0, 1])
    term(FakeModule(epoch=7, scale=50.0), {"label": labels}, output).backward()
    assert output.foreground_image_features.grad is None
    assert output.text_features.grad is not None and output.text_features.grad.abs().sum() > 0
    assert output.background_image_features.grad.abs().sum() > 0
    assert output.background_text_features.grad.abs().sum() > 0
    assert output.image_features.grad is None  # the full image is not part of the late-stage term
