"""The contract every registered method keeps, checked on its family's tiny backbone.

Parametrised over the registry: a new method is covered the moment it registers. Per method: only
its declared trainable tensors get gradients; its training objective is the cross-entropy of its logits or a
named test pins it; a checkpoint holds only trainable state and round-trips;
the exported prompt round-trips; ``check_ready`` names a field the method cannot fill; a bf16 autocast
step stays finite; and it composes with every registered loss term whose fields it has.
"""

from __future__ import annotations

import functools

import pytest
import torch
from tiny import CLASSNAMES, backbone, batch

from lightning_prompts import registry
from lightning_prompts.batch import MASK
from lightning_prompts.callbacks import LossTerm
from lightning_prompts.errors import ConfigurationError, MissingOutputFieldError
from lightning_prompts.outputs import OUTPUT_FIELDS

METHODS = registry.entries("method")
IDS = [entry.name for entry in METHODS]


def build(entry: registry.Entry, seed: int = 0):
    torch.manual_seed(seed)
    example = dict(entry.example)
    tiny = example.pop("contract_backbone", None)  # a method for one kind of backbone names it (POST: causal LM)
    return entry.load()(backbone(entry.family, tiny), CLASSNAMES, **example)


def trainable(module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def loss_of(module, family: str, fields=frozenset()):
    data = batch(family)
    output = module.compute_output(data, fields)
    return module.task_loss(output, module.batch_targets(data)), output, data


@pytest.mark.parametrize("entry", METHODS, ids=IDS)
def test_only_the_declared_trainable_tensors_get_gradients(entry):
    module = build(entry).train()
    params = trainable(module)
    grouped = {id(p) for group in module.param_groups() for p in group["params"]} if params else set()
    assert grouped == {id(p) for p in params.values()}  # every trainable tensor in exactly one group
    module._check_param_groups(module.param_groups()) if params else None
    loss, _, _ = loss_of(module, entry.family)
    if not params:  # zero-shot: nothing to train, nothing to differentiate
        assert not loss.requires_grad
        return
    loss.backward()
    with_grad = {name for name, p in module.named_parameters() if p.grad is not None}
    assert with_grad <= set(params), f"gradients reached frozen tensors: {with_grad - set(params)}"
    assert any(float(p.grad.abs().sum()) > 0 for p in params.values() if p.grad is not None)


@pytest.mark.parametrize("entry", METHODS, ids=IDS)
def test_checkpoint_holds_only_trainable_state_and_round_trips(entry):
    module = build(entry, seed=0).eval()
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert set(checkpoint["state_dict"]) == module.trainable_state_keys()
    backbone_keys = {k for k in checkpoint["state_dict"] if k.startswith("backbone.")}
    unfrozen = {f"backbone.{n}" for n, p in module.backbone.named_parameters() if p.requires_grad}
    assert backbone_keys <= unfrozen  # the frozen backbone never enters a checkpoint
    assert checkpoint["lightning_prompts"]["method"] == entry.name
    fresh = build(entry, seed=1).eval()
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"], strict=False)
    data = batch(entry.family)
    with torch.no_grad():
        assert torch.allclose(fresh.forward_batch(data).logits, module.forward_batch(data).logits, atol=1e-6)


@pytest.mark.parametrize("entry", METHODS, ids=IDS)
def test_exported_prompt_round_trips(entry, tmp_path):
    module = build(entry, seed=0).eval()
    path = module.export_prompt(tmp_path / "prompt.safetensors")
    fresh = build(entry, seed=1).eval()
    fresh.load_prompt(path)
    data = batch(entry.family)
    with torch.no_grad():
        assert torch.allclose(fresh.forward_batch(data).logits, module.forward_batch(data).logits, atol=1e-6)


@pytest.mark.parametrize("entry", METHODS, ids=IDS)
def test_check_ready_names_a_field_the_method_cannot_fill(entry):
    module = build(entry)
    missing = sorted(OUTPUT_FIELDS - module.output_fields)
    if not missing:
        pytest.skip(f"{entry.name} fills every output field")
    needs = type("NeedsField", (LossTerm,), {"required_fields": (missing[0],), "compute": lambda *a: None})
    with pytest.raises(
        MissingOutputFieldError, match=rf"NeedsField needs the output field '{missing[0]}'.*{entry.name}"
    ):
        module.check_ready("fit", [needs()], None)


@pytest.mark.parametrize("entry", METHODS, ids=IDS)
def test_a_bf16_autocast_step_stays_finite(entry):
    module = build(entry).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, output, _ = loss_of(module, entry.family)
    assert torch.isfinite(output.logits.float()).all() and torch.isfinite(loss)
    if trainable(module):
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in trainable(module).values() if p.grad is not None)


#: methods whose training objective is their own, not the default cross-entropy of their logits, and the test (file
#: of tests/methods/, name) that pins it to the official computation (or to the page's equations where no code exists)
OWN_OBJECTIVE = {
    "DPPromptTuning": (
        "test_dp_prompt_tuning.py",
        "test_a_training_step_moves_the_prompt_by_the_clipped_mean_gradient",
    ),
    "HetGPT": ("test_hetgpt.py", "test_logits_loss_and_class_tokens_follow_the_equations"),
    "LAE": (
        "test_lae.py",
        "test_logits_are_the_seen_heads_on_the_final_class_token_and_training_scores_the_current_task_only",
    ),
    "LAPT": ("test_lapt.py", "test_mixing_loss_is_ce_of_mixed_image_and_template_features"),
    "LocalPrompt": (
        "test_local_prompt.py",
        "test_the_training_loss_is_l_pos_plus_5_l_neg_plus_half_l_div_on_scaled_regional_logits",
    ),
    "MultiLane": (
        "test_multi_lane.py",
        "test_training_runs_the_current_lane_and_masks_the_loss_as_the_official_engine",
    ),
    "PANDA": ("test_panda.py", "test_loss_is_ce_plus_the_official_distillation_term"),
    "POST": (
        "test_post.py",
        "test_transfer_loss_reads_both_models_at_the_last_token_and_trains_only_the_target_prompt",
    ),
    "PTEC": ("test_ptec.py", "test_loss_is_class_weighted_bce_over_batch_and_classes"),
    "RELIEF": ("test_relief.py", "test_two_epochs_equal_the_official_training_loop"),
    "SequentialFineTuning": (
        "test_sequential_fine_tuning.py",
        "test_training_masks_other_tasks_and_the_whole_vit_learns",
    ),
}


@pytest.mark.parametrize("entry", METHODS, ids=IDS)
def test_the_training_objective_is_cross_entropy_or_a_named_test_pins_it(entry):
    """The loss a training step starts from is the cross-entropy of the logits (what CoOp's, VPT's, MaPLe's …
    official trainers minimise), checked here on the tiny batch; a method with its own objective names the test that
    pins it, so a new method cannot bring an unchecked loss."""
    from pathlib import Path

    import torch.nn.functional as F

    from lightning_prompts.methods.base import PromptModule

    assert set(OWN_OBJECTIVE) <= set(IDS)  # no stale name
    if entry.name in OWN_OBJECTIVE:
        file, name = OWN_OBJECTIVE[entry.name]
        assert f"def {name}(" in (Path(__file__).resolve().parents[1] / "methods" / file).read_text()
        return
    cls = entry.load()
    assert cls.training_step is PromptModule.training_step, f"{entry.name} trains its own way: name its test above"
    module = build(entry).train()
    loss, output, data = loss_of(module, entry.family)
    torch.testing.assert_close(loss, F.cross_entropy(output.logits.float(), module.batch_targets(data)))


class _Data:
    """A data module that declares masks in its batches (for terms that check for them)."""

    batch_keys = frozenset({MASK})


def loss_terms():
    terms = [entry for entry in registry.entries("callback") if issubclass(entry.load(), LossTerm)]
    return [(method, term) for method in METHODS for term in terms]


@pytest.mark.parametrize(("entry", "term_entry"), loss_terms(), ids=[f"{m.name}+{t.name}" for m, t in loss_terms()])
def test_composes_with_every_loss_term_whose_fields_it_has(entry, term_entry):
    module = build(entry).train()
    term = term_entry.load()(**term_entry.example)
    if type(term) in {type(own) for own in module.configure_callbacks()}:  # CoPrompt's consistency, DAPT's pull-push
        with pytest.raises(ConfigurationError, match="attaches .* itself"):  # a second copy would be dropped
            module.check_ready("fit", [term], _Data())
        return
    if not module.accepts_loss_terms:  # a method with its own training step refuses terms before training
        with pytest.raises((ConfigurationError, MissingOutputFieldError)):  # a missing field is named first
            module.check_ready("fit", [term], _Data())
        return
    if term.method_families is not None and entry.family not in term.method_families:
        with pytest.raises(ConfigurationError):  # a term for another family says so before training
            module.check_ready("fit", [term], _Data())
        return
    if not set(term.required_fields) <= module.output_fields:
        with pytest.raises(MissingOutputFieldError):
            module.check_ready("fit", [term], _Data())
        return
    module.check_ready("fit", [term], _Data())
    fields = module.check_output_fields([term])
    loss, output, data = loss_of(module, entry.family, fields)
    value = term(module, data, output)
    assert value.dim() == 0 and torch.isfinite(value)
    if trainable(module) and value.requires_grad:
        (loss + value).backward()


@functools.cache
def _text_state_method():
    from lightning_prompts.methods.base import CLIPPromptModule

    class DiscretePrompt(CLIPPromptModule):
        """A method whose trainable state is text (a discrete prompt optimiser's template)."""

        def __init__(self, *args, template: str = "a photo of a {}.", **kwargs):
            super().__init__(*args, **kwargs)
            self.template = template

        def text_state(self):
            return {"template": self.template}

        def load_text_state(self, state):
            self.template = state.get("template", self.template)

        def class_text_features(self):
            return self.encode_texts([self.template.format(name) for name in self.classnames])

        def image_features(self, images):
            return torch.nn.functional.normalize(self.backbone.encode_image(images).features, dim=-1)

    return DiscretePrompt


def test_a_method_whose_trainable_state_is_text_fits_checkpoints_and_export(tmp_path):
    cls = _text_state_method()
    tuned = cls(backbone("clip"), CLASSNAMES, template="a blurry photo of a {}.")
    checkpoint = {"state_dict": tuned.state_dict()}
    tuned.on_save_checkpoint(checkpoint)
    assert checkpoint["lightning_prompts"]["text_state"] == {"template": "a blurry photo of a {}."}
    restored = cls(backbone("clip"), CLASSNAMES)
    restored.on_load_checkpoint(checkpoint)
    assert restored.template == tuned.template
    exported = cls(backbone("clip"), CLASSNAMES)
    exported.load_prompt(tuned.export_prompt(tmp_path / "prompt.safetensors"))
    assert exported.template == tuned.template
