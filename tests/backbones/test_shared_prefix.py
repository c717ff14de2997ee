"""The shared-prefix text pass equals the plain pass (logits and context gradients, 1e-5 relative) for
every CLIP method family, and is taken only where it is exact."""

from __future__ import annotations

import copy

import pytest
import torch

from lightning_prompts.backbones import OpenCLIP
from lightning_prompts.backbones import open_clip as open_clip_module
from lightning_prompts.batch import IMAGE
from lightning_prompts.methods import DAPT, CoOp, CoPrompt, MaPLe, ZeroShotCLIP

NAMES = ["cat", "golden retriever", "golden eagle", "airplane", "sea turtle"]


@pytest.fixture(scope="module")
def clips():
    """Two copies of a tiny CLIP with non-trivial weights (std 0.1: classes score differently), with and
    without the shared-prefix pass."""
    torch.manual_seed(0)
    fast = OpenCLIP("tiny", pretrained=None)
    with torch.no_grad():
        for param in fast.model.parameters():
            if param.dim() > 1:
                param.normal_(std=0.1)
    plain = copy.deepcopy(fast)
    plain.shared_prefix = False
    return fast, plain


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max().detach() / b.abs().max().detach().clamp_min(1e-12))


def build(cls, clip, **kwargs):
    torch.manual_seed(3)
    return cls(clip, NAMES, **kwargs)


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (CoOp, {"n_ctx": 4, "init_std": 0.5}),
        (CoOp, {"ctx_init": "a photo of a", "n_ctx": None}),
        (MaPLe, {"depth": 6}),
        (CoPrompt, {"depth": 4}),
        (DAPT, {"depth": 4}),
        (ZeroShotCLIP, {"templates": ["a photo of a {}.", "a blurry photo of the {}."]}),
    ],
    ids=["coop-random", "coop-phrase", "maple", "coprompt", "dapt", "zero-shot"],
)
# grouped by length (the default) and padded to the longest in one group (timed on GPUs by coop_step.py)
@pytest.mark.parametrize("group_by_length", [True, False], ids=["grouped", "padded"])
def test_logits_and_context_gradients_equal_the_plain_pass(cls, kwargs, group_by_length, clips, monkeypatch):
    fast, plain = clips
    calls = []
    original = open_clip_module._run_with_shared_prefix

    def recorded(*args, **kwargs):
        calls.append(args[3])
        return original(*args, **kwargs, group_by_length=group_by_length)

    monkeypatch.setattr(open_clip_module, "_run_with_shared_prefix", recorded)
    a, b = build(cls, fast, **kwargs), build(cls, plain, **kwargs)
    b.load_state_dict(a.state_dict(), strict=False)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    logits_a, logits_b = a.train()(images).logits, b.train()(images).logits
    assert calls and min(calls) >= 2  # the shared pass ran, with a prefix of two or more positions
    assert relative(logits_a, logits_b) < 1e-5
    assert logits_b.std(dim=1).min() > 1e-2  # the classes score differently: the comparison means something
    trainable = [p for p in a.parameters() if p.requires_grad]
    if not trainable:
        return
    loss_a = torch.nn.functional.cross_entropy(logits_a, torch.tensor([0, 1, 2]))
    loss_b = torch.nn.functional.cross_entropy(logits_b, torch.tensor([0, 1, 2]))
    grads_a = torch.autograd.grad(loss_a, trainable, allow_unused=True)
    grads_b = torch.autograd.grad(loss_b, [p for p in b.parameters() if p.requires_grad], allow_unused=True)
    for ga, gb in zip(grads_a, grads_b):
        if gb is not None:
            assert relative(ga, gb) < 1e-5


def test_eval_time_class_features_use_it_and_agree(clips):
    fast, plain = clips
    a, b = build(CoOp, fast, n_ctx=4, init_std=0.5), build(CoOp, plain, n_ctx=4, init_std=0.5)
    b.load_state_dict(a.state_dict(), strict=False)
    a.eval(), b.eval()
    with torch.no_grad():
        assert relative(a.encode_class_prompts(), b.encode_class_prompts()) < 1e-5
        output = a.compute_output({IMAGE: torch.randn(2, 3, 32, 32)}, {"frozen_text_features"})
    assert output.frozen_text_features.shape == (len(NAMES), fast.embed_dim)


def test_it_is_not_taken_where_it_would_not_be_exact(clips):
    fast, _ = clips
    csc = build(CoOp, fast, n_ctx=4, class_specific=True)  # class-specific context: no shared prefix
    prompts, eot = csc.prompt()
    assert fast.shared_prefix_length(prompts, eot, None) == 0
    middle = build(CoOp, fast, n_ctx=4, class_token_position="front")  # the class name comes first
    prompts, eot = middle.prompt()
    assert fast.shared_prefix_length(prompts, eot, None) <= 1
    shared = build(CoOp, fast, n_ctx=4)
    prompts, eot = shared.prompt()
    assert fast.shared_prefix_length(prompts, eot, None) == 5  # [SOS] and the four context vectors
    from lightning_prompts.backbones.hooks import BlockHook, PromptTokens

    per_sequence = PromptTokens(None, [torch.zeros(len(NAMES), 4, fast.text_width)], 1)
    assert fast.shared_prefix_length(prompts, eot, per_sequence) == 0  # per-class deep prompts

    class Branch(BlockHook):
        def mlp_branch(self, context, hidden):
            return hidden

    assert fast.shared_prefix_length(prompts, eot, Branch()) == 0  # a hook that changes more than tokens


def test_the_command_line_turns_the_shared_prefix_off_as_docs_benchmarks_md_says(tmp_path, monkeypatch):
    """docs/benchmarks.md suggests ``--model.init_args.backbone.init_args.shared_prefix false`` on GPUs with few
    classes: it reaches the backbone and the plain pass runs."""
    from pathlib import Path

    from lightning_prompts.cli import run_cli

    recipes = Path(__file__).resolve().parents[2] / "recipes"
    calls = []
    original = open_clip_module._run_with_shared_prefix
    monkeypatch.setattr(
        open_clip_module, "_run_with_shared_prefix", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    args = ["fit", "--config", str(recipes / "coop" / "caltech101.yaml"),
            "--config", str(recipes / "_tiny" / "clip.yaml"), "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    assert run_cli(args).model.backbone.shared_prefix and calls  # on by default
    calls.clear()
    cli = run_cli([*args, "--model.init_args.backbone.init_args.shared_prefix", "false"])
    assert cli.model.backbone.shared_prefix is False and not calls and cli.trainer.state.finished


def test_truncate_false_is_the_reference_pass_without_the_shared_prefix(clips, monkeypatch):
    # benchmarks/clip_text_encoder.py times it as the CoOp paper's 77-position pass; with the shared prefix it ran
    # the fast path instead (and timed 1.04x where the page said 11x)
    fast, _ = clips
    calls = []
    original = open_clip_module._run_with_shared_prefix
    monkeypatch.setattr(
        open_clip_module, "_run_with_shared_prefix", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    ids = fast.tokenize([f"a photo of a {name}." for name in NAMES])
    embeddings, eot = fast.embed_tokens(ids), fast.eot_positions(ids)
    reference = fast.encode_text_embeddings(embeddings, eot, truncate=False)
    assert not calls
    torch.testing.assert_close(reference, fast.model.encode_text(ids), rtol=1e-5, atol=1e-5)
    fast.encode_text_embeddings(embeddings, eot)
    assert calls  # the default takes the shared prefix here
