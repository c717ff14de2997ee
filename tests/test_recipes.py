"""Recipes are code: every YAML in recipes/ parses against the command's parser, one recipe per folder and
method runs one batch of fit with its method's tiny overlay (from the registry), and one per folder and method
of those whose header says to `test` them untrained (zero-shot, NegLabel) runs that test."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from helpers import run_from_scratch_root

from lightning_prompts import registry
from lightning_prompts.cli import run_cli
from lightning_prompts.recipes import expand_config_args, expand_file, find_recipes, merged_section, model_class

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
FILES = find_recipes(RECIPES)


def overlay_for(recipe: Path) -> Path:
    """The most specific tiny overlay of the recipe's method (its registry entry names the overlay): the one for a
    data base the recipe extends in its folder (``_tiny/<overlay>_<base>.yaml`` for ``extends: [_<base>.yaml]``:
    HetGPT's DBLP and IMDB schemas), else the one for its sub-folder (``_tiny/<overlay>_<sub-folder>.yaml``: other
    data, e.g. molecules), else the method's own."""
    entry = registry.get(model_class(recipe))
    # expand_file lists the most general base first: the nearest base (the one the recipe names) is tried first
    bases = [
        path.stem[1:] for path in expand_file(recipe)[:-1] if path.parent == recipe.parent and path.stem[:1] == "_"
    ]
    for name in [*reversed(bases), recipe.parent.name]:
        specific = RECIPES / "_tiny" / f"{entry.overlay}_{name}.yaml"
        if specific.is_file():
            return specific
    return RECIPES / "_tiny" / f"{entry.overlay}.yaml"


# recipes that take an evaluation path their folder's pick does not: ELEVATER's only multi-label set (11-point mAP)
# and its mean-per-class accuracy; the OOD evaluator after training (the testbed's CoOp)
OTHER_EVALUATION_PATHS = [
    RECIPES / "mvlpt" / "target_elevater_voc2007.yaml",
    RECIPES / "mvlpt" / "target_elevater_mean_per_class.yaml",
    RECIPES / "testbed" / "ood_coop.yaml",
    RECIPES
    / "zero_shot_text"
    / "sst2_minilm.yaml",  # the encoder's class descriptions (the folder's pick: GPT-2's words)
]
# recipes whose data the pick does not tell apart from their folder's (same data module) but whose overlay differs:
# HetGPT on DBLP's and IMDB's schemas (their metapaths name node types ACM lacks)
OTHER_SCHEMAS = [RECIPES / "hetgpt" / "dblp_5shot.yaml", RECIPES / "hetgpt" / "imdb_5shot.yaml"]
# recipes whose backbone family the pick does not tell apart from their folder's: prefix tuning on an
# encoder-decoder (T5), whose prefixes enter all three of its attentions
OTHER_BACKBONES = [RECIPES / "prefix_tuning" / "boolq_t5.yaml"]


def one_per_folder_and_method(keep=lambda recipe: True) -> list[Path]:
    """One recipe per folder, method and data module (a folder's recipes mostly differ in data only)."""
    chosen: dict[tuple[Path, str, str], Path] = {}
    for recipe in filter(keep, FILES):
        chosen.setdefault((recipe.parent, model_class(recipe) or "", data_class(recipe)), recipe)
    return sorted(chosen.values())


def data_class(recipe: Path) -> str:
    """The data module class path a recipe names (after ``extends``), ``""`` when it names none."""
    data = merged_section(recipe, "data")
    return data.get("class_path", "") if isinstance(data, dict) else str(data)


def recipes_to_fit() -> list[Path]:
    """:func:`one_per_folder_and_method`, :data:`OTHER_EVALUATION_PATHS`, :data:`OTHER_SCHEMAS` and
    :data:`OTHER_BACKBONES`."""
    picked = one_per_folder_and_method()
    others = OTHER_EVALUATION_PATHS + OTHER_SCHEMAS + OTHER_BACKBONES
    return picked + [recipe for recipe in others if recipe not in picked]


def one_trained_recipe_per_folder_and_method() -> list[Path]:
    """The first recipe of every recipe folder (``recipes/<folder>/``) and method that trains something at ``fit``,
    among those the recipe tests fit: a folder's callbacks (GRIP's rounds, KgCoOp's loss term, the testbed's feature
    cache) come with it. Left out: the stages that read another run's output (GRAM's CoOp recipes, MVLPT's target
    stages), the text testbed (the text folders' methods on another backbone) and Local-Prompt's ImageNet recipes
    (30 s here; ``testbed/ood_local_prompt.yaml`` runs the same method in 5)."""
    chosen: dict[tuple[str, str | None], Path] = {}
    for recipe in recipes_to_fit():
        folder = recipe.relative_to(RECIPES).parts[0]
        reads_a_run = (folder == "gram" and recipe.name != "meta_train.yaml") or (
            (merged_section(recipe, "model") or {}).get("init_args", {}).get("prompt_init")
        )
        if (
            model_class(recipe) not in TRAINS_NOTHING_AT_FIT
            and not reads_a_run
            and folder not in ("text_testbed", "local_prompt")
        ):
            chosen.setdefault((folder, model_class(recipe)), recipe)
    return sorted(chosen.values())


TRAINS_NOTHING_AT_FIT = {
    "ZeroShotCLIP",
    "ZeroShotText",
    "NegLabel",
    "TPT",
    "DiffTPT",
}  # zero-shot and test-time methods


@pytest.fixture(scope="module")
def parser():
    from lightning_prompts.lightning_cli import recipe_parser

    return recipe_parser()


@pytest.mark.parametrize("recipe", FILES, ids=lambda p: str(p.relative_to(RECIPES)))
def test_recipe_parses(recipe, parser):
    config = parser.parse_args(["fit", *expand_config_args(["--config", str(recipe)])])
    method = config.fit.model.class_path.rpartition(".")[2]
    assert registry.get(method).kind in ("method", "pretraining")
    assert overlay_for(recipe).is_file()


def test_the_overlay_is_the_data_bases_then_the_folders_then_the_methods():
    tiny = RECIPES / "_tiny"
    assert overlay_for(RECIPES / "hetgpt" / "dblp_5shot.yaml") == tiny / "hetero_dblp.yaml"
    assert overlay_for(RECIPES / "hetgpt" / "imdb_pretrain.yaml") == tiny / "hetero_imdb.yaml"
    assert overlay_for(RECIPES / "hetgpt" / "acm_5shot.yaml") == tiny / "hetero.yaml"
    assert overlay_for(RECIPES / "relief" / "node" / "cora_gppt.yaml") == tiny / "relief_node.yaml"
    assert overlay_for(RECIPES / "coop" / "caltech101.yaml") == tiny / "clip.yaml"


def test_the_nearest_data_base_overlay_wins_over_a_more_general_one(tmp_path, monkeypatch):
    """lae/cifar100_adapter.yaml extends _cifar100.yaml, which extends _defaults.yaml: with overlays for both, the
    nearer base's is taken."""
    recipe = RECIPES / "lae" / "cifar100_adapter.yaml"
    (tmp_path / "_tiny").mkdir()
    for name in ("continual.yaml", "continual_defaults.yaml", "continual_cifar100.yaml"):
        (tmp_path / "_tiny" / name).write_text("{}\n")
    monkeypatch.setattr(__import__(__name__), "RECIPES", tmp_path)  # where overlay_for looks for overlays
    assert overlay_for(recipe) == tmp_path / "_tiny" / "continual_cifar100.yaml"
    (tmp_path / "_tiny" / "continual_cifar100.yaml").unlink()
    assert overlay_for(recipe) == tmp_path / "_tiny" / "continual_defaults.yaml"


def test_no_yaml_file_under_recipes_gives_a_key_twice():
    """A repeated key keeps only its last value: two ``trainer:`` blocks once dropped the KgCoOp recipes' epochs
    and precision. Every file counts, the _base and _tiny files that other files name as values included."""
    from lightning_prompts.recipes import RecipeError, read_yaml

    files = sorted(RECIPES.rglob("*.yaml"))
    assert len(files) > len(FILES)
    repeated = []
    for file in files:
        try:
            read_yaml(file)
        except RecipeError as error:
            repeated.append(str(error))
    assert not repeated, repeated


def test_every_registered_method_has_a_recipe_folder_with_a_recipe():
    folders = {path.relative_to(RECIPES).parts[0] for path in FILES}
    for entry in [*registry.entries("method"), *registry.entries("pretraining")]:
        assert entry.recipes in folders, f"{entry.name} has no recipes/{entry.recipes}/ with a runnable recipe"


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


# what benchmarks/device_check.sh adds to every recipe on a GPU machine: the recipes' own mixed precision
ON_A_GPU_IN_BF16 = ["--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.precision", "bf16-mixed"]


def fit_with_tiny_overlay(recipe: Path, tmp_path: Path, monkeypatch, request, device_args: list[str]):
    # what a recipe writes to a relative path (pre-trained encoders) stays in the test's folder; the overlays' own
    # relative paths (recipes/_tiny/molecules.csv, …) are the checkout's, as when run from its root
    run_from_scratch_root(tmp_path, monkeypatch)
    if recipe.parent.name == "gram":  # GRAM writes outputs/gram/ and its CoOp recipes read it: a scratch folder
        if recipe.name != "meta_train.yaml":
            shutil.copytree(request.getfixturevalue("tiny_gram_outputs"), tmp_path / "outputs")
    elif prompt_init := (merged_section(recipe, "model") or {}).get("init_args", {}).get("prompt_init"):
        # a target stage reads its source prompt (MVLPT): written first by the same recipe, in the scratch folder
        source = run_cli(["fit", "--config", str(recipe), "--config", str(overlay_for(recipe)), *device_args,
                          "--model.init_args.prompt_init", "null",
                          "--trainer.default_root_dir", str(tmp_path / "source")])  # fmt: skip
        Path(prompt_init).parent.mkdir(parents=True, exist_ok=True)
        source.model.export_prompt(prompt_init)
    cli = run_cli(["fit", "--config", str(recipe), "--config", str(overlay_for(recipe)), *device_args,
                   "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    assert cli.trainer.state.finished
    if any(p.requires_grad for p in cli.model.parameters()):
        assert cli.trainer.fit_loop.epoch_loop.batch_progress.total.completed == 1
        assert cli.trainer.global_step >= 1  # optimizer steps: LocalPrompt takes one per positive view
        assert "train/loss" in cli.trainer.callback_metrics
        assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    else:  # nothing to train (zero-shot): fit only validates
        assert "val/acc" in cli.trainer.callback_metrics
    return cli


@pytest.mark.parametrize("recipe", recipes_to_fit(), ids=lambda p: str(p.relative_to(RECIPES)))
def test_one_recipe_per_folder_runs_with_its_tiny_overlay(recipe, tmp_path, monkeypatch, request):
    fit_with_tiny_overlay(recipe, tmp_path, monkeypatch, request, [])


@pytest.mark.slow
@pytest.mark.parametrize("recipe", FILES, ids=lambda p: str(p.relative_to(RECIPES)))
def test_every_recipe_file_runs_with_its_tiny_overlay(recipe, tmp_path, monkeypatch, request):
    """Every file, not one per folder, method and data module: about two minutes on two workers, so out of the default
    run (``pytest -m slow tests/test_recipes.py -k every_recipe_file``; docs/recipes.md)."""
    fit_with_tiny_overlay(recipe, tmp_path, monkeypatch, request, [])


@pytest.mark.gpu
@pytest.mark.parametrize("recipe", recipes_to_fit(), ids=lambda p: str(p.relative_to(RECIPES)))
def test_one_recipe_per_folder_runs_on_a_gpu_in_bf16(recipe, tmp_path, monkeypatch, request):
    cli = fit_with_tiny_overlay(recipe, tmp_path, monkeypatch, request, ON_A_GPU_IN_BF16)
    assert cli.trainer.strategy.root_device.type == "cuda"
    assert cli.trainer.precision == "bf16-mixed"


def says_to_test_untrained(recipe: Path) -> bool:
    """Whether the recipe's header tells users to run ``lightning-prompts test`` on it with nothing trained first
    (zero-shot, NegLabel, test-time tuning): no checkpoint, no fit before."""
    lines = [line for line in recipe.read_text().splitlines() if line.startswith("#")]
    command = f"lightning-prompts test --config recipes/{recipe.relative_to(RECIPES).as_posix()}"
    return any(command in line and "ckpt_path" not in line and "&&" not in line for line in lines)


def one_documented_untrained_test_per_folder_and_method() -> list[Path]:
    # TPT's recipes run in tests/evaluation/test_test_time.py, with fewer views
    return [recipe for recipe in one_per_folder_and_method(says_to_test_untrained) if "tpt" not in recipe.as_posix()]


@pytest.mark.parametrize(
    "recipe", one_documented_untrained_test_per_folder_and_method(), ids=lambda p: str(p.relative_to(RECIPES))
)
def test_a_recipe_tested_without_training_tests_with_its_tiny_overlay(recipe, tmp_path):
    evaluate_with_tiny_overlay(recipe, tmp_path, [])


@pytest.mark.gpu
@pytest.mark.parametrize(
    "recipe", one_documented_untrained_test_per_folder_and_method(), ids=lambda p: str(p.relative_to(RECIPES))
)
def test_a_recipe_tested_without_training_tests_on_a_gpu_in_bf16(recipe, tmp_path):
    cli = evaluate_with_tiny_overlay(recipe, tmp_path, ON_A_GPU_IN_BF16)
    assert cli.trainer.strategy.root_device.type == "cuda"


def evaluate_with_tiny_overlay(recipe: Path, tmp_path: Path, device_args: list[str]):
    cli = run_cli(["test", "--config", str(recipe), "--config", str(overlay_for(recipe)), *device_args,
                   "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    metrics = cli.trainer.callback_metrics
    assert cli.trainer.state.finished and any(name.startswith("test/") for name in metrics), sorted(metrics)
    return cli


def data_module_classes() -> dict[str, Path]:
    """Every data module class a recipe names, with one recipe that names it."""
    classes: dict[str, Path] = {}
    for recipe in FILES:
        classes.setdefault(data_class(recipe).rpartition(".")[2], recipe)
    return classes


def test_every_data_module_a_recipe_names_that_can_test_can_predict():
    """`lightning-prompts predict` once failed with Lightning's "predict_dataloader must be implemented" for the
    class-incremental, multi-label incremental, point-cloud and ELEVATER data modules. (Pre-training pairs,
    GRAM's ImageTextDataModule, have no test set.)"""
    from lightning.pytorch import LightningDataModule

    import lightning_prompts.data as data

    testing = [name for name in data_module_classes() if hasattr(data, name)]
    testing = [
        name for name in testing if getattr(data, name).test_dataloader is not LightningDataModule.test_dataloader
    ]
    assert len(testing) >= 10
    for name in testing:
        assert getattr(data, name).predict_dataloader is not LightningDataModule.predict_dataloader, name


@pytest.mark.parametrize(
    "recipe",
    [
        "lae/cifar100_prefix.yaml",
        "multi_lane/multilabel/voc_b0_c4.yaml",
        "idpt/modelnet40.yaml",
        "mvlpt/target_elevater_voc2007.yaml",
    ],  # fmt: skip
)
def test_predict_runs_on_the_data_modules_that_lacked_it(recipe, tmp_path):
    from safetensors.torch import load_file

    recipe = RECIPES / recipe
    source = ["--model.init_args.prompt_init", "null"] if "target" in recipe.name else []  # no source run here
    cli = run_cli(["predict", "--config", str(recipe), "--config", str(overlay_for(recipe)), *source,
                   "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    rows = sum(len(batch["logits"]) for batch in cli.trainer.predict_loop.predictions)
    written = load_file(str(tmp_path / "predictions.safetensors"))
    assert rows > 0 and written["logits"].shape[0] == rows


def test_the_karate_club_recipes_run_as_written_on_the_real_graph(tmp_path, monkeypatch):
    """No overlay: PyG's KarateClub ships with torch-geometric. GraphCL pre-trains and writes its encoder, GPF-plus
    loads it (a wrong path would fail) and its best checkpoint tests on the 26 members it neither trained nor
    validated on, as the recipe's header commands say."""
    run_from_scratch_root(tmp_path, monkeypatch)
    header = [line for line in (RECIPES / "gpf" / "karate.yaml").read_text().splitlines() if line.startswith("#   ")]
    commands = [line.removeprefix("#   lightning-prompts ").split() for line in header]
    assert [command[0] for command in commands] == ["fit", "fit", "test"]
    runs = []
    for command in commands:
        command = [
            part.replace("recipes/", f"{RECIPES}/", 1) if part.startswith("recipes/") else part for part in command
        ]
        runs.append(run_cli([*command, "--trainer.enable_progress_bar", "false"]))
    assert (tmp_path / "outputs" / "gnn" / "graphcl_karate_gin.pt").is_file()
    tested = runs[-1]
    assert tested.trainer.state.finished and 0.0 < float(tested.trainer.callback_metrics["test/acc"]) <= 1.0
    assert len(tested.datamodule.test_dataloader().dataset) == 26
