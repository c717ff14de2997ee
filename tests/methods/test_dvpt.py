"""DVPT (no official code): the prompt module's equations, both merges against block-by-block
re-computations on timm's pieces, and quadratic-weighted kappa against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from lightning_prompts.evaluation.graded import GradedClassificationEvaluator
from lightning_prompts.methods.dvpt import DVPT
from lightning_prompts.prompts.dynamic_query import DynamicQueryPrompt

CLASSES = ["grade 0", "grade 1", "grade 2"]


def randomised(method: DVPT) -> DVPT:
    torch.manual_seed(3)
    with torch.no_grad():
        for param in [*method.prompt.parameters(), *method.head.parameters()]:
            param.normal_(0, 0.5)
    return method.eval()


def prompts_by_equation(module: DynamicQueryPrompt, tokens: torch.Tensor) -> torch.Tensor:
    """Z = GELU(X W_down + b), O = softmax(Q Zᵀ/√r) Z, P = O W_up + b, written out per image."""
    r = module.queries.shape[1]
    out = []
    for x in tokens:
        z = F.gelu(x @ module.down.weight.t() + module.down.bias)
        o = torch.softmax(module.queries @ z.t() / math.sqrt(r), dim=-1) @ z
        out.append(o @ module.up.weight.t() + module.up.bias)
    return torch.stack(out)


def test_prompt_module_follows_its_equations():
    module = DynamicQueryPrompt(width=12, bottleneck=4, num_queries=3)
    with torch.no_grad():
        for param in module.parameters():
            param.normal_()
    tokens = torch.randn(2, 7, 12)
    assert module(tokens).shape == (2, 3, 12)
    torch.testing.assert_close(module(tokens), prompts_by_equation(module, tokens))
    fresh = DynamicQueryPrompt(width=12, bottleneck=4, num_queries=3)
    assert torch.equal(fresh(tokens), torch.zeros(2, 3, 12))  # zero up-projection: the same prompts for all


def embedded(vit, images):
    model = vit.model
    return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))  # [CLS, patches] + pos


def test_token_merge_replaces_the_slot_with_prompts_of_each_blocks_input(tiny_vit):
    method = randomised(DVPT(tiny_vit, CLASSES, bottleneck=8, num_queries=2, merge="tokens"))
    images = torch.randn(2, 3, 32, 32)
    x = embedded(tiny_vit, images)
    for block in tiny_vit.model.blocks:
        frozen = x if x.shape[1] == 17 else torch.cat([x[:, :1], x[:, 3:]], dim=1)  # drop the previous prompts
        prompts = prompts_by_equation(method.prompt, frozen)
        x = block(torch.cat([frozen[:, :1], prompts, frozen[:, 1:]], dim=1))
    cls = tiny_vit.model.norm(x)[:, 0]
    output = method.forward_batch({"image": images})
    torch.testing.assert_close(output.pooled_features, cls, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(output.logits, method.head(cls), rtol=1e-4, atol=1e-5)
    assert output.logits.std() > 0.1


def test_side_merge_refines_queries_over_the_untouched_vit(tiny_vit):
    method = randomised(DVPT(tiny_vit, CLASSES, bottleneck=8, num_queries=2, merge="side"))
    images = torch.randn(2, 3, 32, 32)
    x, module = embedded(tiny_vit, images), method.prompt
    state = module.queries.expand(2, -1, -1)
    for block in tiny_vit.model.blocks:
        z = F.gelu(x @ module.down.weight.t() + module.down.bias)
        state = state + torch.softmax(state @ z.transpose(1, 2) / math.sqrt(8), dim=-1) @ z
        x = block(x)
    cls = tiny_vit.model.norm(x)[:, 0]
    prompts = (state @ module.up.weight.t() + module.up.bias).mean(dim=1)
    expected = torch.cat([cls, prompts], dim=-1) @ method.head.weight.t() + method.head.bias
    torch.testing.assert_close(method.forward_batch({"image": images}).logits, expected, rtol=1e-4, atol=1e-5)
    method.train()
    method.task_loss(method.forward_batch({"image": images}), torch.tensor([0, 2])).backward()
    assert module.queries.grad is not None and module.down.weight.grad is not None
    with pytest.raises(ValueError, match="merge must be"):
        DVPT(tiny_vit, CLASSES, merge="concat")


@pytest.mark.parametrize("weights", ["quadratic", "linear"])
def test_weighted_kappa_matches_a_hand_computation(tiny_vit, weights):
    evaluator = GradedClassificationEvaluator(weights=weights)
    method = DVPT(tiny_vit, CLASSES, bottleneck=8, num_queries=2)
    evaluator.start(method, "val")
    predicted, truth = torch.tensor([0, 1, 2, 2, 0, 1]), torch.tensor([0, 2, 2, 1, 0, 0])
    evaluator.update(method, None, F.one_hot(predicted, 3).float(), truth, "val", 0)
    metrics = evaluator.finish(method, "val")
    # kappa = 1 - Σ w O / Σ w E, w_ij = (i - j)² / (K - 1)² (linear: |i - j| / (K - 1)), E = outer(row and column
    # totals) / n
    observed = torch.zeros(3, 3)
    for t, p in zip(truth, predicted):
        observed[t, p] += 1
    expected = observed.sum(1, keepdim=True) @ observed.sum(0, keepdim=True) / observed.sum()
    power = 2 if weights == "quadratic" else 1
    w = torch.tensor([[abs(i - j) ** power / 2**power for j in range(3)] for i in range(3)])
    kappa = 1 - (w * observed).sum() / (w * expected).sum()
    assert metrics["val/kappa"].item() == pytest.approx(kappa.item(), abs=1e-6)
    assert metrics["val/acc"].item() == pytest.approx(3 / 6)
