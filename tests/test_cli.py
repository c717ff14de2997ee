"""The lightning-prompts command: config printing, links, base-to-novel, callbacks from YAML, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lightning_prompts.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
TINY_CLIP = str(RECIPES / "_tiny" / "clip.yaml")


def test_print_config_shows_every_default_with_short_names(capsys):
    with pytest.raises(SystemExit):
        run_cli(["fit", "--config", str(RECIPES / "coop" / "caltech101.yaml"), "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    model = config["model"]
    assert model["class_path"] == "lightning_prompts.CoOp"
    assert model["init_args"]["n_ctx"] == 16 and model["init_args"]["class_token_position"] == "end"
    assert model["init_args"]["backbone"]["init_args"]["model_name"] == "RN50-quickgelu"
    assert model["init_args"]["lr_scheduler"]["init_args"]["cosine_span"] == "total"
    assert config["trainer"]["max_epochs"] == 200


def test_a_printed_config_runs_as_it_is_from_another_folder(capsys, tmp_path, monkeypatch):
    """``--print_config > full.yaml``, then ``fit --config full.yaml``: the recipe's ``extends`` (expanded before
    parsing) is not printed, where it named a file beside the recipe that full.yaml's folder does not have."""
    recipe = RECIPES / "coop" / "caltech101.yaml"
    assert "extends" in yaml.safe_load(recipe.read_text())
    with pytest.raises(SystemExit):
        run_cli(["fit", "--config", str(recipe), "--config", TINY_CLIP, "--print_config"])
    printed = capsys.readouterr().out
    assert yaml.safe_load(printed)["extends"] is None
    full = tmp_path / "elsewhere" / "full.yaml"
    full.parent.mkdir()
    full.write_text(printed)
    monkeypatch.chdir(tmp_path)
    run = ["--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.fast_dev_run", "false"]
    run += ["--trainer.max_steps", "1", "--trainer.limit_val_batches", "0"]  # a run that saves its config.yaml
    cli = run_cli(["fit", "--config", str(full), *run])
    assert cli.trainer.state.finished and cli.model.classnames == ["airplane", "bicycle", "bird", "cat"]
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())  # the config a run saves ...
    expected = yaml.safe_load(printed)  # ... is the printed one, with this command's own options
    expected["trainer"].update(default_root_dir=str(tmp_path / "run"), fast_dev_run=False, max_steps=1)
    expected["trainer"]["limit_val_batches"] = 0
    expected["weights_only"] = True  # what every command resolves it to (checkpoints are read weights-only)
    assert saved == expected


def test_classnames_flow_from_data_to_model(tmp_path):
    cli = run_cli(
        [
            "--config",
            str(RECIPES / "coop" / "dtd.yaml"),
            "--config",
            TINY_CLIP,
            "--trainer.default_root_dir",
            str(tmp_path),
        ],
        run=False,
    )
    assert cli.model.classnames == cli.datamodule.classnames == ["airplane", "bicycle", "bird", "cat"]


def test_base_to_novel_fit_then_test_reports_base_novel_and_hm(tmp_path, capsys):
    recipe = str(RECIPES / "coop" / "base_to_novel" / "eurosat.yaml")
    common = [
        "--config",
        recipe,
        "--config",
        TINY_CLIP,
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.fast_dev_run",
        "false",
        "--trainer.max_epochs",
        "1",
        "--trainer.logger",
        "false",
    ]
    fit = run_cli(["fit", *common])
    checkpoint = fit.trainer.checkpoint_callback.best_model_path
    assert Path(checkpoint).is_file()
    test = run_cli(["test", *common, "--ckpt_path", checkpoint])
    metrics = {k: float(v) for k, v in test.trainer.callback_metrics.items()}
    assert {"test/acc_base", "test/acc_novel", "test/hm"} <= set(metrics)
    base, novel = metrics["test/acc_base"], metrics["test/acc_novel"]
    assert metrics["test/hm"] == pytest.approx(2 * base * novel / (base + novel) if base + novel else 0.0, abs=1e-6)
    assert test.model.classnames == test.datamodule.classnames  # back to the base classes afterwards
    model, data = test.model.eval(), test.datamodule  # each half's accuracy recomputed over its own classes
    loaders = data.test_dataloader()
    for (name, names), loader in zip(data.test_class_sets.items(), loaders, strict=True):
        model.set_classnames(names)
        correct = total = 0
        with torch.no_grad():
            for batch in loader:
                predicted = model.forward_batch(batch).logits.argmax(dim=-1)
                correct, total = correct + int((predicted == batch["label"]).sum()), total + len(predicted)
        assert metrics[f"test/acc_{name}"] == pytest.approx(correct / total, abs=1e-6), name
    model.set_classnames(data.classnames)
    printed = capsys.readouterr()
    table = printed.out[printed.out.index("test results") :].splitlines()[1:4]  # one row per metric, sorted
    assert [line.split() for line in table] == [
        [name, f"{metrics['test/' + name]:.4f}"] for name in ("acc_base", "acc_novel", "hm")
    ]
    assert "Tip" not in printed.out + printed.err
    assert "DataLoader 0" not in printed.out + printed.err  # not Lightning's table as well, one column per loader

    # a checkpoint written under the CLI loads in plain Python, backbone rebuilt from its config
    from lightning_prompts import CoOp

    restored = CoOp.load_from_checkpoint(checkpoint)
    assert restored.classnames == fit.model.classnames
    assert restored.backbone.identity() == fit.model.backbone.identity()
    assert restored.prompt.ctx.shape == fit.model.prompt.ctx.shape
    predictions = run_cli(["predict", *common, "--ckpt_path", checkpoint]).trainer.predict_loop.predictions
    assert predictions and "preds" in predictions[0][0]


def test_loss_term_callback_from_the_command_line(tmp_path):
    cli = run_cli(
        [
            "fit",
            "--config",
            str(RECIPES / "coop" / "caltech101.yaml"),
            "--config",
            TINY_CLIP,
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.callbacks+=helpers.SquaredTextFeatures",
            "--trainer.callbacks.weight=64",
            "--trainer.callbacks.name=sq",
        ]
    )
    metrics = cli.trainer.callback_metrics
    assert float(metrics["train/sq"]) == pytest.approx(64 / 32, rel=1e-4)  # weight x 1/D with D = 32
    assert float(metrics["train/loss"]) == pytest.approx(float(metrics["train/task_loss"]) + 2.0, rel=1e-4)


@pytest.mark.parametrize("page", ["architecture.md", "contributing/add_a_method.md"])
def test_the_pages_loss_term_runs_from_the_command_line(page, tmp_path, monkeypatch):
    """The pages' example term, read from them, attached as the architecture page's command attaches it."""
    import sys
    import types

    from helpers import docs_commands, docs_python_blocks

    from lightning_prompts.callbacks import LossTerm

    package = types.ModuleType("my_package")
    package.LossTerm = LossTerm
    exec(docs_python_blocks(ROOT / "docs" / page, "class FeatureNormPenalty"), package.__dict__)
    monkeypatch.setitem(sys.modules, "my_package", package)
    (command,) = [
        c for c in docs_commands(ROOT / "docs" / "architecture.md") if "my_package.FeatureNormPenalty" in " ".join(c)
    ]
    cli = run_cli([*command[:3], "--config", TINY_CLIP, *command[3:], "--trainer.default_root_dir", str(tmp_path)])
    metrics = cli.trainer.callback_metrics
    weighted = float(metrics["train/loss"]) - float(metrics["train/task_loss"])
    assert weighted == pytest.approx(float(metrics["train/FeatureNormPenalty"]), rel=1e-5) and weighted > 0


def test_bad_input_is_one_line_on_the_console(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "lightning_prompts.cli",
        "fit",
        "--config",
        str(RECIPES / "coop" / "dtd.yaml"),
        "--data.init_args.root",
        str(tmp_path / "missing"),
        "--trainer.default_root_dir",
        str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("lightning-prompts: error: DescribableTextures (") and "dataset root" in last
    assert "does not exist" in last and "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_unmet_callback_field_fails_before_anything_is_written(tmp_path):
    from lightning_prompts.errors import MissingOutputFieldError

    with pytest.raises(MissingOutputFieldError, match="needs the output field 'node_embeddings'"):
        run_cli(
            [
                "fit",
                "--config",
                str(RECIPES / "coop" / "caltech101.yaml"),
                "--config",
                TINY_CLIP,
                "--trainer.default_root_dir",
                str(tmp_path),
                "--trainer.callbacks+=helpers.NeedsNodeEmbeddings",
            ]
        )
    assert not list(tmp_path.rglob("*"))  # no config.yaml, no log folder


@pytest.mark.parametrize(
    ("recipe", "overlay", "callback"),
    [
        ("coop/caltech101.yaml", "clip", ["ConsistencyRegularization", "--trainer.callbacks.image=false"]),
        ("vpt/cub.yaml", "vit", ["ConsistencyRegularization", "--trainer.callbacks.text=false"]),
        ("vpt/cub.yaml", "vit", ["GradientRegulation", "--trainer.callbacks.regulator=REGULATOR"]),
        ("prompt_tuning/sst2.yaml", "text", ["GradientRegulation", "--trainer.callbacks.regulator=REGULATOR"]),
        ("coop/caltech101.yaml", "clip", ["MomentumAccumulation", "--trainer.callbacks.decay=0.5"]),
        ("prompt_tuning/sst2.yaml", "text", ["MomentumAccumulation"]),
    ],
    ids=["consistency-coop", "consistency-vpt", "regulation-vpt", "regulation-pt", "momentum-coop", "momentum-pt"],
)
def test_callbacks_compose_with_other_methods_from_yaml(recipe, overlay, callback, tmp_path):
    from lightning_prompts.callbacks import GradientRegulation, MomentumAccumulation
    from lightning_prompts.optim import GradientRegulator

    regulator = GradientRegulator().save(tmp_path / "regulator.safetensors")
    name, *options = callback
    cli = run_cli(
        [
            "fit",
            "--config",
            str(RECIPES / recipe),
            "--config",
            str(RECIPES / "_tiny" / f"{overlay}.yaml"),
            "--trainer.default_root_dir",
            str(tmp_path),
            f"--trainer.callbacks+={name}",
            *(option.replace("REGULATOR", str(regulator)) for option in options),
        ]
    )
    attached = [c for c in cli.trainer.callbacks if type(c).__name__ == name]
    assert len(attached) == 1 and cli.trainer.global_step == 1
    metrics = cli.trainer.callback_metrics
    if name == "ConsistencyRegularization":  # the term joins the loss
        assert float(metrics["train/loss"]) > float(metrics["train/task_loss"])
    elif name == "GradientRegulation":
        assert isinstance(attached[0], GradientRegulation) and attached[0]._params
    else:
        assert isinstance(attached[0], MomentumAccumulation) and attached[0].offline is not None


def test_an_integer_batch_limit_stays_an_integer_whatever_union_typing_cached_first():
    """typing caches unions and treats Union[float, int] as Union[int, float]: a module that builds the former
    just before Lightning's Trainer is defined (scikit-learn, imported by transformers 4.x through torchmetrics)
    leaves `limit_train_batches: Union[float, int, None]` on Trainer, and `--trainer.limit_train_batches 1` parsed
    as 1.0: every batch. Reproduced by giving Trainer that annotation (built past typing's cache)."""
    code = (
        "import typing\n"
        "from lightning.pytorch import Trainer\n"
        "swapped = type(typing.Union[int, str])(typing.Union, (float, int, type(None)))\n"
        "Trainer.__init__.__annotations__['limit_train_batches'] = swapped\n"
        "from lightning_prompts.cli import main\n"
        f"main(['fit', '--config', 'recipes/coop/caltech101.yaml', '--config', {TINY_CLIP!r}, "
        "'--trainer.limit_train_batches=1', '--trainer.limit_val_batches=0.5', '--print_config'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    trainer = yaml.safe_load(result.stdout)["trainer"]
    assert trainer["limit_train_batches"] == 1 and isinstance(trainer["limit_train_batches"], int)
    assert trainer["limit_val_batches"] == 0.5


def test_int_before_float_reorders_only_unions_of_both():
    import typing
    from datetime import timedelta

    from lightning_prompts.lightning_cli import int_before_float

    union = typing.Union[float, int, None]  # noqa: UP007 - the typing form, which is cached
    assert typing.get_args(int_before_float(union)) == (int, float, type(None))
    assert typing.get_args(int_before_float(float | str | int | timedelta)) == (int, str, float, timedelta)
    assert int_before_float(float | None) == float | None
    assert int_before_float(int) is int


@pytest.mark.parametrize(
    ("recipe", "extra", "warns"),
    [
        ("coop/caltech101.yaml", [], True),  # a method that trains, evaluated as built
        ("zero_shot_clip/caltech101.yaml", [], False),  # nothing to train
        ("tpt/caltech101.yaml", ["--data.init_args.test_views=3"], False),  # tuned on each test image by design
    ],
)
def test_evaluating_an_untrained_prompt_warns(recipe, extra, warns, tmp_path):
    import warnings

    args = ["test", "--config", str(RECIPES / recipe), "--config", TINY_CLIP, *extra]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_cli([*args, "--trainer.default_root_dir", str(tmp_path)])
    said = [str(w.message) for w in caught if "without --ckpt_path" in str(w.message)]
    assert bool(said) is warns, said
    if warns:
        assert said[0].startswith("test without --ckpt_path: CoOp's prompt is its initialisation")


def test_evaluating_a_checkpoint_does_not_warn_about_an_untrained_prompt(tmp_path):
    import warnings

    tiny = ["--config", str(RECIPES / "coop/caltech101.yaml"), "--config", TINY_CLIP]
    run_cli(["fit", *tiny, "--trainer.default_root_dir", str(tmp_path), "--trainer.fast_dev_run=false",
             "--trainer.max_epochs=1", "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1"])  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_cli(["test", *tiny, "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", "last"])
    assert not [w for w in caught if "without --ckpt_path" in str(w.message)]


def test_predict_writes_the_logits_and_classes_of_every_predicted_image(tmp_path, capsys):
    from safetensors import safe_open

    tiny = ["--config", str(RECIPES / "coop/caltech101.yaml"), "--config", TINY_CLIP]
    run_cli(["fit", *tiny, "--trainer.default_root_dir", str(tmp_path), "--trainer.fast_dev_run=false",
             "--trainer.max_epochs=1", "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1"])  # fmt: skip
    capsys.readouterr()
    cli = run_cli(["predict", *tiny, "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", "last",
                   "--trainer.fast_dev_run=false", "--trainer.limit_predict_batches=2"])  # fmt: skip
    path = tmp_path / "predictions.safetensors"
    assert f"predictions: {path}" in capsys.readouterr().out
    with safe_open(str(path), "pt") as written:
        logits, preds = written.get_tensor("logits"), written.get_tensor("preds")
        assert json.loads(written.metadata()["classnames"]) == cli.model.classnames
    batches = cli.trainer.predict_loop.predictions
    assert logits.shape == (sum(len(batch["logits"]) for batch in batches), len(cli.model.classnames))
    assert torch.equal(preds, logits.argmax(-1)) and torch.equal(logits, torch.cat([b["logits"] for b in batches]))


def test_predict_under_two_ddp_processes_writes_every_prediction_once_in_order(tmp_path):
    """Each process predicts every other image; the first process wrote only its own half (rows 0, 2, 4, …)."""
    from safetensors.torch import load_file

    tiny = ["--config", str(RECIPES / "coop/caltech101.yaml"), "--config", TINY_CLIP, "--seed_everything", "0",
            "--trainer.fast_dev_run=false", "--data.init_args.eval_batch_size", "3"]  # fmt: skip
    command = [sys.executable, "-m", "lightning_prompts.cli", "predict", *tiny, "--trainer.devices", "2",
               "--trainer.strategy", "ddp", "--trainer.default_root_dir", str(tmp_path / "ddp")]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    run_cli(["predict", *tiny, "--trainer.default_root_dir", str(tmp_path / "one")])
    ddp = load_file(str(tmp_path / "ddp" / "predictions.safetensors"))
    one = load_file(str(tmp_path / "one" / "predictions.safetensors"))
    assert ddp["logits"].shape == one["logits"].shape and len(one["logits"]) > 3  # several batches per process
    assert torch.allclose(ddp["logits"], one["logits"], atol=1e-5) and torch.equal(ddp["preds"], one["preds"])


def test_a_nested_class_argument_set_to_null_on_the_command_line_is_none_not_the_string_none(tmp_path):
    """jsonargparse 4.53 read ``--model.init_args.backbone.init_args.checkpoint_path null`` as "None" (and the GNN
    looked for a file of that name) once the recipe had set a path; the command passes it as init_args instead."""
    from lightning_prompts.lightning_cli import nested_nulls_as_init_args

    assert nested_nulls_as_init_args(["--a.init_args.b.init_args.c", "null", "--a.init_args.d", "null"]) == [
        "--a.init_args.b", '{"init_args": {"c": null}}', "--a.init_args.d", "null"]  # fmt: skip
    assert nested_nulls_as_init_args(["--a.init_args.b.init_args.c.e=null", "--x", "--y=1"]) == [
        "--a.init_args.b", '{"init_args": {"c": {"e": null}}}', "--x", "--y=1"]  # fmt: skip
    for override in (["--model.init_args.backbone.init_args.checkpoint_path", "null"],
                     ["--model.init_args.backbone.init_args.checkpoint_path=null"]):  # fmt: skip
        cli = run_cli(["fit", "--config", str(RECIPES / "gpf" / "karate.yaml"), *override, "--trainer.fast_dev_run",
                       "true", "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
        assert cli.model.backbone.checkpoint_path is None and cli.model.backbone.in_channels == 34  # the rest kept


@pytest.mark.parametrize("stage", ["test", "predict"])
@pytest.mark.parametrize(
    "recipe, says",
    [
        ("graphcl/cora.yaml", "GraphCL pre-trains an encoder and has no"),
        ("gram/meta_train.yaml", "GRAM has no"),
        ("point_mae/shapenet55.yaml", "PointMAEPretraining pre-trains an encoder and has no"),
    ],  # fmt: skip
)
def test_pretraining_recipes_refuse_test_and_predict_before_anything_starts(recipe, says, stage, tmp_path):
    """Lightning said "No `test_step()` method defined" or "`Trainer.predict` requires `forward`", and GRAM's predict
    raised a bare NotImplementedError."""
    from test_recipes import overlay_for

    from lightning_prompts.errors import ConfigurationError

    path = RECIPES / recipe
    with pytest.raises(ConfigurationError, match=f"{says} {stage} stage"):
        run_cli([stage, "--config", str(path), "--config", str(overlay_for(path)),
                 "--trainer.default_root_dir", str(tmp_path / "run")])  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_with_a_width_resolved_from_its_data_is_rebuilt_as_trained(tmp_path):
    """RELIEF's max_nodes left out in the config: a command given the checkpoint rebuilds the checkpoint's width
    (here 40, wider than the data's), not the one the data would resolve now."""
    tiny = [
        "--config",
        str(RECIPES / "relief/node/cora_gppt.yaml"),
        "--config",
        str(RECIPES / "_tiny/relief_node.yaml"),
    ]
    fit = run_cli(["fit", *tiny, "--trainer.default_root_dir", str(tmp_path), "--model.init_args.max_nodes", "40"])
    assert fit.model.policy.max_nodes == 40
    fit.trainer.save_checkpoint(tmp_path / "relief.ckpt")
    tested = run_cli(
        ["test", *tiny, "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", str(tmp_path / "relief.ckpt")]
    )
    assert tested.model.policy.max_nodes == 40
    assert "test/acc" in tested.trainer.callback_metrics
