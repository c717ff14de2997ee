"""MUPT (sIncerass/MVLPT with UPT prompts): the joint projector equals the official forward_mvlpt_proj (one CLIP
residual block on a length-1 sequence: no token sees another), and the text and image features are built from
the projected prompts as the official code builds them."""

from __future__ import annotations

import open_clip
import torch
import torch.nn.functional as F
from helpers import official_mvlpt_image_features

from lightning_prompts.methods.mupt import MUPT


def official_projection(module, tokens):
    """CLIP's ResidualAttentionBlock on x of shape (L=1, N=S, 128): attention over one key is its value."""
    block = module.projector.block
    width = tokens.shape[-1]
    w_v, b_v = block.attn.in_proj_weight[2 * width :], block.attn.in_proj_bias[2 * width :]
    normed = F.layer_norm(tokens, (width,), block.ln_1.weight, block.ln_1.bias)
    x = tokens + F.linear(F.linear(normed, w_v, b_v), block.attn.out_proj.weight, block.attn.out_proj.bias)
    hidden = F.linear(
        F.layer_norm(x, (width,), block.ln_2.weight, block.ln_2.bias), block.mlp[0].weight, block.mlp[0].bias
    )
    return x + F.linear(hidden * torch.sigmoid(1.702 * hidden), block.mlp[2].weight, block.mlp[2].bias)


def test_prompts_go_through_the_official_projection_then_into_both_towers(tiny_clip):
    torch.manual_seed(0)
    method = MUPT(tiny_clip, ["cat", "dog", "fox"], n_ctx=2, num_tokens=3, projector_width=16).eval()
    projector = method.projector
    with torch.no_grad():
        coop = projector.text_in(method.prompt.ctx)  # (2, 16)
        vpt = torch.cat([method.visual_prompt.tokens[None], method.visual_prompt.deep_tokens]).reshape(-1, 48)
        joint = official_projection(method, torch.cat([coop, projector.vision_in(vpt)]))
        context = projector.text_out(joint[:2])
        visual = projector.vision_out(joint[2:]).reshape(12, 3, 48)
        ours_context, ours_visual = method.projected_prompts()
        torch.testing.assert_close(ours_context, context, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours_visual, visual, rtol=1e-5, atol=1e-6)
        # text: CoOp's middle-position prompts around the projected context
        prompts, eot = method.prompt(context)
        expected_text = F.normalize(tiny_clip.encode_text_embeddings(prompts, eot), dim=-1)
        torch.testing.assert_close(method.class_text_features(), expected_text, rtol=1e-5, atol=1e-6)
        # image: the projected tokens after ln_pre, replaced before every later block
        images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        expected_image = official_mvlpt_image_features(tiny_clip.model.visual, images, visual[0], visual[1:])
        torch.testing.assert_close(
            method.image_features(images), F.normalize(expected_image, dim=-1), rtol=1e-5, atol=1e-5
        )
        # logits: CLIP's scaled cosine between the two
        expected_logits = tiny_clip.model.logit_scale.exp() * F.normalize(expected_image, dim=-1) @ expected_text.t()
        torch.testing.assert_close(method(images).logits, expected_logits, rtol=1e-5, atol=1e-4)
        assert expected_logits.std(dim=1).min() > 1e-2  # the classes score apart


def test_no_token_sees_another_in_the_projector(tiny_clip):
    torch.manual_seed(0)
    method = MUPT(tiny_clip, ["cat", "dog"], n_ctx=2, num_tokens=2, projector_width=16)
    with torch.no_grad():
        _, before = method.projected_prompts()
        method.prompt.ctx.add_(1.0)  # change the text context only
        _, after = method.projected_prompts()
    torch.testing.assert_close(before, after)  # the visual tokens are untouched: a length-1 sequence
    trainable = {name.split(".")[0] for name, p in method.named_parameters() if p.requires_grad}
    assert trainable == {"prompt", "visual_prompt", "projector"}


def official_middle_text_features(clip, ctx, classnames):
    """CoOp's PromptLearner with ``CLASS_TOKEN_POSITION middle`` (as MVLPT's scripts run it) and its TextEncoder,
    written out: ``[SOS] ctx[:n/2] <class tokens> ctx[n/2:] "." [EOT]``."""
    model, n_ctx = clip.model, ctx.shape[0]
    tokenizer = open_clip.tokenizer.SimpleTokenizer()
    names = [name.replace("_", " ") for name in classnames]
    tokenized = torch.cat([open_clip.tokenize(" ".join(["X"] * n_ctx) + " " + name + ".") for name in names])
    embedding = model.token_embedding(tokenized)
    prefix, suffix, half = embedding[:, :1], embedding[:, 1 + n_ctx :], n_ctx // 2
    rows = []
    for i, name in enumerate(names):
        length = len(tokenizer.encode(name))
        rows.append(torch.cat([prefix[i], ctx[:half], suffix[i, :length], ctx[half:], suffix[i, length:]], dim=0))
    x = torch.stack(rows) + model.positional_embedding
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
    return F.normalize(x[torch.arange(len(names)), tokenized.argmax(dim=-1)] @ model.text_projection, dim=-1)


def test_text_prompts_put_the_class_name_in_the_middle_of_the_projected_context(tiny_clip):
    torch.manual_seed(0)
    names = ["cat", "golden_retriever", "sports car"]
    method = MUPT(tiny_clip, names, n_ctx=4, num_tokens=2, projector_width=16).eval()
    with torch.no_grad():
        method.prompt.ctx.normal_(std=1.0)  # a context far from zero, so that where it sits shows
        projector = method.projector
        vpt = torch.cat([method.visual_prompt.tokens[None], method.visual_prompt.deep_tokens])
        vpt = vpt.reshape(-1, tiny_clip.vision_width)  # one row per visual token
        joint = official_projection(method, torch.cat([projector.text_in(method.prompt.ctx), projector.vision_in(vpt)]))
        context = projector.text_out(joint[:4])
        expected = official_middle_text_features(tiny_clip, context, names)
        torch.testing.assert_close(method.class_text_features(), expected, rtol=1e-5, atol=1e-5)
        assert (expected @ expected.t()).fill_diagonal_(0).max() < 0.999  # the classes differ
