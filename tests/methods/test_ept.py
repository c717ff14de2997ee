"""EPT: DePT + prompt fusion + gated multi-space projection, pinned to the equations we chose."""

from __future__ import annotations

import math

import torch

from lightning_prompts.backbones import HFText
from lightning_prompts.methods import EPT, DePT
from lightning_prompts.methods.ept import GatedMultiSpaceProjection, prompt_fusion

TEXTS = ["the film was great and moving", "dull", "an awful, tedious and clumsy film"]


def test_fusion_and_projection_equations():
    generator = torch.Generator().manual_seed(0)
    prompt, knowledge = torch.randn(3, 8, generator=generator), torch.randn(5, 8, generator=generator)
    scores = prompt @ knowledge.T / math.sqrt(8)
    expected = prompt + torch.softmax(scores, -1) @ knowledge
    assert torch.allclose(prompt_fusion(prompt, knowledge), expected, atol=1e-6)
    assert torch.equal(prompt_fusion(prompt, torch.zeros(5, 8)), prompt)  # B = 0: nothing fused
    projection = GatedMultiSpaceProjection(8, spaces=3, rank=2, generator=generator)
    assert torch.equal(projection(prompt), prompt)  # V = 0 at initialisation
    with torch.no_grad():
        projection.V.normal_(0, 1, generator=generator)
    gates = torch.softmax(projection.gate.weight @ prompt.mean(0) + projection.gate.bias, -1)
    by_hand = prompt + sum(gates[k] * prompt @ projection.U[k] @ projection.V[k] for k in range(3))
    assert torch.allclose(projection(prompt), by_hand, atol=1e-5)
    assert torch.allclose(gates.sum(), torch.tensor(1.0))


def test_at_initialisation_ept_is_dept_then_the_enriched_prompt_enters():
    backbone = HFText("tiny-bert")
    ept = EPT(backbone, ["neg", "pos"], num_virtual_tokens=3, rank=4, max_length=48, spaces=2, space_rank=2).eval()
    dept = DePT(backbone, ["neg", "pos"], num_virtual_tokens=3, rank=4, max_length=48).eval()
    dept.load_state_dict({k: v for k, v in ept.state_dict().items() if not k.startswith("projection")}, strict=False)
    tokens = ept.tokenize(TEXTS)
    with torch.no_grad():
        backbone.model.classifier.weight.normal_(0, 1)
        assert torch.allclose(ept(**tokens).logits, dept(**tokens).logits, atol=1e-6)
        ept.offset.B.normal_(0, 1)
        ept.projection.V.normal_(0, 0.1)
        enriched = ept.projection(prompt_fusion(ept.prompt.embedding, ept.offset()))
        expected = backbone.forward_embeddings(
            enriched, **tokens, input_offset=ept.offset(tokens["input_ids"].shape[1])
        )
        assert torch.allclose(ept(**tokens).logits, expected.logits, atol=1e-6)
        assert not torch.allclose(enriched, ept.prompt.embedding)


def test_budget_counts_the_projection_and_groups_train_it_at_its_own_rate():
    ept = EPT(HFText("tiny-bert"), ["neg", "pos"], budget_tokens=30, rank=2, max_length=64, spaces=2, space_rank=2)
    counted = sum(p.numel() for p in [*ept.prompt.parameters(), *ept.offset.parameters(), *ept.projection.parameters()])
    assert counted <= 30 * 32
    groups = {group["name"]: group for group in ept.param_groups()}
    assert [p is ept.prompt.embedding for p in groups["prompt"]["params"]] == [True]
    assert {id(p) for p in groups["projection"]["params"]} == {id(p) for p in ept.projection.parameters()}
    assert groups["projection"]["lr"] == groups["offset"]["lr"] == ept.offset_lr  # the low-rank matrices' rate
    assert {id(p) for p in groups["offset"]["params"]} == {id(ept.offset.A), id(ept.offset.B)}
    mine = EPT(HFText("tiny-bert"), ["neg", "pos"], rank=2, max_length=64, spaces=2, space_rank=2, projection_lr=1e-3)
    assert {g["name"]: g.get("lr") for g in mine.param_groups()}["projection"] == 1e-3
    loss = ept(**ept.tokenize(TEXTS)).logits.sum()
    loss.backward()
    assert ept.prompt.embedding.grad.abs().sum() > 0 and ept.projection.gate.weight.grad is not None
