"""Local-Prompt (AuroraZengfh/Local-Prompt, trainers/localprompt.py): the three losses and R-MCM pinned to
transcriptions of the official formulas, the prediction rule, the global-prompt-guided view selection and
one optimizer step per positive view."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from helpers import RecordTrainingSteps, SquaredTextFeatures, synthetic_fewshot
from lightning.pytorch import Callback, Trainer, seed_everything

from lightning_prompts.batch import IMAGE, LABEL, image_view
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.evaluation.ood_scores import regional_mcm
from lightning_prompts.methods.local_prompt import (
    LocalPrompt,
    diversity_loss,
    negative_view_loss,
    regional_contrast_loss,
)


# -- the official formulas, transcribed (common-factor form, T on scaled logits) -------------------------
def official_loss_local(output_local, p2n_output_local, label, top_k, T=1.0):
    b, n, c = output_local.shape
    m = p2n_output_local.shape[-1]
    label_output = output_local.gather(2, label.view(b, 1, 1).expand(b, n, 1))
    positions = label_output.topk(k=top_k, dim=1)[1]
    label_top = label_output.gather(1, positions).squeeze(-1)
    pos_top = output_local.topk(k=top_k, dim=1)[0]
    neg_top = p2n_output_local.topk(k=top_k, dim=1)[0]
    common = label_top[:, 0]
    numerator = torch.sum(torch.exp((label_top - common[:, None]) / T), dim=-1)
    everything = torch.cat((pos_top, neg_top), dim=-1).reshape(-1, top_k * (c + m))
    denominator = torch.sum(torch.exp((everything - common[:, None]) / T), dim=-1)
    return -torch.mean(torch.log(numerator / denominator))


def official_loss_local_neg(output_local, p2n_output_local, label, top_k, T=1.0):
    b, n, m = output_local.shape
    label_output = p2n_output_local.gather(2, label.view(b, 1, 1).expand(b, n, 1))
    positions = label_output.topk(k=top_k, dim=1)[1]  # (b, k, 1)
    pos_top = output_local.gather(1, positions.expand(b, top_k, m))
    neg_top = p2n_output_local.topk(k=top_k, dim=1)[0]
    common = pos_top[:, 0, 0]
    numerator = torch.sum(torch.exp((pos_top - common[:, None, None]) / T), dim=(1, 2))
    everything = torch.cat((pos_top, neg_top), dim=-1)
    denominator = torch.sum(torch.exp((everything - common[:, None, None]) / T), dim=(1, 2))
    return -torch.mean(torch.log(numerator / denominator))


def official_diversity(neg_text_features):
    m = neg_text_features.shape[0]
    similarity = F.cosine_similarity(neg_text_features[None, :, :], neg_text_features[:, None, :], dim=-1)
    return torch.sum(torch.sum(similarity, dim=-1) / m, dim=-1) / (m - 1)


def official_r_mcm(output, output_local, neg_output_local, top_k, T=1.0, scale=100.0):
    # the official code divides by 100, CLIP's logit scale
    output, output_local, neg_output_local = output / scale, output_local / scale, neg_output_local / scale
    mcm_global = -torch.max(F.softmax(output / T, dim=-1), dim=1).values
    n, c = output_local.shape[1:]
    ratio = torch.exp(output_local / T) / torch.sum(
        torch.exp(torch.cat((output_local, neg_output_local), dim=-1) / T), dim=-1, keepdim=True
    )
    local = torch.topk(ratio.reshape(-1, n * c), k=top_k, dim=-1)[0]
    return mcm_global - torch.mean(local, dim=1)  # the official score: higher means more OOD


def scaled_logits(*shape, seed):
    generator = torch.Generator().manual_seed(seed)
    return 100.0 * (torch.rand(*shape, generator=generator) * 0.6 - 0.2)  # 100 · cos, classes clearly apart


def test_the_three_losses_equal_the_official_formulas():
    labels = torch.tensor([2, 0, 4])
    local, negative = scaled_logits(3, 12, 5, seed=0), scaled_logits(3, 12, 7, seed=1)
    for k in (1, 4, 12):
        torch.testing.assert_close(
            regional_contrast_loss(local, negative, labels, k), official_loss_local(local, negative, labels, k)
        )
        torch.testing.assert_close(
            negative_view_loss(negative, local, labels, k), official_loss_local_neg(negative, local, labels, k)
        )
    assert regional_contrast_loss(local, negative, labels, 4) > 0.1  # not a degenerate value
    texts = torch.randn(7, 16, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(diversity_loss(texts), official_diversity(texts))


def test_r_mcm_orders_samples_as_the_official_score():
    global_logits, local = scaled_logits(6, 5, seed=3), scaled_logits(6, 9, 5, seed=4)
    negative = scaled_logits(6, 9, 7, seed=5)
    ours = regional_mcm(global_logits, local, negative, 100.0, top_k=10)
    torch.testing.assert_close(ours, -official_r_mcm(global_logits, local, negative, top_k=10))
    assert ours.std() > 1e-3


def local_prompt(tiny_clip, **kwargs):
    torch.manual_seed(0)
    options = {"n_ctx": 2, "num_negative_prompts": 4, "top_k": 3, "test_top_k": 2, "num_positive_views": 2}
    method = LocalPrompt(tiny_clip, ["cat", "dog", "fox"], **{**options, **kwargs})
    with torch.no_grad():  # prompts far apart so that classes score differently
        method.prompt.ctx.normal_(std=1.0)
        method.negative_prompt.ctx.normal_(std=1.0)
    return method


def test_the_prediction_is_exp_global_times_the_mean_top_k_regional_term(tiny_clip):
    method = local_prompt(tiny_clip).eval()
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        output = method(images)
    encoding = tiny_clip.encode_image(images)
    global_features = F.normalize(encoding.features, dim=-1)
    local = F.normalize(tiny_clip.local_features(encoding), dim=-1)
    global_text = tiny_clip.encode_text([f"a photo of a {name}." for name in ["cat", "dog", "fox"]], normalize=True)
    with torch.no_grad():
        local_text = method.class_text_features()
    cos_global, cos_local = global_features @ global_text.t(), local @ local_text.t()
    official = torch.exp(cos_global) * torch.topk(torch.exp(cos_local), k=2, dim=1)[0].mean(dim=1)
    torch.testing.assert_close(output.logits.exp(), official, rtol=1e-5, atol=1e-6)
    assert len(set(output.logits.argmax(dim=-1).tolist())) > 1 or output.logits.std() > 1e-3
    negative_text = method.negative_text_features().detach()
    scale = tiny_clip.logit_scale
    negative_logits = scale * local @ negative_text.t()
    expected = -official_r_mcm(scale * cos_global, scale * cos_local, negative_logits, top_k=2, scale=scale)
    torch.testing.assert_close(method.regional_id_scores(output), expected, rtol=1e-5, atol=1e-6)


def test_views_are_ranked_by_the_frozen_global_prompt_of_the_label(tiny_clip):
    method = local_prompt(tiny_clip, num_positive_views=3)
    generator = torch.Generator().manual_seed(1)
    views = [torch.randn(2, 3, 32, 32, generator=generator) for _ in range(5)]
    labels = torch.tensor([1, 2])
    local, positives, negative = method.select_views(views, labels)
    text = tiny_clip.encode_text(["a photo of a dog.", "a photo of a fox."], normalize=True)
    similarity = torch.stack([(F.normalize(tiny_clip.encode_image(v).features, dim=-1) * text).sum(-1) for v in views])
    order = similarity.argsort(dim=0, descending=True)
    assert torch.equal(positives, order[:3]) and torch.equal(negative, order[-1])
    assert local.shape[:2] == (5, 2)


class CountingSGD(torch.optim.SGD):
    steps = 0

    def step(self, closure=None):
        CountingSGD.steps += 1
        return super().step(closure)


def test_one_sgd_step_per_positive_view_in_ranked_order(tiny_clip, trainer_kwargs):
    seed_everything(0)
    data = synthetic_fewshot(shots=2, num_classes=3, views=4, augmentation="clip", batch_size=6, shuffle=False)
    optimizer = functools.partial(CountingSGD, lr=0.5)  # a callable: stored configurations name torch classes only
    method = LocalPrompt(tiny_clip, data.classnames, n_ctx=2, num_negative_prompts=3, top_k=2, test_top_k=2,
                         num_positive_views=2, optimizer=optimizer)  # fmt: skip
    before = copy.deepcopy(method)
    initial = method.prompt.ctx.detach().clone()
    batches = []

    class Record(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            batches.append({key: value.clone() for key, value in batch.items()})

    CountingSGD.steps = 0
    Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, callbacks=[Record()], **trainer_kwargs).fit(
        method, data
    )
    assert CountingSGD.steps == 2
    # the same two steps by hand: rank the batch's views, then step on each positive view in order
    batch = batches[0]
    views = [batch[IMAGE], *(batch[image_view(v)] for v in range(2, 5))]
    local, positives, negative = before.select_views(views, batch[LABEL])
    manual = torch.optim.SGD([p for p in before.parameters() if p.requires_grad], lr=0.5)
    rows = torch.arange(batch[LABEL].shape[0])
    for step in range(2):
        terms = before.local_losses(local[positives[step], rows], local[negative, rows], batch[LABEL],
                                    before.class_text_features(), before.negative_text_features())  # fmt: skip
        manual.zero_grad()
        terms["loss"].backward()
        manual.step()
    torch.testing.assert_close(method.prompt.ctx, before.prompt.ctx)
    torch.testing.assert_close(method.negative_prompt.ctx, before.negative_prompt.ctx)
    assert not torch.allclose(method.prompt.ctx, initial)


def test_loss_term_callbacks_are_refused(tiny_clip):
    method = local_prompt(tiny_clip)
    with pytest.raises(ConfigurationError, match="own training step.*SquaredTextFeatures"):
        method.check_ready("fit", [SquaredTextFeatures()], None)


def test_too_few_views_are_refused_before_training(tiny_clip, trainer_kwargs):
    data = synthetic_fewshot(shots=2, num_classes=3, views=2)
    method = LocalPrompt(tiny_clip, data.classnames, n_ctx=2, num_negative_prompts=3, num_positive_views=2)
    with pytest.raises(ConfigurationError, match="views"):
        Trainer(max_epochs=1, **trainer_kwargs).fit(method, data)


def test_ood_test_scores_every_image_with_r_mcm(tiny_clip, trainer_kwargs):
    from safetensors.torch import load_file

    data = synthetic_fewshot(shots=2, num_classes=3, ood_sets={"noise": "unused"})
    method = LocalPrompt(tiny_clip, data.classnames, n_ctx=2, num_negative_prompts=3, test_top_k=2)
    result = Trainer(**trainer_kwargs).test(method, data)[0]
    assert {"test/acc", "test/auroc", "test/fpr95", "test/aupr"} <= set(result)
    scores = load_file(str(next(Path(trainer_kwargs["default_root_dir"]).rglob("ood_scores.safetensors"))))
    data.setup("test")
    images = torch.stack([data._datasets["test"][1][i][IMAGE] for i in range(len(data._datasets["test"][1]))])
    method.eval()
    with torch.no_grad():
        expected = method.regional_id_scores(method(images))
    torch.testing.assert_close(scores["noise"], expected.float(), rtol=1e-5, atol=1e-6)


def test_negative_prompt_features_are_computed_once_per_parameter_version_in_evaluation(tiny_clip, monkeypatch):
    method = local_prompt(tiny_clip).eval()
    calls = []
    encode = type(tiny_clip).encode_text_embeddings
    monkeypatch.setattr(
        type(tiny_clip), "encode_text_embeddings", lambda self, *a, **k: calls.append(1) or encode(self, *a, **k)
    )
    with torch.no_grad():
        first = method.negative_text_features()
        again = method.negative_text_features()
        assert len(calls) == 1 and again is first
        method.negative_prompt.ctx.add_(0.5)  # an optimizer step bumps the version: recomputed
        changed = method.negative_text_features()
    assert len(calls) == 2 and not torch.allclose(changed, first)
    method.train()
    method.negative_text_features()  # training never uses the cache
    assert len(calls) == 3


def test_manual_optimisation_still_steps_the_epoch_schedule(tiny_clip, trainer_kwargs):
    data = synthetic_fewshot(shots=2, num_classes=3, views=3, batch_size=6)
    halving = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5)
    method = LocalPrompt(tiny_clip, data.classnames, n_ctx=2, num_negative_prompts=3, top_k=2, num_positive_views=2,
                         optimizer=functools.partial(torch.optim.SGD, lr=0.4), lr_scheduler=halving)  # fmt: skip
    trainer = Trainer(max_epochs=2, limit_val_batches=0, **trainer_kwargs)
    trainer.fit(method, data)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1)  # halved after each of 2 epochs


def official_csc_text_features(clip, ctx, names):
    """CoOp's class-specific prompts ``[SOS] ctx_c "<name>." [EOT]`` through CLIP's text encoder, written out
    (Local-Prompt builds its local and negative prompts this way; a negative prompt has no class word)."""
    model, n_ctx = clip.model, ctx.shape[1]
    tokenized = torch.cat([open_clip.tokenize(" ".join(["X"] * n_ctx) + f" {name}.") for name in names])
    embedding = model.token_embedding(tokenized)
    x = torch.cat([embedding[:, :1], ctx, embedding[:, 1 + n_ctx :]], dim=1) + model.positional_embedding
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
    return F.normalize(x[torch.arange(len(names)), tokenized.argmax(dim=-1)] @ model.text_projection, dim=-1)


def test_the_training_loss_is_l_pos_plus_5_l_neg_plus_half_l_div_on_scaled_regional_logits(tiny_clip, trainer_kwargs):
    """One training step's loss re-computed by hand: views ranked by the frozen global prompt of the label,
    L_pos on the positive view, L_neg on the least similar view, regional logits = CLIP's logit scale · cos (the
    official 100·cos), weights 5 and 0.5 (the official defaults)."""
    seed_everything(0)
    data = synthetic_fewshot(shots=2, num_classes=3, views=3, augmentation="clip", batch_size=6, shuffle=False)
    method = LocalPrompt(tiny_clip, data.classnames, n_ctx=2, num_negative_prompts=3, top_k=3, num_positive_views=1,
                         optimizer=functools.partial(torch.optim.SGD, lr=0.1))  # fmt: skip
    with torch.no_grad():  # prompts far apart so that classes score differently
        method.prompt.ctx.normal_(std=1.0)
        method.negative_prompt.ctx.normal_(std=1.0)
    local_ctx, negative_ctx = method.prompt.ctx.detach().clone(), method.negative_prompt.ctx.detach().clone()
    names = [name.replace("_", " ") for name in data.classnames]
    recorder = RecordTrainingSteps()
    Trainer(max_steps=1, limit_val_batches=0, callbacks=[recorder], **trainer_kwargs).fit(method, data)
    seen = recorder.steps[0]
    batch, labels = seen["batch"], seen["batch"][LABEL]
    rows = torch.arange(labels.shape[0])
    with torch.no_grad():
        views = [batch[IMAGE], batch[image_view(2)], batch[image_view(3)]]
        encodings = [tiny_clip.encode_image(view) for view in views]
        global_text = tiny_clip.encode_text([f"a photo of a {name}." for name in names], normalize=True)[labels]
        similarity = torch.stack([(F.normalize(e.features, dim=-1) * global_text).sum(-1) for e in encodings])
        positive_view, negative_view = similarity.argmax(dim=0), similarity.argmin(dim=0)  # (B,) each
        assert (positive_view != negative_view).all()
        local = torch.stack([F.normalize(tiny_clip.local_features(e), dim=-1) for e in encodings])  # (V, B, N, D)
        positive, negative = local[positive_view, rows], local[negative_view, rows]
        local_text = official_csc_text_features(tiny_clip, local_ctx, names)
        negative_text = official_csc_text_features(tiny_clip, negative_ctx, [""] * 3)
        scale = tiny_clip.model.logit_scale.exp()
        l_pos = official_loss_local(scale * positive @ local_text.t(), scale * positive @ negative_text.t(), labels, 3)
        l_neg = official_loss_local_neg(
            scale * negative @ negative_text.t(), scale * negative @ local_text.t(), labels, 3
        )
        l_div = official_diversity(negative_text)
    assert min(float(l_pos), float(l_neg), float(l_div)) > 1e-3  # every term matters
    expected = l_pos + 5.0 * l_neg + 0.5 * l_div
    torch.testing.assert_close(seen["loss"], expected, rtol=1e-4, atol=1e-4)
