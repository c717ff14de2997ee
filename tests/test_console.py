"""The console script's own commands, as the README and docs give them: ``--help``, ``--version`` and ``list``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lightning_prompts import __version__, registry
from lightning_prompts.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_help_names_every_subcommand(capsys):
    main(["--help"])
    printed = capsys.readouterr().out
    for subcommand in ("fit", "validate", "test", "predict", "list", "export", "average"):
        assert f"\n  {subcommand} " in printed
    main(["--version"])
    assert capsys.readouterr().out.strip() == f"lightning-prompts {__version__}"


def test_list_methods_prints_one_line_per_registered_method(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["list", "methods"])
    assert exited.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines]
    assert names == [entry.name for entry in registry.entries("method", None)] and {"CoOp", "VPT", "GPF"} <= set(names)
    coop = lines[names.index("CoOp")]
    assert coop.split()[1] == "clip" and "fields: " in coop and "logits" in coop
    with pytest.raises(SystemExit):
        main(["list", "methods", "--family", "graph"])
    assert "CoOp" not in capsys.readouterr().out


def test_list_callbacks_names_what_each_loss_term_reads(capsys):
    with pytest.raises(SystemExit):
        main(["list", "callbacks"])
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    # its fields are set per instance (text/image switches); the listing shows the defaults' (it said "-")
    assert lines["ConsistencyRegularization"].endswith("needs: text_features, image_features, frozen_image_features")
    assert "needs: image_features, text_features" in lines["PullPushRegularization"]


def test_list_recipes_names_each_recipe_and_its_method(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit):
        main(["list", "recipes"])
    rows = dict(line.split()[:2] for line in capsys.readouterr().out.splitlines())
    assert rows["coop/caltech101.yaml"] == "CoOp" and rows["quickstart.yaml"] == "PromptTuning"
    assert not any(path.startswith("_") or "/_" in path for path in rows)  # fragments are not listed


def test_a_closed_pipe_ends_quietly():
    # `lightning-prompts list methods | head -1`: the reader is gone before the command prints
    child = subprocess.Popen(
        [sys.executable, "-c", "from lightning_prompts.cli import main; main(['list', 'methods'])"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    child.stdout.close()
    _, error = child.communicate(timeout=120)
    assert child.returncode == 1 and b"Traceback" not in error and b"BrokenPipeError" not in error
    assert b"torch.jit.script" not in error  # torch_geometric's deprecation notice is not the user's business


def test_only_our_constructors_argument_checks_become_one_line():
    """A ValueError from one of our constructors is a setting to change (one line); one raised anywhere else (a
    bug, a library's failure mid-run) keeps its traceback."""
    from lightning_prompts import CoOp, OpenCLIP
    from lightning_prompts.cli import describe_error

    with pytest.raises(ValueError) as ours:
        CoOp(OpenCLIP("tiny", pretrained=None), ["a", "b"], n_ctx=0)
    assert describe_error(ours.value) == "n_ctx must be a positive number of context vectors, got 0."
    with pytest.raises(ValueError) as library:
        int("x")
    assert describe_error(library.value) is None
    with pytest.raises(ValueError) as elsewhere:  # ours, but not a constructor's argument check
        registry.entries(kind="bogus")
    assert describe_error(elsewhere.value) is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["lists", "methods"], "unknown subcommand 'lists' (did you mean 'list'?)"),
        (["averge"], "unknown subcommand 'averge' (did you mean 'average'?)"),
        (["list", "methods", "--family", "vision"], "unknown family 'vision'; the families are clip, graph"),
        (["list", "recipes", "--family", "clip"], "--family filters registered classes, not recipes"),
        (["--config", "recipe.yaml", "fit"], "put the subcommand first: lightning-prompts fit --config"),
        (["list", "bogus"], "lightning-prompts: error: lightning-prompts list: argument kind: invalid choice: 'bogus'"),
        (["export", "--output", "x"], "lightning-prompts export: the following arguments are required: --ckpt_path"),
    ],
)
def test_a_mistyped_subcommand_or_family_is_one_error_line(args, message, capsys):
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 2
    printed = capsys.readouterr().err.strip().splitlines()
    assert len(printed) == 1 and message in printed[0], printed


def test_a_family_is_matched_whatever_its_case(capsys):
    with pytest.raises(SystemExit):
        main(["list", "methods", "--family", "CLIP"])
    listed = capsys.readouterr().out.splitlines()
    assert listed and all(line.split()[1] == "clip" for line in listed)
