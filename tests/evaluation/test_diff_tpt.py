"""DiffTPT (chunmeifeng/DiffTPT) re-computed: the cosine-then-entropy filter against the official function
written out, generated views read from the official folder layout, and the per-image tuning (4 steps from
the same initial context, then the image's prediction)."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from helpers import synthetic_fewshot
from lightning.pytorch import Trainer

from lightning_prompts.batch import GENERATED_VIEWS
from lightning_prompts.errors import ConfigurationError, DatasetError
from lightning_prompts.evaluation import DiffTPT
from lightning_prompts.evaluation.diff_tpt import select_by_cosine_then_entropy
from lightning_prompts.methods import CoOp


def official_selection(logits, selection_cosine=0.8, selection_selfentro=0.3):
    """``select_confident_samples_cosine`` of the official difftpt_utils.py, returning the kept rows."""
    cosine = torch.stack([torch.nn.CosineSimilarity(dim=0)(logits[0], logits[i]) for i in range(1, logits.shape[0])])
    idx_cosine = torch.argsort(cosine, descending=True)[: int(cosine.size()[0] * selection_cosine)] + 1
    kept = torch.cat((logits[0, :].unsqueeze(0), logits[idx_cosine]), dim=0)
    entropy = -(kept.softmax(1) * kept.log_softmax(1)).sum(1)
    return kept[torch.argsort(entropy, descending=False)[: int(entropy.size()[0] * selection_selfentro)]]


def test_cosine_then_entropy_filter_is_the_official_one():
    torch.manual_seed(0)
    logits = torch.randn(127, 10) * torch.rand(127, 1) * 4  # image + 63 augmented + 63 generated views
    chosen = select_by_cosine_then_entropy(logits, 0.8, 0.3)
    assert len(chosen) == int((1 + int(126 * 0.8)) * 0.3) == 30
    assert torch.equal(logits[chosen], official_selection(logits))
    assert len(select_by_cosine_then_entropy(logits[:3], 0.8, 0.3)) == 1  # official: none; we keep the surest


def generated_folder(data, root, count):
    """Write ``count`` generated views per test image in DiffTPT's layout (copies, recoloured per view)."""
    from PIL import Image

    for _, items in data._splits().test_sets.values():
        for item in items:
            for k in range(count):
                path = root / item.path.parent.name / f"{item.path.stem}_{k}{item.path.suffix}"
                path.parent.mkdir(parents=True, exist_ok=True)
                with Image.open(item.path) as image:
                    image.convert("RGB").rotate(90 * (k + 1)).save(path)


def reference(method, initial, image, views, steps=4):
    """DiffTPT's loop: reset the context, score [image, *views], filter, 4 AdamW steps, predict the image."""
    with torch.no_grad():
        method.prompt.ctx.copy_(initial)
        inputs = torch.cat([image.unsqueeze(0), views])
        features = F.normalize(method.backbone.encode_image(inputs).features, dim=-1)
    optimizer = torch.optim.AdamW([method.prompt.ctx], lr=5e-3)
    selected = None
    with torch.enable_grad():
        for _ in range(steps):
            logits = method.logit_scale * features @ method.class_text_features().t()
            if selected is None:
                kept = official_selection(logits.detach())
                selected = [int((logits.detach() == row).all(-1).nonzero()[0]) for row in kept]
            probabilities = logits[selected].softmax(-1).mean(0)
            loss = -(probabilities * probabilities.log()).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return method.logit_scale * features[:1] @ method.class_text_features().t()


def test_generated_views_are_read_and_every_image_is_tuned_as_difftpt_does(tiny_clip, trainer_kwargs, tmp_path):
    generated = tmp_path / "generated"
    data = synthetic_fewshot(test_views=9, eval_batch_size=2, generated_views=10, generated_views_root=str(generated))
    with pytest.raises(DatasetError, match="generated view 0 of"):
        data.setup("test")
    generated_folder(data, generated, 10)
    data.setup("test")
    batch = next(iter(data.test_dataloader()[0]))
    assert batch[GENERATED_VIEWS].shape == (2, 10, 3, 32, 32)
    torch.manual_seed(0)
    method = CoOp(tiny_clip, data.classnames, n_ctx=4, ctx_init="a photo of a", evaluator=DiffTPT())
    with torch.no_grad():
        method.prompt.ctx.normal_(std=1.0)
    initial = method.prompt.ctx.detach().clone()
    scores = []
    original_score = DiffTPT.score

    def recording(self, module, batch, stage, index):
        scores.append(original_score(self, module, batch, stage, index))
        return scores[-1]

    DiffTPT.score = recording
    try:
        results = Trainer(**trainer_kwargs).test(method, data)[0]
    finally:
        DiffTPT.score = original_score
    assert torch.equal(method.prompt.ctx, initial) and 0.0 <= results["test/acc"] <= 1.0
    method.eval()
    for index in range(2):  # two consecutive images, each from the initial context
        views = torch.cat([batch["image_views"][index], batch[GENERATED_VIEWS][index]])
        expected = reference(method, initial, batch["image"][index], views)
        assert torch.allclose(scores[0][index], expected[0], atol=1e-4)
    shutil.rmtree(generated)


def test_listed_generated_views_test_the_images_difftpts_list_names(tmp_path):
    """DiffTPT's protocol: its generator picks images per class, writes their views and lists them in
    selected_data_list.txt (full paths under its save folder); the evaluation reads exactly those."""
    generated = tmp_path / "generated"
    options = {"generated_views": 2, "generated_views_root": str(generated), "generated_views_listed": True}
    data = synthetic_fewshot(**options)
    items = [item for _, test in data._splits().test_sets.values() for item in test]
    chosen = [items[0], items[-1]]
    for item in chosen:  # views for the listed images only, as the official generator writes them
        for k in range(2):
            path = generated / item.path.parent.name / f"{item.path.stem}_{k}{item.path.suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item.path, path)
    with pytest.raises(DatasetError, match="selected_data_list.txt does not exist"):
        data.setup("test")
    listing = generated / "selected_data_list.txt"
    listing.write_text("".join(f"{generated}/{item.path.parent.name}/{item.path.name}\n" for item in chosen))
    data = synthetic_fewshot(**options)
    data.setup("test")
    tested = [(item.path.parent.name, item.path.name) for item in data._datasets["test"][0].items]
    assert tested == [(item.path.parent.name, item.path.name) for item in chosen] and len(items) > 2
    listing.write_text(listing.read_text() + f"{generated}/{chosen[0].path.parent.name}/elsewhere.jpg\n")
    with pytest.raises(DatasetError, match="1 image.* not in the test split"):
        synthetic_fewshot(**options).setup("test")
    with pytest.raises(ValueError, match="set generated_views"):
        synthetic_fewshot(generated_views_listed=True)


def test_difftpt_needs_generated_views_or_a_generator(tiny_clip):
    data = synthetic_fewshot(test_views=3)
    method = CoOp(tiny_clip, data.classnames, n_ctx=4)
    with pytest.raises(ConfigurationError, match="needs generated views"):
        DiffTPT().check_ready(method, data, "test")
    flipped = DiffTPT(view_generator=lambda image: torch.stack([image.flip(-1), image.flip(-2)]))
    flipped.check_ready(method, data, "test")
    batch = {"image": torch.randn(1, 3, 32, 32), "image_views": torch.randn(1, 3, 3, 32, 32)}
    assert flipped.views(batch, 0).shape == (5, 3, 32, 32)
    with pytest.raises(ValueError, match="come together"):
        synthetic_fewshot(generated_views=3)


def test_the_dtd_recipe_makes_difftpts_view_counts():
    """The official difftpt mode: AugMixAugmenter(n_views=batch_size) = 64 augmented views (TPT's mode: 63), plus
    batch_size - 1 = 63 generated ones."""
    from pathlib import Path

    from lightning_prompts.recipes import merged_section

    recipe = Path(__file__).resolve().parents[2] / "recipes" / "tpt" / "difftpt_dtd.yaml"
    data = merged_section(recipe, "data")["init_args"]
    assert (data["test_views"], data["generated_views"], data["test_view_augmentation"]) == (64, 63, "augmix")
