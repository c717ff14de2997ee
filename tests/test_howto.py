"""The how-to guides' commands run as written: the ``lightning-prompts`` lines of docs/howto/own_data.md
and docs/howto/resume.md, on files made here in the layouts the guides show, with a tiny backbone
overlay that leaves the guide's data options alone."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import docs_commands, run_from_scratch_root
from PIL import Image

from lightning_prompts.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
HOWTO = ROOT / "docs" / "howto"
# the tiny overlays' backbone and trainer settings, without their generated data
TINY_MODELS = {
    "clip": "model:\n  init_args:\n    backbone:\n      class_path: OpenCLIP\n"
    "      init_args: {model_name: tiny, pretrained: null}\n",
    "text": "model:\n  init_args:\n    backbone:\n      class_path: HFText\n"
    "      init_args: {model_name_or_path: tiny}\n",
}
ONE_BATCH = (
    "trainer:\n  accelerator: cpu\n  devices: 1\n  precision: 32-true\n  logger: false\n  max_epochs: 1\n"
    "  limit_train_batches: 1\n  limit_val_batches: 1\n"
)


def commands(page: str) -> list[list[str]]:
    """The ``lightning-prompts`` commands of a how-to page."""
    return docs_commands(HOWTO / page)


def write_overlay(folder: Path, family: str) -> str:
    path = folder / f"tiny_{family}.yaml"
    path.write_text(TINY_MODELS[family] + ONE_BATCH)
    return str(path)


def write_image_folders(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", 16), ("val", 2)):  # the guide's command asks for 16 shots
        for index, name in enumerate(["golden retriever", "tabby_cat", "goldfish"]):
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(count):
                pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8) // (index + 1)
                Image.fromarray(pixels).save(folder / f"{k}.png")


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    return run_from_scratch_root(tmp_path, monkeypatch)


def test_own_images_command(scratch):
    write_image_folders(scratch / "my_data")
    (image_command,) = [c for c in commands("own_data.md") if "ImageFolderDataModule" in c]
    cli = run_cli([*image_command, "--config", write_overlay(scratch, "clip"), "--data.init_args.image_size=32"])
    assert cli.trainer.state.finished
    assert type(cli.datamodule).__name__ == "ImageFolderDataModule"
    assert cli.model.classnames == ["golden retriever", "goldfish", "tabby cat"]


def test_own_text_command(scratch):
    rows = [('{"review": "A triumph.", "stars": "pos"}'), ('{"review": "Dull.", "stars": "neg"}')] * 10
    (scratch / "reviews.jsonl").write_text("\n".join(rows) + "\n")
    (text_command,) = [c for c in commands("own_data.md") if any("reviews.jsonl" in word for word in c)]
    cli = run_cli([*text_command, "--config", write_overlay(scratch, "text")])
    assert cli.trainer.state.finished
    assert cli.model.classnames == ["negative", "positive"]
    assert len(cli.datamodule.split_texts("fit")["train"]) + len(cli.datamodule.split_texts("fit")["val"]) == 20


def test_resume_commands(scratch):
    fit, resume = commands("resume.md")
    tiny = ["--config", "recipes/_tiny/clip.yaml", "--trainer.fast_dev_run=false"]
    tiny += ["--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1"]
    first = run_cli([*fit, *tiny, "--trainer.max_epochs=1"])  # the run that was interrupted after an epoch
    assert (scratch / "outputs" / "coop" / "caltech101" / "checkpoints" / "last.ckpt").is_file()
    second = run_cli([*resume, *tiny, "--trainer.max_epochs=2"])
    assert first.trainer.global_step == 1 and second.trainer.global_step == 2  # continued, not restarted


def test_reproduce_a_paper_table_commands(scratch):
    """One dataset and seed of the loop on docs/howto/reproduce_paper.md: fit, then test the trained prompt."""
    page = (HOWTO / "reproduce_paper.md").read_text()
    assert "METHOD=maple" in page and "for seed in 1 2 3" in page
    values = {"$METHOD": "maple", "$dataset": "dtd", "$seed": "1", "$run": "outputs/table/maple/dtd/seed1"}
    fit, test = [], []
    for words in commands("reproduce_paper.md"):
        words = [values.get(word, word) for word in words]
        words = [word.replace("$METHOD", "maple").replace("$dataset", "dtd") for word in words]
        (fit if words[0] == "fit" else test).append(words)
    tiny = ["--config", "recipes/_tiny/clip.yaml"]
    trained = run_cli([*fit[0], *tiny, "--trainer.fast_dev_run=false", "--trainer.max_epochs=1",
                       "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1"])  # fmt: skip
    assert (scratch / "outputs/table/maple/dtd/seed1/checkpoints/last.ckpt").is_file()
    tested = run_cli([*test[0], *tiny, "--trainer.fast_dev_run=false", "--trainer.limit_test_batches=1"])
    assert {"test/acc_base", "test/acc_novel", "test/hm"} <= set(tested.trainer.callback_metrics)
    for name, value in trained.model.state_dict().items():  # the trained prompt was tested
        if name in trained.model.trainable_state_keys():
            assert torch.equal(value, tested.model.state_dict()[name]), name


def test_ood_and_test_time_commands(scratch):
    """Train on the guide's ID folders, test against its OOD folder, then TPT's command."""
    write_image_folders(scratch / "my_data")
    for split in ("test",):
        for name in ["golden retriever", "tabby_cat", "goldfish"]:
            for k in range(2):
                (scratch / "my_data" / split / name).mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((40, 40, 3), 40 * k, np.uint8)).save(
                    scratch / "my_data" / split / name / f"{k}.png"
                )
    ood = scratch / "my_ood" / "street_scenes" / "images"
    ood.mkdir(parents=True)
    for k in range(3):
        Image.fromarray(np.random.default_rng(k).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(ood / f"{k}.jpg")
    fit, test, tpt, variants, difftpt = commands("ood_and_test_time.md")
    overlay = ["--config", write_overlay(scratch, "clip"), "--data.init_args.image_size=32"]
    overlay += ["--data.init_args.num_workers=0"]
    run_cli([*fit, *overlay])
    tested = run_cli([*test, *overlay])
    assert "test/fpr95_street_scenes" in tested.trainer.callback_metrics
    assert (scratch / "outputs" / "my_ood" / "ood_scores.png").is_file()
    tuned = run_cli([*tpt, "--config", "recipes/_tiny/clip.yaml", "--data.init_args.test_views=9"])  # tiny data
    assert type(tuned.model.evaluator).__name__ == "TestTimePromptTuning"
    shifted = run_cli([*variants, "--config", "recipes/_tiny/clip.yaml", "--data.init_args.test_views=3"])
    assert {f"test/acc_{name}" for name in ("imagenet_a", "imagenetv2", "imagenet_r", "imagenet_sketch")} <= set(
        shifted.trainer.callback_metrics
    )
    # DiffTPT reads generated views in the official layout: 2 per test image of the tiny DTD data (its
    # generated test images are <class>/test_<i>.jpg, a few per class)
    from lightning_prompts.data.synthetic import classnames_for

    listed = []
    for name in classnames_for(4):
        for i in range(2):  # two images per class, listed as the official generator lists them
            listed.append(scratch / "data/difftpt/dtd" / name / f"test_{i:03d}.jpg")
            for k in range(2):
                path = scratch / "data/difftpt/dtd" / name / f"test_{i:03d}_{k}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((32, 32, 3), 60 * k + i, np.uint8)).save(path)
    (scratch / "data/difftpt/dtd/selected_data_list.txt").write_text("".join(f"{path}\n" for path in listed))
    diffused = run_cli([*difftpt, "--config", "recipes/_tiny/clip.yaml", "--data.init_args.test_views=3",
                        "--data.init_args.generated_views=2"])  # fmt: skip
    assert type(diffused.model.evaluator).__name__ == "DiffTPT" and "test/acc" in diffused.trainer.callback_metrics
    assert len(diffused.trainer.datamodule._datasets["test"][0]) == len(listed)  # the listed images only


def test_multitask_commands(scratch):
    """MVLPT's workflow as the guide writes it: two source seeds (tiny merged data), export, average, then a
    target run on image folders started from the averaged prompt, and its test."""
    found: dict[str, list[list[str]]] = {"source": [], "export": [], "average": [], "fit": [], "test": []}
    for words in commands("multitask.md"):
        kind = "source" if words[0] == "fit" and "source_coop11" in words[2] else words[0]
        found[kind].append(words)
    fits, exports = found["source"], found["export"]
    (average,) = found["average"]
    (target_fit, per_class_fit, voc_fit), (target_test, per_class_test, voc_test) = found["fit"], found["test"]
    tiny = ["--config", "recipes/_tiny/clip.yaml", "--trainer.fast_dev_run=false", "--trainer.max_epochs=1"]
    tiny += ["--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1"]
    for fit in fits:  # with the recipe's logger (the overlay turns it off): checkpoints sit under its version folder
        run_cli([*fit, *tiny, "--trainer.logger=true"])
    for export in exports:
        from lightning_prompts.cli import export_command

        export_command(export[1:])
    from lightning_prompts.cli import average_command

    average_command(average[1:])
    assert (scratch / "outputs/mvlpt/source.safetensors").is_file()
    write_image_folders(scratch / "data/elevater/resisc45")
    target_tiny = ["--config", write_overlay(scratch, "clip"), "--data.init_args.image_size=32"]
    target_tiny += ["--data.init_args.num_workers=0"]
    trained = run_cli([*target_fit, *target_tiny])
    from lightning_prompts.methods.base.checkpointing import read_prompt_file

    source, _ = read_prompt_file(scratch / "outputs/mvlpt/source.safetensors")
    assert trained.model.hparams["prompt_init"] == "outputs/mvlpt/source.safetensors"
    assert not torch.equal(trained.model.prompt.ctx.detach(), source["prompt.ctx"])  # started there, then trained
    tested = run_cli([*target_test, *target_tiny, "--trainer.limit_test_batches=1"])
    assert "test/acc" in tested.trainer.callback_metrics
    # the datasets ELEVATER scores by mean per-class accuracy: reported, and the best checkpoint follows it
    write_image_folders(scratch / "data/elevater/oxford-iiit-pets")
    trained = run_cli([*per_class_fit, *target_tiny])
    assert trained.trainer.checkpoint_callback.monitor == "val/mean_per_class"
    tested = run_cli([*per_class_test, *target_tiny, "--trainer.limit_test_batches=1"])
    assert {"test/acc", "test/mean_per_class"} <= set(tested.trainer.callback_metrics)
    # VOC 2007 in ELEVATER's downloaded format (multi-label, training images in a zip): the 11-point mAP
    from lightning_prompts.data import Synthetic
    from lightning_prompts.data.elevater import write_synthetic_iris

    voc = scratch / "data/elevater/voc2007_20211007"
    voc.mkdir(parents=True)
    indices = {"train": "train_ic.txt", "val": "val_ic.txt", "test": "test_ic.txt"}
    write_synthetic_iris(
        voc, Synthetic(num_classes=3, images_per_class=6, image_size=32), indices, "labels.txt", True, 6
    )
    trained = run_cli([*voc_fit, *target_tiny])
    assert trained.trainer.checkpoint_callback.monitor == "val/map_11point"
    assert trained.trainer.datamodule.multi_label and len(trained.trainer.datamodule.classnames) == 3
    tested = run_cli([*voc_test, *target_tiny, "--trainer.limit_test_batches=1"])
    assert 0.0 < float(tested.trainer.callback_metrics["test/map_11point"]) <= 1.0


def test_devices_gradient_checkpointing_commands(scratch):
    # docs/howto/devices.md's memory commands as written (a text model, an image tower), on their recipes' tiny
    # overlays (a tiny decoder; a tiny CLIP), one batch each
    from test_recipes import overlay_for

    commands = [c for c in docs_commands(HOWTO / "devices.md") if any("gradient_checkpointing" in w for w in c)]
    assert len(commands) == 2
    for command in commands:
        subcommand, config_flag, recipe, *rest = command
        cli = run_cli([subcommand, config_flag, recipe, "--config", str(overlay_for(ROOT / recipe)), *rest])
        assert cli.model.backbone.gradient_checkpointing is True
        assert cli.trainer.state.finished and cli.trainer.global_step >= 1


def test_devices_half_precision_weights_command(scratch):
    # docs/howto/devices.md's 16-bit weights command as written, on its recipe's tiny overlay, in the recipe's own
    # precision (bf16-mixed; the overlay sets 32-true, under which the command is refused, as the page says)
    from test_recipes import overlay_for

    from lightning_prompts.errors import ConfigurationError

    (command,) = [c for c in docs_commands(HOWTO / "devices.md") if any(".dtype" in word for word in c)]
    subcommand, config_flag, recipe, *rest = command
    args = [subcommand, config_flag, recipe, "--config", str(overlay_for(ROOT / recipe)), *rest]
    with pytest.raises(ConfigurationError, match="precision 'bf16-mixed'"):
        run_cli(args)
    cli = run_cli([*args, "--trainer.precision", "bf16-mixed"])
    assert {p.dtype for p in cli.model.backbone.parameters()} == {torch.bfloat16}
    assert cli.model.prompt.ctx.dtype == torch.float32
    assert cli.trainer.state.finished and cli.trainer.global_step >= 1


def test_generate_after_a_trained_prompt(scratch, capsys):
    """docs/howto/generate.md: its fit command on SST-2 files in GLUE's layout (tiny GPT-2, one batch, the logger on
    so the checkpoint lands where the page loads it from), then its Python block as written."""
    from helpers import docs_python

    glue = scratch / "data" / "glue" / "SST-2"
    glue.mkdir(parents=True)
    rows = ["sentence\tlabel", *(["a fine film\t1", "a dull film\t0"] * 8)]
    for name in ("train.tsv", "dev.tsv"):
        (glue / name).write_text("\n".join(rows) + "\n")
    (fit,) = commands("generate.md")
    overlay = scratch / "tiny_gpt2.yaml"
    overlay.write_text(TINY_MODELS["text"] + ONE_BATCH.replace("  logger: false\n", ""))
    run_cli([*fit, "--config", str(overlay)])
    (block,) = docs_python(HOWTO / "generate.md")
    capsys.readouterr()
    namespace: dict = {}
    exec(block, namespace)
    greedy, sampled = capsys.readouterr().out.strip().splitlines()
    assert len(ast.literal_eval(greedy)) == len(namespace["reviews"]) == len(ast.literal_eval(sampled))
    assert type(namespace["model"]).__name__ == "PromptTuning" and namespace["model"].backbone.task == "causal-lm"
