"""Layer checkpointing of the text backbone (``HFText(gradient_checkpointing=True)``) changes memory, not results;
so does block checkpointing of the CLIP and ViT backbones (``OpenCLIP``/``TimmViT(gradient_checkpointing=True)``).

For every registered text method, on an encoder and on a decoder with sliding-window layers: the loss and every
trainable tensor's gradient equal the plain pass's bitwise (the recomputation is the same arithmetic), and the
step keeps fewer bytes for backward. Prefix tuning and P-tuning v2 enter through a key/value cache and IAPT
through token edits before every layer, the two ways checkpointing could silently change what a layer computes.
"""

from __future__ import annotations

import copy
import runpy
from pathlib import Path

import pytest
import torch
from test_methods import build, loss_of, trainable
from tiny import CLASSNAMES

from lightning_prompts import registry
from lightning_prompts.backbones import HFText
from lightning_prompts.errors import ConfigurationError

NOTHING_TO_TRAIN = {"NegLabel", "ZeroShotCLIP", "ZeroShotText"}  # zero-shot scoring: no gradient to compare
TEXT_METHODS = [
    entry for entry in registry.entries("method") if entry.family == "text" and entry.name not in NOTHING_TO_TRAIN
]
BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _saved_bytes():
    return runpy.run_path(str(BENCHMARKS / "saved_memory.py"))["saved_bytes"]


def _scaled_up(module: torch.nn.Module, std: float = 0.3) -> None:
    """Frozen weights large enough that the layers do more than pass their input on (and classes differ)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in module.backbone.model.named_parameters():
            if parameter.dim() == 2 and "embed" not in name and "wte" not in name and "wpe" not in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def _on_decoder(entry, model):
    """The method on the tiny decoder: as a causal LM (class words' next-token logits), or with a classification
    head on the last real token where the method trains a head (PTEC)."""
    example = dict(entry.example)
    example.pop("contract_backbone", None)
    torch.manual_seed(0)
    try:
        return entry.load()(HFText(model, task="causal-lm"), CLASSNAMES, **example)
    except ConfigurationError:
        backbone = HFText(model, task="sequence-classification", pooling="last")
        return entry.load()(backbone, CLASSNAMES, **example)


def _loss_and_gradients(module, family):
    module.zero_grad(set_to_none=True)
    loss, _, _ = loss_of(module, family)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in trainable(module).items() if p.grad is not None}


@pytest.mark.parametrize("model", ["tiny-bert", "tiny-gemma3"])
@pytest.mark.parametrize("entry", TEXT_METHODS, ids=[entry.name for entry in TEXT_METHODS])
def test_checkpointed_layers_give_the_plain_gradients_and_keep_less(entry, model):
    if entry.example.get("contract_backbone") and model == "tiny-bert":
        pytest.skip(f"{entry.name} runs on a causal LM only")
    plain = build(entry) if model == "tiny-bert" else _on_decoder(entry, model)
    plain = plain.train()
    _scaled_up(plain)
    checkpointed = copy.deepcopy(plain)
    checkpointed.backbone.gradient_checkpointing = True

    loss, gradients = _loss_and_gradients(plain, entry.family)
    checkpointed_loss, checkpointed_gradients = _loss_and_gradients(checkpointed, entry.family)
    assert gradients, f"{entry.name}: no trainable tensor got a gradient"
    assert torch.equal(checkpointed_loss, loss)
    assert checkpointed_gradients.keys() == gradients.keys()
    for name, gradient in gradients.items():
        torch.testing.assert_close(checkpointed_gradients[name], gradient, rtol=0, atol=0, msg=name)

    saved_bytes = _saved_bytes()
    kept = saved_bytes(lambda: loss_of(plain, entry.family)[0], plain)
    kept_checkpointed = saved_bytes(lambda: loss_of(checkpointed, entry.family)[0], checkpointed)
    assert kept_checkpointed < kept


VISION_METHODS = [
    entry
    for entry in registry.entries("method")
    if entry.family in ("clip", "vit") and entry.name not in NOTHING_TO_TRAIN
]
#: methods whose trained tensors all sit after the towers: no block records anything for them, checkpointed or not.
#: Every other method's checkpointed step keeps strictly less (the shared-prefix text pass and MULTI-LANE's side
#: stream included)
AFTER_THE_TOWERS = {"CLIPAdapter", "ConES"}


def _scaled_up_vision(module: torch.nn.Module, std: float = 0.3) -> None:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in module.backbone.model.parameters():
            if parameter.dim() == 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std / parameter.shape[1] ** 0.5)


@pytest.mark.parametrize("entry", VISION_METHODS, ids=[entry.name for entry in VISION_METHODS])
def test_checkpointed_clip_and_vit_blocks_give_the_plain_gradients(entry):
    plain = build(entry).train()
    assert trainable(plain), f"{entry.name} trains nothing: list it in NOTHING_TO_TRAIN"
    _scaled_up_vision(plain)
    checkpointed = copy.deepcopy(plain)
    assert checkpointed.backbone.gradient_checkpointing is False
    checkpointed.backbone.gradient_checkpointing = True

    torch.manual_seed(0)  # the same draws for both (LAPT mixes with a random λ)
    loss, gradients = _loss_and_gradients(plain, entry.family)
    torch.manual_seed(0)
    checkpointed_loss, checkpointed_gradients = _loss_and_gradients(checkpointed, entry.family)
    assert torch.equal(checkpointed_loss, loss)
    assert checkpointed_gradients.keys() == gradients.keys()
    for name, gradient in gradients.items():
        torch.testing.assert_close(checkpointed_gradients[name], gradient, rtol=0, atol=0, msg=name)

    saved_bytes = _saved_bytes()
    torch.manual_seed(0)
    kept = saved_bytes(lambda: loss_of(plain, entry.family)[0], plain)
    torch.manual_seed(0)
    kept_checkpointed = saved_bytes(lambda: loss_of(checkpointed, entry.family)[0], checkpointed)
    if entry.name in AFTER_THE_TOWERS:
        assert kept_checkpointed == kept
    else:
        assert kept_checkpointed < kept
