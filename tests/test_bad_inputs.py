"""Bad and hostile input, as a user meets it on the command line: each case ends with exit status 2 and
one line ``lightning-prompts: error: …`` that names the file or key at fault, before anything is
written to the run folder; no file the library reads can run code."""

from __future__ import annotations

import functools
import json
import os
import pickle
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CodeInPickle
from safetensors.torch import save_file

from lightning_prompts.cli import main
from lightning_prompts.data.synthetic import write_image_folder_layout, write_split_json_layout

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
TINY_CLIP = str(RECIPES / "_tiny" / "clip.yaml")
COOP = str(RECIPES / "coop" / "dtd.yaml")
TINY = ["--config", COOP, "--config", TINY_CLIP]
TINY_TEXT = ["--config", str(RECIPES / "prompt_tuning" / "sst2.yaml"), "--config", str(RECIPES / "_tiny" / "text.yaml")]


def dassl_tree(root: Path, classes: int = 3, per_class: int = 4) -> Path:
    """A DTD tree in the Dassl layout (what recipes/coop/dtd.yaml reads)."""
    write_split_json_layout(root / "dtd", "images", "split_zhou_DescribableTextures.json", classes, per_class, 32, 0)
    return root / "dtd"


def real_data(root: Path) -> list[str]:
    """Arguments that point the tiny recipe at ``root`` instead of generating data."""
    return ["--data.init_args.synthetic", "null", "--data.init_args.root", str(root), "--data.init_args.shots", "-1"]


def run(args: list[str], out: Path, capsys, run_folder: bool = True) -> str:
    """Run the command in-process; return its one error line after checking status and the empty run folder."""
    import logging

    logging.raiseExceptions = False  # handlers made under an earlier test hold its closed capture stream
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--trainer.default_root_dir", str(out)] if run_folder else args)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[-1].startswith("lightning-prompts: error: "), lines[-3:]
    assert "Traceback" not in "\n".join(lines)
    assert not out.exists() or not any(out.rglob("*")), f"the run wrote {list(out.rglob('*'))}"
    return lines[-1]


# -- each case builds its input under tmp_path and returns (command arguments, what the message must name)
def truncated_jpeg(tmp: Path):
    dataset = dassl_tree(tmp / "data")
    first = json.loads((dataset / "split_zhou_DescribableTextures.json").read_text())["train"][0][0]
    image = dataset / "images" / first
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    return ["fit", *TINY, *real_data(tmp / "data")], image.name


def zero_byte_image(tmp: Path):
    dataset = dassl_tree(tmp / "data")
    first = json.loads((dataset / "split_zhou_DescribableTextures.json").read_text())["train"][0][0]
    (dataset / "images" / first).write_bytes(b"")
    return ["fit", *TINY, *real_data(tmp / "data")], Path(first).name


def split_not_json(tmp: Path):
    dataset = dassl_tree(tmp / "data")
    (dataset / "split_zhou_DescribableTextures.json").write_text("{ this is not json")
    return ["fit", *TINY, *real_data(tmp / "data")], "split_zhou_DescribableTextures.json"


def label_out_of_range(tmp: Path):
    dataset = dassl_tree(tmp / "data")
    split_file = dataset / "split_zhou_DescribableTextures.json"
    split = json.loads(split_file.read_text())
    split["test"][0][1] = 41
    split_file.write_text(json.dumps(split))
    return ["fit", *TINY, *real_data(tmp / "data")], "label 41"


def missing_root(tmp: Path):
    return ["fit", *TINY, *real_data(tmp / "nowhere")], "nowhere"


def ood_folder_missing(tmp: Path):
    dassl_tree(tmp / "data")
    ood = ["--data.init_args.ood_sets", json.dumps({"inaturalist": str(tmp / "iNaturalist")})]
    return ["test", *TINY, *real_data(tmp / "data"), *ood], "iNaturalist"


def unknown_dataset(tmp: Path):
    return ["fit", *TINY, "--data.init_args.dataset", "dtdd"], "dtdd"


def one_class_only(tmp: Path):
    dassl_tree(tmp / "data", classes=1)
    return ["fit", *TINY, *real_data(tmp / "data")], "one class"


def symlink_loop(tmp: Path):
    write_image_folder_layout(tmp / "folder", 2, 3, 32, 0)
    images = sorted((tmp / "folder" / "train").rglob("*.jpg"))
    images[0].unlink()
    images[0].symlink_to(images[0])  # a link to itself: stat loops
    recipe = tmp / "folder_recipe.yaml"
    recipe.write_text(
        f"extends: {COOP}\ndata:\n  class_path: ImageFolderDataModule\n"
        f"  init_args: {{root: '{tmp / 'folder'}', num_workers: 0, image_size: 32}}\n"
    )
    args = ["fit", "--config", str(recipe), "--config", TINY_CLIP, "--data.init_args.synthetic", "null"]
    return [*args, "--data.init_args.shots", "-1"], images[0].name


def empty_class_folder(tmp: Path):
    write_image_folder_layout(tmp / "folder", 3, 3, 32, 0)
    empty = tmp / "folder" / "train" / "zebra"
    empty.mkdir()
    recipe = tmp / "folder_recipe.yaml"
    recipe.write_text(
        f"extends: {COOP}\ndata:\n  class_path: ImageFolderDataModule\n"
        f"  init_args: {{root: '{tmp / 'folder'}', num_workers: 0, image_size: 32}}\n"
    )
    return ["fit", "--config", str(recipe), "--config", TINY_CLIP, "--data.init_args.synthetic", "null"], "zebra"


def duplicate_class_names(tmp: Path):
    rows = "\n".join(f"text {i},{label}" for i in range(8) for label in ("Good", "good"))
    (tmp / "train.csv").write_text("text,label\n" + rows + "\n")
    args = ["fit", *TINY_TEXT]
    return [
        *args,
        "--data.init_args.synthetic",
        "null",
        "--data.init_args.train_file",
        str(tmp / "train.csv"),
        "--data.init_args.val_file",
        "null",
        "--data.init_args.test_file",
        "null",
        "--data.init_args.text_column",
        "text",
        "--data.init_args.labels",
        "null",
        "--data.init_args.classnames",
        "null",
    ], "'Good' and 'good'"


def context_too_long(tmp: Path):
    phrase = " ".join(["word"] * 80)
    return ["fit", *TINY, "--model.init_args.ctx_init", phrase, "--model.init_args.n_ctx", "null"], "context length"


def too_many_soft_tokens(tmp: Path):
    args = ["fit", *TINY_TEXT]
    return [*args, "--model.init_args.num_virtual_tokens", "200", "--model.init_args.truncate", "true"], "200"


def typo_in_a_key(tmp: Path):
    return ["fit", *TINY, "--model.init_args.n_ctxx", "4"], "did you mean 'n_ctx'"


def typo_in_a_recipe(tmp: Path):
    recipe = tmp / "typo.yaml"
    recipe.write_text(f"extends: {COOP}\nmodel:\n  init_args:\n    class_specfic: true\n")
    return ["fit", "--config", str(recipe), "--config", TINY_CLIP], "class_specific"


def yaml_that_is_a_list(tmp: Path):
    recipe = tmp / "list.yaml"
    recipe.write_text("- fit\n- model\n")
    return ["fit", "--config", str(recipe)], "list.yaml"


def a_key_given_twice(tmp: Path):
    recipe = tmp / "twice.yaml"
    recipe.write_text(f"extends: {COOP}\ntrainer:\n  max_epochs: 3\ntrainer:\n  log_every_n_steps: 1\n")
    return [
        "fit",
        "--config",
        str(recipe),
        "--config",
        TINY_CLIP,
    ], "'trainer' is given twice in one mapping (lines 2 and 4)"


def a_mistyped_method_name(tmp: Path):
    return ["fit", *TINY, "--model", "CoOP"], "unknown class 'CoOP' (did you mean 'CoOp'?)"


def another_familys_tiny_overlay(tmp: Path):
    overlay = str(RECIPES / "_tiny" / "vit.yaml")
    return ["fit", "--config", COOP, "--config", overlay], "TimmViT is a registered backbone (vit) that this option"


def a_constructor_argument_out_of_range(tmp: Path):
    return ["fit", *TINY, "--model.init_args.n_ctx", "0"], "n_ctx must be a positive number of context vectors"


def a_trainer_setting_lightning_refuses(tmp: Path):
    return ["fit", *TINY, "--trainer.max_epochs", "-2"], "`max_epochs` must be a non-negative integer or -1"


def an_empty_config_file(tmp: Path):
    (tmp / "empty.yaml").write_text("")
    return ["fit", *TINY, "--config", str(tmp / "empty.yaml")], "empty.yaml is empty: it sets no option"


def the_optimizer_given_at_the_top_level(tmp: Path):
    return ["fit", *TINY, "--optimizer", "Adam"], "the optimizer belongs to the method here (--model.init_args"


def a_backbone_option_typo(tmp: Path):
    option = "--model.init_args.backbone.init_args.model_name"  # HFText's is model_name_or_path
    return ["fit", *TINY_TEXT, option, "x"], "'model_name' of HFText (did you mean 'model_name_or_path'?)"


def an_optimizer_option_typo(tmp: Path):  # the method's optimizer is a callable: the owner is the SGD it names
    return ["fit", *TINY, "--model.init_args.optimizer.init_args.lrr", "0.1"], "'lrr' of SGD (did you mean 'lr'?)"


def a_scheduler_option_typo(tmp: Path):  # one of our classes that is not in the registry
    option = "--model.init_args.lr_scheduler.init_args.warmup_epoch"
    return ["fit", *TINY, option, "1"], "'warmup_epoch' of WarmupCosineLR (did you mean 'warmup_epochs'?)"


def a_value_none_of_the_types_accepts(tmp: Path):
    return ["fit", *TINY, "--trainer.precision", "fp16"], "fp16 is not accepted; it takes one of: 64, 32, 16, 'trans"


def extends_a_missing_file(tmp: Path):
    recipe = tmp / "child.yaml"
    recipe.write_text("extends: parent.yaml\n")
    return ["fit", "--config", str(recipe)], "parent.yaml"


def extends_in_a_cycle(tmp: Path):
    (tmp / "a.yaml").write_text("extends: b.yaml\n")
    (tmp / "b.yaml").write_text("extends: a.yaml\n")
    return ["fit", "--config", str(tmp / "a.yaml")], "cycle"


def prompt_init_not_safetensors(tmp: Path):
    (tmp / "init.safetensors").write_bytes(b"not a safetensors file at all")
    return ["fit", *TINY, "--model.init_args.prompt_init", str(tmp / "init.safetensors")], "init.safetensors"


def prompt_init_other_shape(tmp: Path):
    save_file({"prompt.ctx": torch.zeros(7, 32)}, str(tmp / "init.safetensors"))
    return ["fit", *TINY, "--model.init_args.prompt_init", str(tmp / "init.safetensors")], "(7, 32)"


def prompt_init_with_nan(tmp: Path):
    save_file({"prompt.ctx": torch.full((16, 32), float("nan"))}, str(tmp / "init.safetensors"))
    return ["fit", *TINY, "--model.init_args.prompt_init", str(tmp / "init.safetensors")], "NaN"


def gpf_graph_without_features(tmp: Path):
    fake = "{class_path: torch_geometric.datasets.FakeDataset, init_args: {num_graphs: 1, num_channels: 0, task: node}}"
    return graph_overlay(tmp, fake), "node features"


def graph_overlay(tmp: Path, dataset: str) -> list[str]:
    """The tiny graph recipe with ``dataset`` (YAML) in place of its FakeDataset."""
    (tmp / "graph.yaml").write_text(f"data:\n  init_args:\n    dataset: {dataset}\n")
    gpf = ["--config", str(RECIPES / "gpf" / "cora.yaml"), "--config", str(RECIPES / "_tiny" / "graph.yaml")]
    return ["fit", *gpf, "--config", str(tmp / "graph.yaml")]


def gpf_features_of_another_width(tmp: Path):
    fake = "{class_path: torch_geometric.datasets.FakeDataset, init_args: {num_graphs: 1, num_channels: 5, task: node}}"
    return graph_overlay(tmp, fake), "5 node features"


def graph_dataset_not_from_pyg(tmp: Path):
    marker = tmp / "pwned"
    return graph_overlay(tmp, f"{{class_path: os.system, init_args: {{command: 'touch {marker}'}}}}"), "os.system"


def last_without_a_checkpoint(tmp: Path):
    return ["test", *TINY, "--ckpt_path", "last"], "checkpoints/last.ckpt"


def checkpoint_path_missing(tmp: Path):
    return ["test", *TINY, "--ckpt_path", str(tmp / "gone.ckpt")], "gone.ckpt"


def checkpoint_not_a_checkpoint(tmp: Path):
    (tmp / "junk.ckpt").write_bytes(os.urandom(64))
    return ["test", *TINY, "--ckpt_path", str(tmp / "junk.ckpt")], "junk.ckpt"


def saved_checkpoint(tmp: Path) -> Path:
    """A trained tiny CoOp checkpoint (one step, saved by the default last/best checkpointing)."""
    folder = tmp / "trained"
    main(
        [
            "fit",
            *TINY,
            "--trainer.default_root_dir",
            str(folder),
            "--trainer.fast_dev_run",
            "false",
            "--trainer.max_steps",
            "1",
            "--trainer.limit_val_batches",
            "1",
        ]
    )
    return next(folder.rglob("last.ckpt"))


def checkpoint_of_other_hyperparameters(tmp: Path):
    path = saved_checkpoint(tmp)
    return ["test", *TINY, "--ckpt_path", str(path), "--model.init_args.n_ctx", "4"], "n_ctx: checkpoint 16, config 4"


def checkpoint_of_another_backbone(tmp: Path):
    path = saved_checkpoint(tmp)
    return [
        "test",
        *TINY,
        "--ckpt_path",
        str(path),
        "--model.init_args.backbone.init_args.seed",
        "5",
    ], "backbone.init_args.seed: checkpoint 0, config 5"


def checkpoint_of_another_method(tmp: Path):
    path = saved_checkpoint(tmp)
    vpt = ["--config", str(RECIPES / "vpt" / "cub.yaml"), "--config", str(RECIPES / "_tiny" / "vit.yaml")]
    return [
        "test",
        *vpt,
        "--ckpt_path",
        str(path),
    ], "method: checkpoint CoOp, config VPT; backbone: checkpoint OpenCLIP, config TimmViT"


# -- found by the bad-input audit of 2026-12-04: each crashed deep inside, or ran with the wrong meaning
def a_prompt_file_as_ckpt_path(tmp: Path):
    save_file({"prompt.ctx": torch.zeros(16, 32)}, str(tmp / "prompt.safetensors"))
    return ["test", *TINY, "--ckpt_path", str(tmp / "prompt.safetensors")], "prompt_init"


def resume_with_another_optimizer(tmp: Path):
    path = saved_checkpoint(tmp)
    args = ["fit", *TINY, "--ckpt_path", str(path), "--model.init_args.optimizer", "torch.optim.AdamW"]
    return args, "optimizer: checkpoint SGD, config AdamW"


def clip_images_of_another_size(tmp: Path):
    size = ["--data.init_args.image_size", "64", "--data.init_args.synthetic.image_size", "64"]
    return ["fit", *TINY, *size], "64-pixel images but"


def text_files(tmp: Path, train: str, val: str | None = None) -> list[str]:
    (tmp / "train.csv").write_text(train)
    files = ["--data.init_args.synthetic", "null", "--data.init_args.train_file", str(tmp / "train.csv")]
    if val is not None:
        (tmp / "val.csv").write_text(val)
        files += ["--data.init_args.val_file", str(tmp / "val.csv")]
    return ["fit", *TINY_TEXT, *files, "--data.init_args.labels", "[neg, pos]", "--data.init_args.text_column", "text"]


def a_text_val_file_of_its_header_only(tmp: Path):
    rows = "text,label\n" + "".join(f"a fine film {i},pos\na dull film {i},neg\n" for i in range(4))
    return text_files(tmp, rows, "text,label\n"), "val split"


def a_text_class_without_training_rows(tmp: Path):
    rows = "text,label\n" + "".join(f"a fine film {i},pos\n" for i in range(6))
    return text_files(tmp, rows, "text,label\na dull film,neg\na fine film,pos\n"), "['neg'] have no training example"


def an_empty_text(tmp: Path):
    rows = "text,label\n" + "".join(f"a fine film {i},pos\na dull film {i},neg\n" for i in range(4)) + "  ,pos\n"
    return text_files(tmp, rows), "row 9 has an empty text"


def max_train_examples_zero(tmp: Path):
    return ["fit", *TINY_TEXT, "--data.init_args.max_train_examples", "0"], "max_train_examples must be at least 1"


def a_wrongly_typed_nested_value(tmp: Path):
    return ["fit", *TINY, "--data.init_args.batch_size", "big"], "--data.init_args.batch_size big is not accepted"


def graph_batch_size_zero(tmp: Path):
    gpf = ["--config", str(RECIPES / "gpf" / "cora.yaml"), "--config", str(RECIPES / "_tiny" / "graph.yaml")]
    return ["fit", *gpf, "--data.init_args.batch_size", "0"], "batch_size must be at least 1"


def graph_val_shots_zero(tmp: Path):
    gpf = ["--config", str(RECIPES / "gpf" / "cora.yaml"), "--config", str(RECIPES / "_tiny" / "graph.yaml")]
    return ["fit", *gpf, "--data.init_args.val_shots", "0"], "val_shots must be at least 1"


def graph_labels_with_gaps(tmp: Path):
    fake = "{class_path: torch_geometric.datasets.FakeDataset, init_args: {num_graphs: 1, avg_num_nodes: 12, "
    fake += "num_channels: 8, num_classes: 50, task: node}}"
    return graph_overlay(tmp, fake), "no example has class(es)"


POINTS = ["--config", str(RECIPES / "idpt" / "modelnet40.yaml"), "--config", str(RECIPES / "_tiny" / "idpt.yaml")]


def point_shots_zero(tmp: Path):
    return ["fit", *POINTS, "--data.init_args.shots", "0"], "shots must be a positive number of clouds"


def fewer_points_than_patches(tmp: Path):
    return ["fit", *POINTS, "--data.init_args.num_points", "4"], "samples 4 points per cloud"


def a_training_batch_of_one_cloud(tmp: Path):
    return ["fit", *POINTS, "--data.init_args.batch_size", "1"], "head has BatchNorm (head.1"


def a_gram_meta_task_of_one_pair(tmp: Path):
    recipe = ["--config", str(RECIPES / "gram" / "meta_train.yaml"), "--config", TINY_CLIP]
    return ["fit", *recipe, "--data.init_args.batch_size", "1"], "at least 2, got 1"


def relief_without_an_epoch_count(tmp: Path):
    recipe = ["--config", str(RECIPES / "relief" / "node" / "cora_gppt.yaml"), "--config",
              str(RECIPES / "_tiny" / "relief_node.yaml")]  # fmt: skip
    args = ["--trainer.fast_dev_run", "false", "--trainer.max_epochs", "-1", "--trainer.max_steps", "3"]
    return ["fit", *recipe, *args], "needs their number"


def dp_prompt_tuning_on_two_processes(tmp: Path):
    recipe = ["--config", str(RECIPES / "dp_prompt_tuning" / "sst2_gpt2.yaml"), "--config",
              str(RECIPES / "_tiny" / "text_short_prompt.yaml")]  # fmt: skip
    return ["fit", *recipe, "--trainer.devices", "2", "--trainer.strategy", "ddp_spawn"], "run it on one device"


def dp_prompt_tuning_with_the_trainers_gradient_accumulation(tmp: Path):
    recipe = ["--config", str(RECIPES / "dp_prompt_tuning" / "sst2_gpt2.yaml"), "--config",
              str(RECIPES / "_tiny" / "text_short_prompt.yaml")]  # fmt: skip
    return ["fit", *recipe, "--trainer.accumulate_grad_batches", "2"], "remove trainer.accumulate_grad_batches (2)"


def relief_with_the_trainers_gradient_clipping(tmp: Path):
    recipe = ["--config", str(RECIPES / "relief" / "node" / "cora_gppt.yaml"), "--config",
              str(RECIPES / "_tiny" / "relief_node.yaml")]  # fmt: skip
    return ["fit", *recipe, "--trainer.gradient_clip_val", "0.5"], "remove trainer.gradient_clip_val (0.5)"


def local_prompt_with_the_trainers_accumulation_and_clipping(tmp: Path):
    recipe = ["--config", str(RECIPES / "local_prompt" / "imagenet_16shot.yaml"), "--config", TINY_CLIP]
    options = ["--trainer.accumulate_grad_batches", "4", "--trainer.gradient_clip_val", "1"]
    return ["fit", *recipe, *options], "LocalPrompt steps its optimizers itself (one step per positive view"


def a_negative_learning_rate(tmp: Path):
    return ["fit", *TINY, "--model.init_args.optimizer.init_args.lr", "-0.5"], "Invalid learning rate: -0.5"


def accumulate_zero_batches(tmp: Path):
    return ["fit", *TINY, "--trainer.accumulate_grad_batches", "0"], "accumulate_grad_batches must be at least 1"


def zero_epochs(tmp: Path):
    return ["fit", *TINY, "--trainer.fast_dev_run", "false", "--trainer.max_epochs", "0"], "max_epochs is 0"


def base_to_novel_of_three_classes(tmp: Path):
    recipe = ["--config", str(RECIPES / "coop" / "base_to_novel" / "eurosat.yaml"), "--config", TINY_CLIP]
    return ["test", *recipe, "--data.init_args.synthetic.num_classes", "3"], "each half needs at least two classes"


def a_callback_value_its_class_refuses(tmp: Path):
    extra = ["--trainer.callbacks+=ConsistencyRegularization", "--trainer.callbacks.distance=bogus"]
    return ["fit", *TINY, *extra], "bogus is not accepted for ConsistencyRegularization's distance"


def a_callback_the_method_attaches_itself(tmp: Path):
    recipe = ["--config", str(RECIPES / "coprompt" / "dtd.yaml"), "--config", TINY_CLIP]
    extra = ["--trainer.callbacks+=ConsistencyRegularization", "--trainer.callbacks.weight=100"]
    return ["fit", *recipe, *extra], "CoPrompt attaches ConsistencyRegularization itself"


def a_loss_term_on_post(tmp: Path):
    recipe = ["--config", str(RECIPES / "post" / "sst2_gpt2_to_gpt2_large.yaml"), "--config",
              str(RECIPES / "_tiny" / "post.yaml")]  # fmt: skip
    paraphrases = str(RECIPES / "instruction_consistency" / "sentiment_instructions.json")
    extra = ["--trainer.callbacks+=InstructionConsistency", "--trainer.callbacks.paraphrases", paraphrases]
    return ["fit", *recipe, *extra], "POST trains with its own training step"


def folder_classes_renamed(tmp: Path, names: list[str]) -> list[str]:
    """An ImageFolder tree of three classes whose folders are renamed to ``names``, and the command to fit on it."""
    write_image_folder_layout(tmp / "folder", 3, 3, 32, 0)
    for part in ("train", "val", "test"):
        for folder, name in zip(sorted((tmp / "folder" / part).iterdir()), names):
            folder.rename(folder.parent / name)
    recipe = tmp / "folder_recipe.yaml"
    recipe.write_text(
        f"extends: {COOP}\ndata:\n  class_path: ImageFolderDataModule\n"
        f"  init_args: {{root: '{tmp / 'folder'}', num_workers: 0, image_size: 32}}\n"
    )
    command = ["fit", "--config", str(recipe), "--config", TINY_CLIP, "--data.init_args.synthetic", "null"]
    return [*command, "--data.init_args.shots", "-1"]


def empty_class_name(tmp: Path):
    return folder_classes_renamed(tmp, ["cat", "_", "dog"]), "class names at positions [0] are empty"  # "_" sorts first


def two_names_one_prompt(tmp: Path):
    return folder_classes_renamed(tmp, ["cat", "t_shirt", "T shirt"]), "are the same name"


def image_consistency_on_a_fine_tuned_vit(tmp: Path):
    recipe = ["--config", str(RECIPES / "sequential_fine_tuning" / "cifar100.yaml"), "--config",
              str(RECIPES / "_tiny" / "sequential_fine_tuning.yaml")]  # fmt: skip
    extra = ["--trainer.callbacks+=ConsistencyRegularization", "--trainer.callbacks.text=false"]
    return ["fit", *recipe, *extra], "frozen_image_features"


CASES: dict[str, Callable[[Path], tuple[list[str], str]]] = {
    fn.__name__: fn
    for fn in (
        empty_class_name,
        two_names_one_prompt,
        truncated_jpeg,
        zero_byte_image,
        split_not_json,
        label_out_of_range,
        missing_root,
        ood_folder_missing,
        unknown_dataset,
        one_class_only,
        symlink_loop,
        empty_class_folder,
        duplicate_class_names,
        context_too_long,
        too_many_soft_tokens,
        typo_in_a_key,
        typo_in_a_recipe,
        yaml_that_is_a_list,
        a_key_given_twice,
        a_value_none_of_the_types_accepts,
        a_backbone_option_typo,
        an_optimizer_option_typo,
        a_scheduler_option_typo,
        an_empty_config_file,
        the_optimizer_given_at_the_top_level,
        a_mistyped_method_name,
        another_familys_tiny_overlay,
        a_constructor_argument_out_of_range,
        a_trainer_setting_lightning_refuses,
        extends_a_missing_file,
        extends_in_a_cycle,
        prompt_init_not_safetensors,
        prompt_init_other_shape,
        prompt_init_with_nan,
        gpf_graph_without_features,
        gpf_features_of_another_width,
        graph_dataset_not_from_pyg,
        last_without_a_checkpoint,
        checkpoint_path_missing,
        checkpoint_not_a_checkpoint,
        checkpoint_of_other_hyperparameters,
        checkpoint_of_another_backbone,
        checkpoint_of_another_method,
        a_prompt_file_as_ckpt_path,
        resume_with_another_optimizer,
        clip_images_of_another_size,
        a_text_val_file_of_its_header_only,
        a_text_class_without_training_rows,
        an_empty_text,
        max_train_examples_zero,
        a_wrongly_typed_nested_value,
        graph_batch_size_zero,
        graph_val_shots_zero,
        graph_labels_with_gaps,
        point_shots_zero,
        fewer_points_than_patches,
        a_training_batch_of_one_cloud,
        a_gram_meta_task_of_one_pair,
        relief_without_an_epoch_count,
        dp_prompt_tuning_on_two_processes,
        dp_prompt_tuning_with_the_trainers_gradient_accumulation,
        relief_with_the_trainers_gradient_clipping,
        local_prompt_with_the_trainers_accumulation_and_clipping,
        a_negative_learning_rate,
        accumulate_zero_batches,
        zero_epochs,
        base_to_novel_of_three_classes,
        a_callback_value_its_class_refuses,
        a_callback_the_method_attaches_itself,
        a_loss_term_on_post,
        image_consistency_on_a_fine_tuned_vit,
    )
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_naming_the_culprit_and_writes_nothing(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args, culprit = CASES[case](tmp_path)
    capsys.readouterr()
    line = run(args, tmp_path / "run", capsys)
    assert culprit in line, line
    assert "weights_only` set to `False" not in line  # never advise loading a file in a way that runs its code
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("case", [checkpoint_not_a_checkpoint, checkpoint_of_another_method])
def test_checkpoints_are_checked_where_lightning_has_no_parse_ckpt_path_call(case, tmp_path, capsys, monkeypatch):
    """Lightning 2.5 never calls ``_parse_ckpt_path`` (the private hook our check rides on in 2.6): the check must
    still run, from ``before_instantiate_classes``, before anything reads the file."""
    from lightning.pytorch.cli import LightningCLI

    from lightning_prompts.lightning_cli import PromptsCLI

    monkeypatch.chdir(tmp_path)
    args, culprit = case(tmp_path)
    monkeypatch.setattr(PromptsCLI, "_parse_ckpt_path", lambda self: None)  # as if Lightning never called it
    monkeypatch.setattr(LightningCLI, "_parse_ckpt_path", lambda self: None, raising=False)
    capsys.readouterr()
    assert culprit in run(args, tmp_path / "run", capsys)


def test_a_run_folder_under_a_file_fails_before_anything_runs(tmp_path, capsys):
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *TINY, "--trainer.default_root_dir", str(tmp_path / "file" / "run")])
    assert exit_info.value.code == 2
    assert "cannot be created" in capsys.readouterr().err and (tmp_path / "file").is_file()


def test_a_validation_interval_longer_than_the_epoch_is_one_line(tmp_path, capsys):
    """Lightning counts the epoch's batches only inside fit (after the run folder got its config.yaml), and said
    so in a traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *TINY, "--trainer.fast_dev_run", "false", "--trainer.max_epochs", "1",
              "--trainer.val_check_interval", "1000", "--trainer.default_root_dir", str(tmp_path / "run")])  # fmt: skip
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(lines)
    assert lines[-1].startswith("lightning-prompts: error: --trainer.val_check_interval 1000 is more than the ")
    assert "check_val_every_n_epoch null" in lines[-1]


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root writes to read-only folders")
def test_a_read_only_run_folder_fails_before_anything_runs(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        line = run(["fit", *TINY], folder, capsys)
    finally:
        folder.chmod(0o755)
    assert "not writable" in line


def test_paths_with_spaces_and_unicode_work(tmp_path):
    root = tmp_path / "données d'entraînement ✓"
    dassl_tree(root)
    out = tmp_path / "sortie à écrire"
    main(["fit", *TINY, *real_data(root), "--trainer.default_root_dir", str(out)])


def test_grayscale_cmyk_and_16_bit_images_load_as_8_bit_rgb(tmp_path):
    from PIL import Image

    from lightning_prompts.data.images import load_rgb

    ramp = np.linspace(0, 65535, 32 * 32, dtype=np.uint16).reshape(32, 32)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    Image.new("L", (32, 32), 90).save(tmp_path / "gray.png")
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    for name in ("deep.png", "gray.png", "cmyk.jpg"):
        image = load_rgb(tmp_path / name)
        assert image.mode == "RGB" and image.size == (32, 32)
    deep = np.asarray(load_rgb(tmp_path / "deep.png"))[..., 0]
    assert deep.min() == 0 and deep.max() == 255 and len(np.unique(deep)) > 200  # scaled, not clipped to 255


# -- hostile files: they would write a marker if any code in them ran ----------------------------------
def test_a_hostile_few_shot_cache_runs_no_code(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dataset = dassl_tree(tmp_path / "data")
    marker = tmp_path / "pwned"
    (dataset / "split_fewshot").mkdir()
    (dataset / "split_fewshot" / "shot_2-seed_1.pkl").write_bytes(pickle.dumps({"train": [CodeInPickle(marker)]}))
    exec_payload = b"cbuiltins\nexec\n(Vopen(" + repr(str(marker)).encode() + b", 'w')\ntR."
    args = ["fit", *TINY, *real_data(tmp_path / "data"), "--data.init_args.shots", "2"]  # the cache of 2 shots
    line = run(args, tmp_path / "run", capsys)
    assert "shot_2-seed_1.pkl" in line and "not allowed" in line and not marker.exists()
    (dataset / "split_fewshot" / "shot_2-seed_1.pkl").write_bytes(exec_payload)  # builtins.exec, protocol 0
    line = run(args, tmp_path / "run", capsys)
    assert "builtins.exec" in line and not marker.exists()


def test_a_hostile_cifar_file_runs_no_code(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    base = tmp_path / "data" / "cifar-100-python"
    base.mkdir(parents=True)
    for split in ("train", "test"):
        (base / split).write_bytes(pickle.dumps({"data": CodeInPickle(marker), "fine_labels": [0]}))
    (base / "meta").write_bytes(pickle.dumps({"fine_label_names": ["a", "b"]}))
    args = [
        "fit",
        "--config",
        str(RECIPES / "lae" / "cifar100_adapter.yaml"),
        "--config",
        str(RECIPES / "_tiny" / "continual.yaml"),
        "--data.init_args.synthetic",
        "null",
        "--data.init_args.root",
        str(tmp_path / "data"),
    ]
    line = run(args, tmp_path / "run", capsys)
    assert "cifar-100-python" in line and "posix.system" in line and not marker.exists()


def test_hostile_checkpoint_hyperparameters_run_no_code(tmp_path, capsys, monkeypatch):
    """A checkpoint's stored config may name a module that does something on import, a callable as its
    optimizer, or trust_remote_code: export and load_from_checkpoint refuse all three."""
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    (tmp_path / "evil_module.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass OpenCLIP: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = saved_checkpoint(tmp_path)
    checkpoint = torch.load(path, weights_only=True)
    attacks = {
        "evil backbone": ("backbone", {"class_path": "evil_module.OpenCLIP", "init_args": {}}, "evil_module.OpenCLIP"),
        "callable optimizer": ("optimizer", {"class_path": "os.system", "init_args": {}}, "os.system"),
    }
    for name, (key, value, culprit) in attacks.items():
        hostile = {**checkpoint, "hyper_parameters": {**checkpoint["hyper_parameters"], key: value}}
        torch.save(hostile, tmp_path / f"{key}.ckpt")
        export = ["export", "--ckpt_path", str(tmp_path / f"{key}.ckpt"), "--output", str(tmp_path / "run" / "p")]
        line = run(export, tmp_path / "run", capsys, run_folder=False)
        assert culprit in line and not marker.exists(), name
    assert "evil_module" not in sys.modules
    from lightning_prompts.backbones import HFText
    from lightning_prompts.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="trust_remote_code"):
        HFText.check_stored_config({"model_kwargs": {"trust_remote_code": True}})


def test_a_config_cannot_turn_weights_only_off(tmp_path, capsys, monkeypatch):
    # Lightning reads some checkpoints this command never pre-reads (OnExceptionCheckpoint's file when fit has no
    # ckpt_path, SLURM's hpc_ckpt_N.ckpt) with the config's weights_only
    monkeypatch.chdir(tmp_path)
    line = run(["fit", *TINY, "--weights_only", "false"], tmp_path / "run", capsys)
    assert "weights_only: false" in line


def test_lightning_is_told_to_read_every_checkpoint_as_weights_only(tmp_path, monkeypatch):
    """Whatever torch's default (False before torch 2.6), Lightning's own reads get weights_only=True."""
    from lightning.pytorch import Trainer

    monkeypatch.chdir(tmp_path)
    seen = {}

    @functools.wraps(Trainer.fit)  # the command reads fit's arguments from its signature
    def fit(self, *args, **kwargs):
        seen.update(kwargs)

    monkeypatch.setattr(Trainer, "fit", fit)
    main(["fit", *TINY, "--trainer.default_root_dir", str(tmp_path / "run")])
    assert seen["weights_only"] is True


def test_a_checkpoint_is_evaluated_with_other_backbone_run_options(tmp_path, monkeypatch):
    """How the frozen model runs (block checkpointing, the shared-prefix pass, 16-bit weights) is not what was
    trained: a checkpoint trained without them is tested with them, where another seed (other weights) is refused."""
    from lightning_prompts.lightning_cli import compare_hparams, run_cli

    monkeypatch.chdir(tmp_path)
    path = saved_checkpoint(tmp_path)
    backbone = "--model.init_args.backbone.init_args."
    options = [f"{backbone}gradient_checkpointing", "true", f"{backbone}shared_prefix", "false",
               f"{backbone}dtype", "bfloat16", "--trainer.precision", "bf16-mixed"]  # fmt: skip
    cli = run_cli(["test", *TINY, "--ckpt_path", str(path), *options, "--trainer.default_root_dir", str(tmp_path)])
    assert cli.trainer.state.finished and "test/acc" in cli.trainer.callback_metrics
    assert cli.model.backbone.gradient_checkpointing and cli.model.backbone.half_weights
    stored = {"backbone": {"class_path": "OpenCLIP", "init_args": {"seed": 0, "dtype": "float32"}}}
    other = {"backbone": {"class_path": "OpenCLIP", "init_args": {"seed": 5, "dtype": "bfloat16"}}}
    assert compare_hparams(stored, other) == ["backbone.init_args.seed: checkpoint 0, config 5"]


def test_a_text_prompt_trained_on_16_bit_weights_is_evaluated_on_float32_weights(tmp_path, monkeypatch):
    """A text backbone's weight type is a loading option of transformers (``model_kwargs.dtype``): a checkpoint
    trained on the bfloat16 model validates on the float32 one (the configs differ only there, and the weights share
    their bfloat16 fingerprint), where another ``model_kwargs`` entry is still a difference, named by its key."""
    from lightning_prompts.lightning_cli import compare_hparams, run_cli

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "trained"
    half = "--model.init_args.backbone.init_args.model_kwargs={dtype: bfloat16}"
    steps = ["--trainer.fast_dev_run", "false", "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1"]
    fit = run_cli(["fit", *TINY_TEXT, half, *steps, "--trainer.default_root_dir", str(folder)])
    assert next(fit.model.backbone.model.base_model.parameters()).dtype == torch.bfloat16
    path = next(folder.rglob("last.ckpt"))
    cli = run_cli(["validate", *TINY_TEXT, "--ckpt_path", str(path), "--trainer.default_root_dir", str(tmp_path)])
    assert cli.trainer.state.finished and "val/acc" in cli.trainer.callback_metrics
    assert next(cli.model.backbone.model.base_model.parameters()).dtype == torch.float32
    torch.testing.assert_close(cli.model.prompt.embedding, fit.model.prompt.embedding)

    kwargs = {"dtype": "bfloat16", "revision": "a"}
    stored = {"backbone": {"class_path": "HFText", "init_args": {"model_kwargs": kwargs}}}
    other = {"backbone": {"class_path": "HFText", "init_args": {"model_kwargs": {"revision": "b"}}}}
    assert compare_hparams(stored, other) == ['backbone.init_args.model_kwargs.revision: checkpoint "a", config "b"']
    assert compare_hparams(stored, {"backbone": {"class_path": "HFText", "init_args": {}}}) == [
        'backbone.init_args.model_kwargs.revision: checkpoint "a", config null'
    ]


def test_a_validation_fraction_where_the_recipe_counts_steps_across_epochs_says_what_to_add(tmp_path, capsys):
    """DePT's, EPT's and POST's recipes validate every N steps across epochs (check_val_every_n_epoch null), where
    Lightning takes no fraction of an epoch; the message says which option to add."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *TINY, "--trainer.check_val_every_n_epoch", "null", "--trainer.val_check_interval", "0.5",
              "--trainer.default_root_dir", str(tmp_path / "run")])  # fmt: skip
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("lightning-prompts: error: --trainer.val_check_interval takes a number of training batches")
    assert last.endswith("also give --trainer.check_val_every_n_epoch 1.")
