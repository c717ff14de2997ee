"""The Python snippets of the methods' docs pages run, on the tiny models instead of the hub ids they name
(and, where a page's sizes need a real model's context, sizes that fit the tiny one)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from helpers import docs_python

from lightning_prompts.backbones import HFText
from lightning_prompts.methods import PrefixTuning, PromptTuning

WORDS = ["teapot", "volcano", "violin", "glacier", "lantern"]  # NegLabel's word list, 150 entries
PAGES = Path(__file__).resolve().parents[1] / "docs" / "methods"
MODELS = {'"gpt2-large"': '"tiny-gpt2"', '"gpt2"': '"tiny-gpt2"', '"huggyllama/llama-7b"': '"tiny-gpt2"'}
MODELS['"bert-base-uncased"'] = '"tiny-bert"'
MODELS['"t5-base"'] = '"tiny-t5"'
TINY_CLIP = 'OpenCLIP("tiny", pretrained=None)'
MODELS |= {f'OpenCLIP("{name}", pretrained="openai")': TINY_CLIP for name in ("ViT-B-16-quickgelu", "RN50-quickgelu")}
MODELS['TimmViT("vit_base_patch16_224.orig_in21k")'] = 'TimmViT("tiny")'
# budgets and lengths of BERT-base (d = 768, 512 positions) that the tiny models (d = 32, 128) cannot hold
SIZES = {
    "dept": {"budget_tokens=100": "budget_tokens=40", "rank=30": "rank=2", "max_length=256": "max_length=64"},
    "ept": {"budget_tokens=100": "budget_tokens=40", "rank=30": "rank=2", "max_length=256": "max_length=64"},
    "idp": {"num_virtual_tokens=20": "num_virtual_tokens=4"},
}


def blocks(page: str) -> list[str]:
    code = docs_python(PAGES / f"{page}.md")
    assert code, f"docs/methods/{page}.md has no Python block"
    out = []
    for block in code:
        for old, new in {**MODELS, **SIZES.get(page, {})}.items():
            block = block.replace(old, new)
        out.append(block)
    return out


def prompt_file(path: str, seed: int = 0) -> None:
    method = PromptTuning(
        HFText("tiny-gpt2", task="causal-lm"), ["negative", "positive"], num_virtual_tokens=3, seed=seed
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    method.export_prompt(path, prefix="prompt.")


CLASSES = {"prefix_tuning": "PrefixTuning", "dept": "DePT", "ept": "EPT", "idp": "IDP", "iapt": "IAPT"}
CLASSES |= {"ptec": "PTEC", "post": "POST", "prompt_tuning": "PromptTuning"}
CLASSES |= {"coop": "CoOp", "clip_adapter": "CLIPAdapter", "cones": "ConES", "coprompt": "CoPrompt", "dapt": "DAPT"}
CLASSES |= {"maple": "MaPLe", "neglabel": "NegLabel", "vpt": "VPT", "zero_shot_clip": "ZeroShotCLIP"}
CLASSES |= {"zero_shot_text": "ZeroShotText"}


@pytest.mark.parametrize("page", list(CLASSES))
def test_the_use_snippet_builds_the_method(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for index, name in enumerate(["news", "reviews", "forums"]):  # IDP's bank
        prompt_file(f"{name}.safetensors", seed=index)
    prompt_file("outputs/post/source_prompt.safetensors")  # POST's source
    descriptions = {
        name: [f"a {name} texture.", f"a surface that is {name}."] for name in ["banded", "blotchy", "braided"]
    }
    (tmp_path / "gpt_file").mkdir()
    (tmp_path / "gpt_file" / "dtd_prompt.json").write_text(json.dumps(descriptions))  # CoPrompt's teacher text
    (tmp_path / "wordnet_nouns.txt").write_text("\n".join(f"{word}{k}" for word in WORDS for k in range(30)))
    (tmp_path / "wordnet_adjectives.txt").write_text("\n".join(f"{word}ish{k}" for word in WORDS for k in range(10)))
    namespace: dict = {}
    exec(blocks(page)[0], namespace)
    assert type(namespace["model"]).__name__ == CLASSES[page]
    if page in ("prefix_tuning", "prompt_tuning"):
        assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    if page == "zero_shot_text":  # the page's printed prediction, on the real MiniLM it names
        model, tokens = namespace["model"], namespace["tokens"]
        assert model(tokens["input_ids"], tokens["attention_mask"]).logits.argmax(dim=1).tolist() == [1, 0]
    if page == "neglabel":
        model = namespace["model"]  # 10,000 asked: all 150 nouns and 50 adjectives kept, the adjectives last
        assert len(model.negative_labels) == 200 and model.negative_labels[150:] == model.negative_adjectives
        assert len(model.negative_adjectives) == 50 and model.templates == ["the nice {}"]


def test_ptec_trie_snippet_generates_class_names():
    backbone = HFText("tiny-gpt2", task="causal-lm")
    tokenizer, classnames = backbone.tokenizer, ["race", "religion", "age"]
    inputs = tokenizer(["targets of the post:"], return_tensors="pt")
    namespace = {
        "tokenizer": tokenizer,
        "classnames": classnames,
        "separator_id": tokenizer(",", add_special_tokens=False)["input_ids"][0],
        "prompt_length": inputs["input_ids"].shape[1],
        "inputs": dict(inputs),
        "model": backbone.model.eval(),
    }
    tokenizer.eos_token = tokenizer.sep_token  # the tiny tokenizer has no end-of-sequence token of its own
    with torch.no_grad():
        exec(blocks("ptec")[1], namespace)
    assert namespace["labels"] and all(set(labels) <= {0, 1, 2} for labels in namespace["labels"])


def test_dept_generation_snippet_decodes_with_t5(capsys):
    namespace: dict = {}
    exec(blocks("dept")[1], namespace)
    assert namespace["t5"].backbone.task == "seq2seq-lm"
    printed = ast.literal_eval(capsys.readouterr().out.strip())
    assert isinstance(printed, list) and len(printed) == 1 and isinstance(printed[0], str)  # one decoded output


def test_panda_transferability_snippet(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    method = PrefixTuning(HFText("tiny-bert"), ["entailment", "contradiction", "neutral"], num_virtual_tokens=2)
    for seed, name in enumerate(["mnli", "cb", "sst2"]):
        other = PrefixTuning(HFText("tiny-bert"), method.classnames, num_virtual_tokens=2, seed=seed)
        other.export_prompt(f"{name}.safetensors", prefix="prefix.")
    namespace = {"method": method.eval(), "cb_texts": ["a premise and a hypothesis", "another pair"]}
    exec(blocks("panda")[0], namespace)
    assert -1.0 <= namespace["beta"] <= 1.0 and [name for name, _ in namespace["ranking"]] != []


def test_gpf_molecule_snippet(tmp_path, monkeypatch):
    pytest.importorskip("rdkit")
    from lightning_prompts.backbones.molecule_gin import MoleculeGINEncoder

    monkeypatch.chdir(tmp_path)
    csv = tmp_path / "data" / "moleculenet" / "bbbp" / "raw" / "BBBP.csv"
    csv.parent.mkdir(parents=True)
    molecules = (Path(__file__).resolve().parents[1] / "recipes" / "_tiny" / "molecules.csv").read_text().splitlines()
    csv.write_text(
        "\n".join(
            ["num,name,p_np,smiles", *(f"{i},m{i},{i % 2},{row.split(',')[0]}" for i, row in enumerate(molecules[1:]))]
        )
        + "\n"
    )
    checkpoint = tmp_path / "checkpoints" / "gpf" / "contextpred.pth"
    checkpoint.parent.mkdir(parents=True)
    torch.save(MoleculeGINEncoder(5, 300).state_dict(), checkpoint)  # the released files' layout and size
    namespace: dict = {}
    exec(blocks("gpf")[1], namespace)
    model, data = namespace["model"], namespace["data"]
    assert type(model).__name__ == "GPF" and data.classnames == ["p_np"] and model.objective == "masked_bce"


def test_idpt_snippet(tmp_path, monkeypatch):
    from lightning_prompts.backbones.point_mae import PointMAE

    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data" / "ModelNet" / "modelnet40_normal_resampled"
    root.mkdir(parents=True)
    (root / "modelnet40_shape_names.txt").write_text("airplane\nbathtub\n")
    checkpoint = tmp_path / "checkpoints" / "point_mae" / "pretrain.pth"
    checkpoint.parent.mkdir(parents=True)
    tiny = {"width": 16, "depth": 12, "num_heads": 2}
    state = {f"module.MAE_encoder.{k}": v for k, v in PointMAE(**tiny).model.state_dict().items()}
    torch.save({"base_model": state}, checkpoint)
    block = blocks("idpt")[0].replace("num_patches=64)", "num_patches=64, width=16, num_heads=2)")
    namespace: dict = {}
    exec(block, namespace)
    assert type(namespace["model"]).__name__ == "IDPT" and type(namespace["baseline"]).__name__ == "PointVPT"
    assert namespace["model"].classnames == ["airplane", "bathtub"]


def test_dvpt_snippet():
    block = blocks("dvpt")[0].replace('TimmViT("vit_base_patch16_224.orig_in21k")', 'TimmViT("tiny")')
    namespace: dict = {}
    exec(block, namespace)
    model = namespace["model"]
    assert type(model).__name__ == "DVPT" and len(model.classnames) == 5
    assert model.resolve_evaluator(None).monitor == ("val/kappa", "max")


def test_apt_snippet():
    block = blocks("apt")[0].replace('TimmViT("vit_base_patch16_224.orig_in21k")', 'TimmViT("tiny")')
    namespace: dict = {"classnames": ["cat", "dog"]}
    exec(block.replace("num_tokens=50", "num_tokens=8"), namespace)
    assert type(namespace["model"]).__name__ == "APT" and len(namespace["model"].prompt) == 3


def test_lapt_snippet(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    words = tmp_path / "data" / "ood" / "wordnet_nouns.txt"
    words.parent.mkdir(parents=True)
    words.write_text("\n".join(["teapot", "volcano", "violin", "glacier", "anvil", "harbor", "kettle"]) + "\n")
    (words.parent / "wordnet_adjectives.txt").write_text("red\nshiny\nwooden\n")
    block = blocks("lapt")[0].replace('OpenCLIP("ViT-B-16", pretrained="openai")', 'OpenCLIP("tiny", pretrained=None)')
    namespace: dict = {}
    exec(block.replace("count=1000", "count=4").replace("negative_groups=10", "negative_groups=2"), namespace)
    model = namespace["model"]
    assert type(model).__name__ == "LAPT" and len(model.negative_labels) == 4
    assert len(namespace["adjectives"]) == int(4 * 3 / 10) == 1
    assert model.prompt.classnames == ["goldfish", "tabby cat", "golden retriever"]


def test_local_prompt_snippet():
    block = blocks("local_prompt")[0].replace(
        'OpenCLIP("ViT-B-16", pretrained="openai")', 'OpenCLIP("tiny", pretrained=None)'
    )
    namespace: dict = {}
    exec(block.replace("num_negative_prompts=300", "num_negative_prompts=5"), namespace)
    model = namespace["model"]
    assert type(model).__name__ == "LocalPrompt" and model.negative_prompt.ctx.shape[:2] == (5, 16)
    assert model.prompt.ctx.shape[:2] == (3, 16) and (model.top_k, model.test_top_k) == (50, 10)


def test_mvpt_snippet():
    block = blocks("mvpt")[0].replace('OpenCLIP("ViT-B-16", pretrained="openai")', 'OpenCLIP("tiny", pretrained=None)')
    namespace: dict = {}
    exec(block, namespace)
    model = namespace["model"]
    assert type(model).__name__ == "MVPT" and model.prompt.deep_tokens.shape[:2] == (11, 16)


def test_mupt_snippet():
    block = blocks("mupt")[0].replace('OpenCLIP("ViT-B-16", pretrained="openai")', 'OpenCLIP("tiny", pretrained=None)')
    namespace: dict = {}
    exec(block, namespace)
    model = namespace["model"]
    assert type(model).__name__ == "MUPT" and model.prompt.ctx.shape[0] == 4
    assert model.visual_prompt.deep_tokens.shape[:2] == (11, 4)
