"""ConsistencyRegularization as KgCoOp: the recipe recipes/kgcoop/ composes CoOp with the term, and its loss
is KgCoOp's official one (htyao89/KgCoOp, trainers/kgcoop.py)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from lightning_prompts.batch import IMAGE, LABEL
from lightning_prompts.cli import run_cli

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def test_kgcoop_recipe_trains_coop_with_the_official_knowledge_guided_loss(tmp_path):
    cli = run_cli(
        [
            "--config",
            str(RECIPES / "kgcoop" / "dtd.yaml"),
            "--config",
            str(RECIPES / "_tiny" / "clip.yaml"),
            "--trainer.default_root_dir",
            str(tmp_path),
        ],
        run=False,
    )
    model = cli.model
    (term,) = [c for c in cli.trainer.callbacks if type(c).__name__ == "ConsistencyRegularization"]
    assert type(model).__name__ == "CoOp" and term.weight == 8.0 and not term.image
    with torch.no_grad():  # a context far from its initialisation, so the term is not ~0
        model.prompt.ctx.add_(torch.randn_like(model.prompt.ctx))
    labels = torch.arange(4) % len(model.classnames)
    images = torch.randn(4, 3, 32, 32)
    batch = {IMAGE: images, LABEL: labels}
    output = model.compute_output(batch, model.check_output_fields([term]))
    loss = model.task_loss(output, labels) + term(model, batch, output)
    # KgCoOp: score = 1 - mean cos(text_features, text_features_old); loss = CE + W * score
    old = model.backbone.encode_text([f"a photo of a {n}, a type of texture." for n in model.classnames])
    old = old / old.norm(dim=-1, keepdim=True)
    score = 1.0 - F.cosine_similarity(output.text_features, old, dim=1, eps=1e-07).mean()
    expected = F.cross_entropy(output.logits, labels) + 8.0 * score
    assert torch.allclose(loss, expected, atol=1e-5)
    assert float(score) > 1e-3
