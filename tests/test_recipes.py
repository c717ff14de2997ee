"""Recipes are code: every YAML in recipes/ runs one batch of fit with its family's tiny overlay."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_prompts.cli import run_cli

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
#: recipe folder -> tiny overlay family. A new method folder must be added here (the test fails otherwise).
FAMILIES = {
    "coop": "clip",
    "zero_shot_clip": "clip",
    "maple": "clip",
    "coprompt": "clip",
    "dapt": "clip",
    "testbed": "clip",
    "vpt": "vit",
    "prompt_tuning": "text",
    "gpf": "graph",
    "graphcl": "graph",
    "quickstart.yaml": "text",
}


def recipe_files() -> list[Path]:
    return sorted(p for p in RECIPES.rglob("*.yaml") if not p.relative_to(RECIPES).parts[0].startswith("_"))


def test_every_recipe_folder_has_a_family():
    folders = {p.relative_to(RECIPES).parts[0] for p in recipe_files()}
    assert folders <= set(FAMILIES), f"map these to a tiny overlay in FAMILIES: {folders - set(FAMILIES)}"


@pytest.mark.parametrize("recipe", recipe_files(), ids=lambda p: str(p.relative_to(RECIPES)))
def test_recipe_runs_with_tiny_overlay(recipe, tmp_path):
    family = FAMILIES[recipe.relative_to(RECIPES).parts[0]]
    overlay = RECIPES / "_tiny" / f"{family}.yaml"
    cli = run_cli(
        ["fit", "--config", str(recipe), "--config", str(overlay), "--trainer.default_root_dir", str(tmp_path)]
    )
    assert cli.trainer.state.finished
    if any(p.requires_grad for p in cli.model.parameters()):
        assert cli.trainer.global_step == 1
        assert "train/loss" in cli.trainer.callback_metrics
    else:  # nothing to train (zero-shot): fit only validates
        assert "val/acc" in cli.trainer.callback_metrics
