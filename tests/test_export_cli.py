"""``lightning-prompts export``: the trained prompt leaves a command-line run without Python, and what it
writes loads back into our method (safetensors) and into Hugging Face PEFT (adapter folder)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from lightning_prompts.cli import main, run_cli

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
ONE_EPOCH = ["--trainer.fast_dev_run=false", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2"]


def fit(recipe: str, overlay: str, tmp_path: Path, *extra: str):
    cli = run_cli(
        ["fit", "--config", str(RECIPES / recipe), "--config", str(RECIPES / "_tiny" / overlay), *ONE_EPOCH, *extra]
        + ["--trainer.default_root_dir", str(tmp_path)]
    )
    return cli.model.eval(), tmp_path / "checkpoints" / "last.ckpt"


def export(checkpoint: Path, *extra: str, capsys) -> list[str]:
    capsys.readouterr()  # what fit printed
    with pytest.raises(SystemExit) as done:
        main(["export", "--ckpt_path", str(checkpoint), *extra])
    assert done.value.code == 0
    return capsys.readouterr().out.split()


def test_export_a_coop_prompt_and_load_it_into_a_fresh_method(tmp_path, capsys):
    from lightning_prompts import CoOp

    trained, checkpoint = fit("coop/caltech101.yaml", "clip.yaml", tmp_path)
    written = export(checkpoint, "--output", str(tmp_path / "coop.safetensors"), capsys=capsys)
    assert written == [str(tmp_path / "coop.safetensors")]
    assert Path(written[0]).stat().st_mode & 0o777 == 0o644  # readable by the people it is shared with
    fresh = CoOp(trained.backbone, trained.classnames, n_ctx=trained.prompt.ctx.shape[0]).eval()
    assert not torch.equal(fresh.prompt.ctx, trained.prompt.ctx)
    fresh.load_prompt(written[0])
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh(images).logits, trained(images).logits)


def test_export_prompt_tuning_to_peft_and_peft_scores_as_we_do(tmp_path, capsys):
    trained, checkpoint = fit(
        "prompt_tuning/sst2.yaml", "text.yaml", tmp_path, "--model.init_args.param_group_lr.head=0.5"
    )
    adapter = tmp_path / "adapter"
    written = export(
        checkpoint, "--output", str(tmp_path / "prompt.safetensors"), "--peft", str(adapter), capsys=capsys
    )
    assert written == [str(tmp_path / "prompt.safetensors"), str(adapter)]
    assert (adapter / "adapter_config.json").is_file()
    base = copy.deepcopy(trained.backbone.model)
    with torch.no_grad():  # PEFT must take the trained head from the adapter, not from this copy
        for head in base.classifier.parameters():
            head.zero_()
    peft_model = PeftModel.from_pretrained(base, str(adapter)).eval()
    tokens = trained.tokenize(["a fine film", "dull and slow, the worst"])
    with torch.no_grad():
        ours = trained(tokens["input_ids"], tokens["attention_mask"]).logits
        theirs = peft_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.allclose(ours[:, 0], ours[:, 1])  # the classes score differently: the check can fail


def test_export_a_dp_prompt_as_posts_source(tmp_path, capsys):
    """The DP page's export command: the private prompt leaves the checkpoint, and POST reads it as its source."""
    from lightning_prompts.backbones.hf_text import HFText
    from lightning_prompts.methods import POST

    trained, checkpoint = fit("dp_prompt_tuning/sst2_gpt2.yaml", "text_short_prompt.yaml", tmp_path)
    assert type(trained).__name__ == "DPPromptTuning"
    output = tmp_path / "outputs" / "post" / "source_prompt.safetensors"
    output.parent.mkdir(parents=True)
    assert export(checkpoint, "--output", str(output), capsys=capsys) == [str(output)]
    source = HFText("tiny-gpt2", task="causal-lm")
    post = POST(source, trained.classnames, source_backbone=source.config(), source_prompt=str(output))
    torch.testing.assert_close(post.source_prompt_embedding(), trained.prompt().detach())


def refused(args: list[str], capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["export", *args])
    assert done.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_export_refuses_targets_it_would_damage_and_writes_nothing(tmp_path, capsys, monkeypatch):
    """--peft once deleted the folder it was given (--peft . emptied the working folder); a CLIP checkpoint with
    --peft, or --output naming a folder, failed only after the prompt file was written."""
    _, text_checkpoint = fit("prompt_tuning/sst2.yaml", "text.yaml", tmp_path / "text")
    _, clip_checkpoint = fit("coop/caltech101.yaml", "clip.yaml", tmp_path / "clip")
    precious = tmp_path / "precious"
    (precious / "sub").mkdir(parents=True)
    (precious / "notes.txt").write_text("keep me")
    monkeypatch.chdir(precious)
    prompt = tmp_path / "prompt.safetensors"
    cases = [
        (["--ckpt_path", str(text_checkpoint), "--output", str(prompt), "--peft", str(precious)], "holds other files"),
        (["--ckpt_path", str(text_checkpoint), "--output", str(prompt), "--peft", "."], "holds other files"),
        (["--ckpt_path", str(text_checkpoint), "--output", str(prompt), "--peft", "notes.txt"], "is a file"),
        (["--ckpt_path", str(clip_checkpoint), "--output", str(prompt), "--peft", "adapter"], "CoOp has no PEFT"),
        (["--ckpt_path", str(clip_checkpoint), "--output", str(precious)], "is a folder"),
    ]
    cases.append((["--ckpt_path", "best", "--output", str(prompt)], "<run>/checkpoints/best.ckpt"))
    for args, culprit in cases:
        assert culprit in refused(args, capsys)
        assert not prompt.exists() and not (precious / "adapter").exists()
    assert sorted(p.name for p in precious.iterdir()) == ["notes.txt", "sub"]
    assert (precious / "notes.txt").read_text() == "keep me"
    # an adapter folder written before is replaced whole
    adapter = tmp_path / "adapter"
    export(text_checkpoint, "--output", str(prompt), "--peft", str(adapter), capsys=capsys)
    written = export(text_checkpoint, "--output", str(prompt), "--peft", str(adapter), capsys=capsys)
    assert written[-1] == str(adapter) and sorted(p.name for p in adapter.iterdir()) == sorted(
        ["adapter_config.json", "adapter_model.safetensors"]
    )


def fit_for_export(recipe: Path, tmp_path: Path, *options: str) -> Path:
    from test_recipes import overlay_for

    run_cli(["fit", "--config", str(recipe), "--config", str(overlay_for(recipe)), *options,
             "--trainer.fast_dev_run=false", "--trainer.max_epochs=1", "--trainer.limit_train_batches=1",
             "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0",
             "--trainer.default_root_dir", str(tmp_path / "run")])  # fmt: skip
    return next((tmp_path / "run").rglob("last.ckpt"))


@pytest.mark.parametrize(
    "recipe, options",
    [
        ("idpt/modelnet40.yaml", []),
        ("point_vpt/modelnet40.yaml", []),
        ("point_linear_probe/modelnet40.yaml", []),
        ("ptec/hatespeech_llama7b.yaml", ["--trainer.callbacks=[]"]),
    ],  # fmt: skip
)
def test_export_rebuilds_point_methods_and_ptec_from_their_checkpoints(recipe, options, tmp_path, monkeypatch, capsys):
    """The point methods read their backbone's width and depth before it was built from the checkpoint's stored
    config ('dict' object has no attribute 'width'); PTEC got label_words twice (found by exporting every recipe
    folder's method)."""
    from helpers import run_from_scratch_root
    from safetensors.torch import load_file

    run_from_scratch_root(tmp_path, monkeypatch)
    last = fit_for_export(RECIPES / recipe, tmp_path, *options)
    assert export(last, "--output", str(tmp_path / "prompt.safetensors"), capsys=capsys)
    exported = load_file(str(tmp_path / "prompt.safetensors"))
    stored = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    assert exported and all(torch.equal(exported[key], stored[key]) for key in exported)


def test_export_of_a_pre_training_checkpoint_says_where_its_output_is(tmp_path, monkeypatch):
    from helpers import run_from_scratch_root

    from lightning_prompts.errors import ConfigurationError
    from lightning_prompts.export.checkpoint import export_checkpoint

    run_from_scratch_root(tmp_path, monkeypatch)
    encoder = fit_for_export(RECIPES / "graphcl" / "cora.yaml", tmp_path / "graphcl")
    with pytest.raises(ConfigurationError, match="encoder_path"):
        export_checkpoint(encoder, tmp_path / "x.safetensors")
    student = fit_for_export(RECIPES / "post" / "distill_gemma3_270m.yaml", tmp_path / "post")
    with pytest.raises(ConfigurationError, match="student_path"):
        export_checkpoint(student, tmp_path / "x.safetensors")


def test_export_prefix_writes_the_source_prompt_panda_transfers(tmp_path, capsys):
    """docs/methods/panda.md's stage 1: the prefixes of a PrefixTuning run without its head."""
    from safetensors.torch import load_file

    trained, checkpoint = fit("prefix_tuning/cb_bert_large.yaml", "text.yaml", tmp_path)
    output = tmp_path / "mnli.safetensors"
    assert export(checkpoint, "--output", str(output), "--prefix", "prefix.", capsys=capsys) == [str(output)]
    written = load_file(str(output))
    expected = {key for key in trained.trainable_state_keys() if key.startswith("prefix.")}
    assert set(written) == expected and expected and len(expected) < len(trained.trainable_state_keys())
    for key, tensor in written.items():
        assert torch.equal(tensor, trained.state_dict()[key])
    line = refused(["--ckpt_path", str(checkpoint), "--output", str(tmp_path / "x.safetensors"), "--prefix", "no."],
                   capsys)  # fmt: skip
    assert "--prefix 'no.'" in line and not (tmp_path / "x.safetensors").exists()
