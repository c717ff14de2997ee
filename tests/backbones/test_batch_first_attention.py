"""Batch-first self-attention projected on the batch-first tokens: PyTorch's arithmetic, without the per-position
products ``nn.MultiheadAttention`` runs on its transposed view when the tokens need gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_prompts.backbones.batch_first_attention import projected_batch_first


class OpNames(TorchDispatchMode):
    """The names of the operations dispatched while active (forward and backward), and how many were products
    against a weight broadcast over the batch (a ``bmm`` operand of stride 0 in its batch dimension): the products
    per position ``nn.MultiheadAttention`` runs on its transposed view. (A plain ``bmm``, as a math attention
    kernel uses on some machines, is not one.)"""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []
        self.broadcast_products = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.names.append(name)
        if name == "bmm" and any(isinstance(a, torch.Tensor) and a.stride(0) == 0 for a in args):
            self.broadcast_products += 1
        return func(*args, **(kwargs or {}))


def attention_module(seed: int = 0, **kwargs) -> nn.MultiheadAttention:
    torch.manual_seed(seed)
    module = nn.MultiheadAttention(32, 4, batch_first=True, **kwargs)
    with torch.no_grad():  # weights large enough that positions attend differently
        for parameter in module.parameters():
            parameter.normal_(0, 0.3)
    return module.requires_grad_(False).eval()


def output_and_input_gradient(module, tokens, projected, **kwargs):
    tokens = tokens.detach().requires_grad_()
    if projected:
        with projected_batch_first(module):
            out = module(tokens, tokens, tokens, **kwargs)
    else:
        out = module(tokens, tokens, tokens, **kwargs)
    (out[0] * torch.linspace(-1, 1, out[0].numel()).view_as(out[0])).sum().backward()
    return out, tokens.grad


CAUSAL = torch.triu(torch.full((7, 7), float("-inf")), 1)


@pytest.mark.parametrize(
    "mask", [None, CAUSAL, torch.triu(torch.ones(7, 7, dtype=torch.bool), 1)], ids=["none", "float", "bool"]
)
def test_equals_multihead_attention_output_and_gradient(mask):
    module = attention_module()
    tokens = torch.randn(3, 7, 32)
    (plain, _), plain_grad = output_and_input_gradient(module, tokens, False, need_weights=False, attn_mask=mask)
    (ours, weights), ours_grad = output_and_input_gradient(module, tokens, True, need_weights=False, attn_mask=mask)
    assert weights is None
    torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_grad, plain_grad, rtol=1e-5, atol=1e-5)
    if mask is not None:  # the mask is applied: the first position attends to itself only
        (unmasked, _), _ = output_and_input_gradient(module, tokens, True, need_weights=False)
        assert not torch.allclose(unmasked[:, 0], ours[:, 0], atol=1e-3)


def test_folds_the_projection_where_multihead_attention_runs_per_position_products():
    module = attention_module()
    tokens = torch.randn(3, 7, 32)
    with OpNames() as ops:
        output_and_input_gradient(module, tokens, True, need_weights=False, attn_mask=CAUSAL)
    assert ops.broadcast_products == 0  # the input projection and its backward are plain matrix products
    assert ops.names.count("addmm") == 2  # the two projections, forward


def test_calls_it_does_not_cover_go_to_the_module_itself():
    module = attention_module()
    tokens, other = torch.randn(2, 5, 32), torch.randn(2, 6, 32)
    with projected_batch_first(module):
        assert "forward" in vars(module)
        weights = module(tokens, tokens, tokens)[1]  # attention weights asked for (the default)
        cross = module(tokens, other, other, need_weights=False)[0]
        padded = module(tokens, tokens, tokens, need_weights=False, key_padding_mask=torch.zeros(2, 5).bool())[0]
    assert "forward" not in vars(module)  # the class's forward is back
    torch.testing.assert_close(weights, module(tokens, tokens, tokens)[1])
    torch.testing.assert_close(cross, module(tokens, other, other, need_weights=False)[0])
    torch.testing.assert_close(padded, module(tokens, tokens, tokens, need_weights=False)[0])


def test_left_alone_without_gradients_and_for_modules_it_does_not_cover():
    covered = attention_module()
    with torch.no_grad(), projected_batch_first(covered):  # PyTorch's inference path is its own fast one
        assert "forward" not in vars(covered)
    for module in (nn.MultiheadAttention(32, 4), attention_module(add_bias_kv=True), nn.Linear(3, 3)):
        with projected_batch_first(module):
            assert "forward" not in vars(module)


def test_dropout_runs_in_training_mode_only():
    module = attention_module(dropout=0.5)
    tokens = torch.randn(2, 5, 32)
    with projected_batch_first(module):
        evaluated = module(tokens, tokens, tokens, need_weights=False)[0]
        module.train()
        trained = module(tokens, tokens, tokens, need_weights=False)[0]
    torch.testing.assert_close(evaluated, module.eval()(tokens, tokens, tokens, need_weights=False)[0])
    assert not torch.allclose(trained, evaluated, atol=1e-3)


def test_open_clip_towers_train_through_it(tiny_clip):
    """The image tower's blocks project batch-first while the tokens need gradients, and equal open_clip's."""
    images = torch.randn(2, 3, 32, 32)
    with OpNames() as ops:
        ours = tiny_clip.encode_image(images.requires_grad_()).features
    assert ops.broadcast_products == 0
    torch.testing.assert_close(ours, tiny_clip.model.encode_image(images), rtol=1e-5, atol=1e-5)
    assert all("forward" not in vars(block.attn) for block in tiny_clip.model.visual.transformer.resblocks)


def test_as_close_to_float32_as_multihead_attention_under_bf16_autocast():
    """Mixed precision: both round the projections and the attention to bfloat16 (in different product orders), so
    each is compared with the float32 result, and ours is no further from it than PyTorch's."""
    module = attention_module()
    tokens = torch.randn(3, 7, 32)
    (exact, _), exact_grad = output_and_input_gradient(module, tokens, False, need_weights=False, attn_mask=CAUSAL)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (plain, _), plain_grad = output_and_input_gradient(module, tokens, False, need_weights=False, attn_mask=CAUSAL)
        (ours, _), ours_grad = output_and_input_gradient(module, tokens, True, need_weights=False, attn_mask=CAUSAL)
    assert ours.dtype == plain.dtype == torch.bfloat16
    for low, theirs, reference in ((ours, plain, exact), (ours_grad, plain_grad, exact_grad)):
        error, their_error = ((t.float() - reference).abs().mean() for t in (low, theirs))
        assert error <= 1.25 * their_error, (error, their_error)
        assert error < 0.02 * reference.abs().mean()
