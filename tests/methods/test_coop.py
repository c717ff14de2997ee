"""CoOp against an independent re-computation of the official code's steps (KaiyangZhou/CoOp,
trainers/coop.py: PromptLearner, TextEncoder, CustomCLIP) on a tiny CLIP."""

from __future__ import annotations

import open_clip
import pytest
import torch

from lightning_prompts.errors import ContextLengthError
from lightning_prompts.methods import CoOp

CLASSNAMES = ["golden_retriever", "cat", "sports car"]


def official_class_prompts(clip, ctx, classnames, position, prompt_prefix):
    """PromptLearner.__init__ + forward, re-written from the official code's description."""
    tokenizer = open_clip.tokenizer.SimpleTokenizer()
    n_ctx = ctx.shape[-2]
    names = [name.replace("_", " ") for name in classnames]
    name_lens = [len(tokenizer.encode(name)) for name in names]
    tokenized = torch.cat([open_clip.tokenize(prompt_prefix + " " + name + ".") for name in names])
    embedding = clip.model.token_embedding(tokenized)
    prefix, suffix = embedding[:, :1], embedding[:, 1 + n_ctx :]
    if ctx.dim() == 2:
        ctx = ctx.unsqueeze(0).expand(len(names), -1, -1)
    if position == "end":
        prompts = torch.cat([prefix, ctx, suffix], dim=1)
    else:
        rows = []
        half = n_ctx // 2
        for i, n in enumerate(name_lens):
            if position == "middle":
                row = [
                    prefix[i : i + 1],
                    ctx[i : i + 1, :half],
                    suffix[i : i + 1, :n],
                    ctx[i : i + 1, half:],
                    suffix[i : i + 1, n:],
                ]
            else:
                row = [prefix[i : i + 1], suffix[i : i + 1, :n], ctx[i : i + 1], suffix[i : i + 1, n:]]
            rows.append(torch.cat(row, dim=1))
        prompts = torch.cat(rows)
    return prompts, tokenized


def official_logits(clip, ctx, classnames, images, position, prompt_prefix):
    """TextEncoder (all 77 positions, argmax pooling) + CustomCLIP's cosine logits."""
    model = clip.model
    prompts, tokenized = official_class_prompts(clip, ctx, classnames, position, prompt_prefix)
    x = prompts + model.positional_embedding
    x = model.transformer(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    text = x[torch.arange(x.shape[0]), tokenized.argmax(dim=-1)] @ model.text_projection
    image = model.encode_image(images)
    image = image / image.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    return model.logit_scale.exp() * image @ text.t()


@pytest.mark.parametrize("position", ["end", "middle", "front"])
@pytest.mark.parametrize("class_specific", [False, True])
def test_logits_match_official_computation(tiny_clip, position, class_specific):
    torch.manual_seed(0)
    method = CoOp(tiny_clip, CLASSNAMES, n_ctx=4, class_specific=class_specific, class_token_position=position)
    ctx = method.prompt.ctx.detach()
    assert ctx.shape == ((3, 4, 32) if class_specific else (4, 32))
    images = torch.randn(2, 3, 32, 32)
    expected = official_logits(tiny_clip, ctx, CLASSNAMES, images, position, "X X X X")
    got = method(images).logits
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


def test_prompt_construction_matches_official_embeddings(tiny_clip):
    method = CoOp(tiny_clip, CLASSNAMES, n_ctx=4, class_token_position="middle")
    prompts, eot = method.prompt()
    expected, tokenized = official_class_prompts(tiny_clip, method.prompt.ctx.detach(), CLASSNAMES, "middle", "X X X X")
    assert torch.equal(prompts, expected)
    assert torch.equal(eot, tokenized.argmax(dim=-1))


def test_init_from_phrase_uses_its_token_embeddings_and_word_count(tiny_clip):
    method = CoOp(tiny_clip, CLASSNAMES, n_ctx=None, ctx_init="a photo of a")
    ids = open_clip.tokenize("a photo of a")
    expected = tiny_clip.model.token_embedding(ids)[0, 1:5]
    assert method.prompt.n_ctx == 4
    assert torch.equal(method.prompt.ctx.detach(), expected)
    # before training, the learned prompt *is* the hand-written one: CoOp starts at zero-shot CLIP
    images = torch.randn(2, 3, 32, 32)
    zero_shot = tiny_clip.encode_text([f"a photo of a {n.replace('_', ' ')}." for n in CLASSNAMES], normalize=True)
    image = torch.nn.functional.normalize(tiny_clip.encode_image(images).features, dim=-1)
    assert torch.allclose(method(images).logits, tiny_clip.logit_scale * image @ zero_shot.t(), atol=1e-4)


def test_fewer_ctx_than_phrase_keeps_the_rest_fixed(tiny_clip):
    """MaPLe/CoPrompt's quirk: n_ctx=2 with 'a photo of a' learns 'a photo', keeps 'of a' fixed."""
    method = CoOp(tiny_clip, ["cat"], n_ctx=2, ctx_init="a photo of a")
    images = torch.randn(1, 3, 32, 32)
    zero_shot = tiny_clip.encode_text(["a photo of a cat."], normalize=True)
    image = torch.nn.functional.normalize(tiny_clip.encode_image(images).features, dim=-1)
    assert torch.allclose(method(images).logits, tiny_clip.logit_scale * image @ zero_shot.t(), atol=1e-4)


def test_random_init_std_and_only_ctx_trains(tiny_clip):
    torch.manual_seed(0)
    method = CoOp(tiny_clip, [f"class {i}" for i in range(40)], n_ctx=16, class_specific=True)
    assert method.prompt.ctx.std().item() == pytest.approx(0.02, rel=0.1)
    assert [n for n, p in method.named_parameters() if p.requires_grad] == ["prompt.ctx"]


def test_class_prompts_are_rebuilt_for_new_classes(tiny_clip):
    method = CoOp(tiny_clip, CLASSNAMES, n_ctx=4)
    method.set_classnames(["apple", "banana"])
    assert method(torch.randn(2, 3, 32, 32)).logits.shape == (2, 2)
    csc = CoOp(tiny_clip, CLASSNAMES, n_ctx=4, class_specific=True)
    with pytest.raises(ValueError, match="cannot build prompts"):
        csc.set_classnames(["apple", "banana"])


def test_prompt_longer_than_context_fails_at_construction(tiny_clip):
    with pytest.raises(ContextLengthError, match="class prompt"):
        CoOp(tiny_clip, ["a " * 70 + "cat"], n_ctx=16)


def test_eval_text_features_are_cached_until_the_context_changes(tiny_clip):
    method = CoOp(tiny_clip, CLASSNAMES, n_ctx=4).eval()
    with torch.no_grad():
        first = method.encode_class_prompts()
        assert method.encode_class_prompts() is first
        method.prompt.ctx.add_(1.0)  # what an optimizer step does
        assert not torch.equal(method.encode_class_prompts(), first)
