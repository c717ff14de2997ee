"""Recipes are code: every YAML in recipes/ runs one batch of fit with its family's tiny overlay."""

from __future__ import annotations

import os
import shutil
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
    "gram": "clip",
    "lae": "continual",
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


@pytest.fixture(scope="module")
def tiny_gram_outputs(tmp_path_factory) -> Path:
    """``outputs/gram/`` of the tiny GRAM meta-training run, which the GRAM CoOp recipes read."""
    folder = tmp_path_factory.mktemp("gram")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        overlay = RECIPES / "_tiny" / "clip.yaml"
        run_cli(["fit", "--config", str(RECIPES / "gram" / "meta_train.yaml"), "--config", str(overlay)])
    finally:
        os.chdir(cwd)
    return folder / "outputs"


@pytest.mark.parametrize("recipe", recipe_files(), ids=lambda p: str(p.relative_to(RECIPES)))
def test_recipe_runs_with_tiny_overlay(recipe, tmp_path, monkeypatch, request):
    folder = recipe.relative_to(RECIPES).parts[0]
    overlay = RECIPES / "_tiny" / f"{FAMILIES[folder]}.yaml"
    if folder == "gram":  # GRAM writes outputs/gram/ and its CoOp recipes read it: run in a scratch folder
        monkeypatch.chdir(tmp_path)
        if recipe.name != "meta_train.yaml":
            shutil.copytree(request.getfixturevalue("tiny_gram_outputs"), tmp_path / "outputs")
    cli = run_cli(
        ["fit", "--config", str(recipe), "--config", str(overlay), "--trainer.default_root_dir", str(tmp_path)]
    )
    assert cli.trainer.state.finished
    if any(p.requires_grad for p in cli.model.parameters()):
        assert cli.trainer.global_step == 1
        assert "train/loss" in cli.trainer.callback_metrics
    else:  # nothing to train (zero-shot): fit only validates
        assert "val/acc" in cli.trainer.callback_metrics
