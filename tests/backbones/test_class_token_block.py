"""The last image block for the class token alone: the same features (and gradients into the prompts) as the whole
block, wherever ``encode_image`` takes that path, and the whole block wherever it must not."""

from __future__ import annotations

import pytest
import torch
from helpers import widened

from lightning_prompts.backbones import OpenCLIP
from lightning_prompts.backbones.class_token_block import class_token_through, reads_class_token_only
from lightning_prompts.backbones.hooks import BlockHook, PromptTokens


@pytest.fixture(scope="module")
def clip() -> OpenCLIP:
    torch.manual_seed(0)
    return widened(OpenCLIP("tiny", pretrained=None), std=0.3)


def images(clip: OpenCLIP) -> torch.Tensor:
    return torch.randn(3, 3, clip.image_size, clip.image_size, generator=torch.Generator().manual_seed(1))


def test_the_class_token_row_of_a_block_is_the_whole_blocks(clip):
    block = clip.model.visual.transformer.resblocks[-1]
    x = torch.randn(2, 7, clip.vision_width, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(class_token_through(block, x), block(x)[:, :1], rtol=1e-5, atol=1e-5)


class MLPBranch(BlockHook):  # a branch inside the blocks (AdaptFormer-like): the whole last block must run
    def mlp_branch(self, context, hidden):
        return 0.5 * hidden


@pytest.mark.parametrize("case", ["plain", "maple", "vpt", "checkpointed"])
def test_features_and_prompt_gradients_match_the_whole_tower(clip, case):
    width, layers = clip.vision_width, clip.vision_layers
    generator = torch.Generator().manual_seed(4)
    first = torch.randn(2, width, generator=generator, requires_grad=True)
    deep = [torch.randn(2, width, generator=generator, requires_grad=True) for _ in range(layers - 1)]
    kwargs = {
        "plain": {},
        "maple": {"hooks": PromptTokens(first, deep, "append")},
        "vpt": {"prompts": first, "deep_prompts": deep, "location": "prepend", "after_ln_pre": True},
        "checkpointed": {"hooks": PromptTokens(first, deep, "append")},
    }[case]
    clip.gradient_checkpointing = case == "checkpointed"
    try:
        runs = []
        for patch_tokens in (True, False):
            encoding = clip.encode_image(images(clip), patch_tokens=patch_tokens, **kwargs)
            grads = torch.autograd.grad(encoding.features.pow(2).sum(), [first, *deep]) if kwargs else ()
            runs.append((encoding, grads))
    finally:
        clip.gradient_checkpointing = False
    (whole, whole_grads), (token, token_grads) = runs
    assert whole.patch_tokens is not None and token.patch_tokens is None  # the short path was taken
    torch.testing.assert_close(token.features, whole.features, rtol=1e-5, atol=1e-5)
    for ours, expected in zip(token_grads, whole_grads):
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)
    assert not kwargs or whole_grads[0].abs().sum() > 0


def test_hooks_inside_the_block_keep_the_whole_block(clip):
    visual = clip.model.visual
    assert reads_class_token_only(visual, None) and reads_class_token_only(visual, PromptTokens(None, []))
    assert not reads_class_token_only(visual, MLPBranch())
    encoding = clip.encode_image(images(clip), hooks=MLPBranch(), patch_tokens=False)  # gradients recorded
    plain = clip.encode_image(images(clip), patch_tokens=False)
    assert encoding.patch_tokens is not None and plain.patch_tokens is None  # the whole tower ran, branch included
    assert not torch.allclose(encoding.features, plain.features, atol=1e-3)


def test_an_images_features_do_not_depend_on_the_batch_it_came_in(clip):
    """As for the whole tower (from four images a batch): the same image gives bitwise the same features in a batch
    of 8 as in two of 4, so a feature cache filled in other batches, or a resumed run, reads what a straight run does
    (a batch-wide product over the class tokens alone broke that and a resume test)."""
    batch = torch.randn(8, 3, clip.image_size, clip.image_size, generator=torch.Generator().manual_seed(5))
    for patch_tokens in (True, False):  # gradients recorded: the class-token path is taken
        together = clip.encode_image(batch, patch_tokens=patch_tokens)
        halves = [clip.encode_image(half, patch_tokens=patch_tokens).features for half in batch.split(4)]
        assert (together.patch_tokens is None) == (not patch_tokens)
        assert torch.equal(together.features, torch.cat(halves)), patch_tokens


def test_without_gradients_the_whole_block_runs(clip):
    """Frozen features and evaluation keep the batched whole block (one image at a time would launch more kernels
    on a GPU than the class token saves)."""
    with torch.no_grad():
        assert clip.encode_image(images(clip), patch_tokens=False).patch_tokens is not None
