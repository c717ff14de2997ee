"""Commands of the docs run as written, with the recipe's tiny overlay (tiny backbone, generated data, one batch)
added after the recipe: every command of the callback pages, of DAPT's page (its variants are callback
combinations) and of the recipes page, and every `test --ckpt_path last|best` command of the method pages, after a
fit of the same recipe (placeholders such as `<run>` are left to the reader)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from helpers import docs_commands, run_from_scratch_root
from test_recipes import overlay_for

from lightning_prompts.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs" / "callbacks").glob("*.md")) + [ROOT / "docs" / "methods" / "dapt.md"]
COMMANDS = [(page, command) for page in PAGES for command in docs_commands(page)]
COMMANDS += [  # docs/recipes.md's commands on real data (those naming an overlay run below as written)
    (ROOT / "docs" / "recipes.md", command)
    for command in docs_commands(ROOT / "docs" / "recipes.md")
    if not any(word.startswith("recipes/_tiny/") for word in command) and "--print_config" not in command
]
COMMANDS += [
    (page, command)
    for page in sorted((ROOT / "docs" / "methods").glob("*.md"))
    if page.stem != "dapt"
    for command in docs_commands(page)
    if command[0] == "test" and "--ckpt_path" in command and not any("<" in word for word in command)
]  # the untrained `test` commands (zero-shot, NegLabel) run in tests/test_recipes.py, one per folder and method


def command_id(case) -> str:
    page, command = case
    return f"{page.stem}:{' '.join(command[:3])}{'…' if len(command) > 3 else ''}"


@pytest.fixture(scope="module")
def gram_outputs(tmp_path_factory) -> Path:
    """GRAM's meta-trained regulator (what `recipes/gram/meta_train.yaml` writes), for the commands that read it."""
    folder = tmp_path_factory.mktemp("gram")
    recipe = ROOT / "recipes" / "gram" / "meta_train.yaml"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        run_cli(["fit", "--config", str(recipe), "--config", str(overlay_for(recipe)),
                 "--trainer.default_root_dir", str(folder / "run")])  # fmt: skip
    return folder / "outputs"


@pytest.mark.parametrize("case", COMMANDS, ids=[command_id(case) for case in COMMANDS])
def test_the_page_command_runs(case, tmp_path, monkeypatch, request):
    page, command = case
    run_from_scratch_root(tmp_path, monkeypatch)
    if any("outputs/gram/" in word for word in command) or "recipes/gram/coop" in " ".join(command):
        shutil.copytree(request.getfixturevalue("gram_outputs"), tmp_path / "outputs")
    subcommand, config_flag, recipe, *rest = command
    assert config_flag == "--config", command
    overlay = overlay_for(ROOT / recipe)
    run = ["--config", recipe, "--config", str(overlay), *rest, "--trainer.default_root_dir", str(tmp_path / "run")]
    if "--ckpt_path" in rest:  # after the page's own fit of the same recipe, whose checkpoint it reads
        which = rest[rest.index("--ckpt_path") + 1]
        fitted = run_cli(["fit", *run[:4], "--trainer.default_root_dir", str(tmp_path / "run")])
        # fast_dev_run writes none: saved where the command reads it (last/best under the run folder, or the path
        # the page names, relative to the folder commands run from)
        where = tmp_path / which if "/" in which else tmp_path / "run" / "checkpoints" / f"{which}.ckpt"
        fitted.trainer.save_checkpoint(where)
    cli = run_cli([subcommand, *run])
    assert cli.trainer.state.finished
    metrics = cli.trainer.callback_metrics
    assert ("train/loss" in metrics) if subcommand == "fit" else any(name.startswith("test/") for name in metrics)


OVERLAY_COMMANDS = [
    command
    for command in docs_commands(ROOT / "docs" / "recipes.md")
    if command[0] == "fit" and any(word.startswith("recipes/_tiny/") for word in command)
]


@pytest.mark.parametrize("command", OVERLAY_COMMANDS, ids=lambda command: " ".join(command[2:5:2]))
def test_the_recipes_pages_tiny_overlay_commands_run_as_written(command, tmp_path, monkeypatch):
    """docs/recipes.md's commands already name their overlay: they run as the page gives them."""
    run_from_scratch_root(tmp_path, monkeypatch)
    cli = run_cli([*command, "--trainer.default_root_dir", str(tmp_path / "run")])
    assert cli.trainer.state.finished and cli.trainer.global_step >= 1
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])


def test_the_recipes_page_shows_an_overlay_command_per_family():
    named = {Path(word).stem for command in OVERLAY_COMMANDS for word in command if word.startswith("recipes/_tiny/")}
    assert {"clip", "vit", "text", "graph", "continual", "hetero_dblp"} <= named


def test_the_recipes_pages_print_config_command_prints_the_merged_recipe(capsys, tmp_path, monkeypatch):
    """Printing builds nothing (no weights, no data): it runs as written, from the checkout's root."""
    (command,) = [c for c in docs_commands(ROOT / "docs" / "recipes.md") if "--print_config" in c]
    run_from_scratch_root(tmp_path, monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(command)
    printed = capsys.readouterr().out
    assert exit_info.value.code in (0, None)
    for line in ("class_path: lightning_prompts.CoOp", "n_ctx: 16", "max_epochs: 200"):  # the recipe's, merged
        assert line in printed, line


def test_the_data_pages_own_ood_set_command_reports_the_set_and_writes_the_histogram(tmp_path, monkeypatch):
    """docs/data.md's `test --ckpt_path best --data.init_args.ood_sets '{mine: …}'` with the recipe's overlay (its
    generated data makes the OOD images too, so the folder is not read), after a fit of the same recipe."""
    (command,) = [c for c in docs_commands(ROOT / "docs" / "data.md") if "--data.init_args.ood_sets" in c]
    run_from_scratch_root(tmp_path, monkeypatch)
    subcommand, config_flag, recipe, *rest = command
    configs = [config_flag, recipe, "--config", str(overlay_for(ROOT / recipe))]
    root = ["--trainer.default_root_dir", str(tmp_path / "run")]
    fitted = run_cli(["fit", *configs, *root])
    fitted.trainer.save_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt")  # fast_dev_run writes none
    cli = run_cli([subcommand, *configs, *rest, *root])
    metrics = cli.trainer.callback_metrics
    assert {"test/acc", "test/fpr95_mine", "test/auroc_mine", "test/aupr_mine"} <= set(metrics), sorted(metrics)
    assert 0.0 <= float(metrics["test/auroc_mine"]) <= 1.0
    assert list((tmp_path / "run").rglob("ood_scores.png")) and list((tmp_path / "run").rglob("ood_scores.safetensors"))
