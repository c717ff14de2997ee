"""TPT (azshue/TPT) re-computed: the confidence selection, the entropy of the averaged probability, one
AdamW step from the initial context for every test image (two consecutive images see the same
initial context), the prediction of the image itself; test-time views from the data module."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import precision_options, synthetic_fewshot
from lightning.pytorch import Trainer

from lightning_prompts.errors import ConfigurationError
from lightning_prompts.evaluation import TestTimePromptTuning
from lightning_prompts.evaluation.test_time import average_probability_entropy, select_confident
from lightning_prompts.methods import CoOp


def test_selection_keeps_the_lowest_entropy_tenth_and_the_loss_is_the_entropy_of_the_mean_probability():
    torch.manual_seed(0)
    logits = torch.randn(64, 5) * torch.linspace(0.1, 5, 64).unsqueeze(1)  # sharper rows further down
    chosen = select_confident(logits, 0.1)
    probabilities = logits.softmax(-1)
    entropy = -(probabilities * probabilities.log()).sum(-1)
    assert len(chosen) == 6 and set(chosen.tolist()) == set(entropy.topk(6, largest=False).indices.tolist())
    mean = probabilities[chosen].mean(0)
    assert torch.allclose(average_probability_entropy(logits[chosen]), -(mean * mean.log()).sum(), atol=1e-6)
    few = select_confident(logits[:4], 0.1)  # 4 views: TPT's int(0.4) would keep none; we keep the surest
    assert few.tolist() == [int(entropy[:4].argmin())]


class RecordingTPT(TestTimePromptTuning):
    """TPT that records the context each image starts from and the scores of each batch."""

    def __init__(self, steps: int = 1, lr: float = 5e-3, selection: float = 0.1) -> None:
        super().__init__(steps=steps, lr=lr, selection=selection)
        self.starts: list[torch.Tensor] = []
        self.scores: list[torch.Tensor] = []

    def reset(self, module):
        parameters = super().reset(module)
        self.starts.append(module.prompt.ctx.detach().clone())
        return parameters

    def score(self, module, batch, stage, dataloader_idx):
        scores = super().score(module, batch, stage, dataloader_idx)
        self.scores.append(scores)
        return scores


def test_every_test_image_is_tuned_from_the_same_context_and_predicted_as_tpt_does(tiny_clip, trainer_kwargs):
    data = synthetic_fewshot(test_views=19, eval_batch_size=2)  # 20 inputs per image: 2 are selected
    evaluator = RecordingTPT()
    torch.manual_seed(0)
    method = CoOp(tiny_clip, data.classnames, n_ctx=4, ctx_init="a photo of a", evaluator=evaluator)
    with torch.no_grad():
        method.prompt.ctx.normal_(std=1.0)  # a context far from the words: classes score differently
    initial = method.prompt.ctx.detach().clone()
    results = Trainer(**trainer_kwargs).test(method, data)[0]

    images = len(data.test_dataloader()[0].dataset)
    # one reset per image, and one at the end: every image starts from the initial context
    assert len(evaluator.starts) == images + 1 and all(torch.equal(start, initial) for start in evaluator.starts)
    assert torch.equal(method.prompt.ctx, initial)  # the test leaves the prompt as it found it
    batch = next(iter(data.test_dataloader()[0]))
    method.eval()
    for index in range(2):  # two consecutive images, each re-computed from the initial context
        expected = reference_tpt(method, initial, batch["image"][index], batch["image_views"][index])
        assert torch.allclose(evaluator.scores[0][index], expected[0], atol=1e-4)
    with torch.no_grad():
        method.prompt.ctx.copy_(initial)
        untuned = method(batch["image"]).logits
    assert not torch.allclose(evaluator.scores[0], untuned, atol=1e-4)  # the step changed the prediction
    assert 0.0 <= results["test/acc"] <= 1.0


def test_views_are_seeded_per_image_and_tpt_needs_them(tiny_clip):
    data = synthetic_fewshot(test_views=3, test_view_augmentation="augmix")
    data.setup("test")
    dataset = data.test_dataloader()[0].dataset
    first, again = dataset[1]["image_views"], dataset[1]["image_views"]
    assert first.shape == (3, 3, 32, 32) and torch.equal(first, again)  # the same views whatever the order
    assert not torch.equal(first[0], first[1])  # but different views of one image
    method = CoOp(tiny_clip, data.classnames, n_ctx=4)
    with pytest.raises(ConfigurationError, match="needs test-time views"):
        TestTimePromptTuning().check_ready(method, synthetic_fewshot(), "test")
    TestTimePromptTuning().check_ready(method, data, "test")


@pytest.mark.parametrize("recipe", ["tpt/dtd.yaml", "testbed/tpt.yaml"])
def test_a_tpt_recipe_tests_from_the_command_line(recipe, tmp_path, capsys):
    from pathlib import Path

    from lightning_prompts.cli import run_cli

    recipes = Path(__file__).resolve().parents[2] / "recipes"
    cli = run_cli(
        [
            "test",
            "--config",
            str(recipes / recipe),
            "--config",
            str(recipes / "_tiny" / "clip.yaml"),
            "--data.init_args.test_views",
            "9",  # 10 inputs per image: the most confident one is kept
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    assert isinstance(cli.model.evaluator, TestTimePromptTuning)
    assert cli.datamodule.test_view_augmentation == "augmix"
    assert "test/acc" in cli.trainer.callback_metrics and "acc" in capsys.readouterr().out


def test_the_cost_benchmark_runs_and_both_paths_predict_the_same(monkeypatch, capsys):
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "tpt_cost.py"
    argv = ["tpt_cost.py", "--model", "tiny", "--classes", "5", "--views", "9", "--steps", "2", "--images", "2"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(script), run_name="__main__")
    printed = capsys.readouterr().out
    difference = float(printed.rsplit("largest logits difference:", 1)[1])
    assert difference < 1e-4 and "one at a time / batched" in printed


def reference_tpt(method, initial_ctx, image, views, steps=1, lr=5e-3, selection=0.1, scaler=None):
    """TPT's loop written out: reset the context, score [image, *views], keep the ``selection`` most confident
    views (chosen once, at the first step), ``steps`` AdamW steps (lr 5e-3 by default) on the entropy of their mean
    probability, ``H(mean_v softmax(z_v))``, then classify the image; with ``scaler``, each step through it
    (``scaler.scale(loss).backward(); scaler.step(optimizer); scaler.update()``, as TPT's code under autocast)."""
    with torch.no_grad():
        method.prompt.ctx.copy_(initial_ctx)
        inputs = torch.cat([image.unsqueeze(0), views])
        features = F.normalize(method.backbone.encode_image(inputs).features, dim=-1)
    optimizer = torch.optim.AdamW([method.prompt.ctx], lr=lr)
    keep = None
    with torch.enable_grad():
        for _ in range(steps):
            logits = method.logit_scale * features @ method.class_text_features().t()
            probabilities = logits.softmax(-1)
            if keep is None:
                entropy = -(probabilities * logits.log_softmax(-1)).sum(-1)
                keep = entropy.argsort()[: int(len(inputs) * selection)].detach()
            mean = probabilities[keep].mean(0)
            loss = -(mean * mean.log()).sum()
            optimizer.zero_grad()
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
    with torch.no_grad():
        return method.logit_scale * features[:1] @ method.class_text_features().t()


def tpt_on_coop(tiny_clip, steps: int):
    """Two images of 8 inputs each (7 views), ``steps`` AdamW steps at lr 0.1 on the surer half, from a CoOp context
    far from the words (classes score differently): the data, the recording evaluator, the method, its context."""
    data = synthetic_fewshot(test_views=7, eval_batch_size=2)
    evaluator = RecordingTPT(steps=steps, lr=0.1, selection=0.5)
    torch.manual_seed(0)
    method = CoOp(tiny_clip, data.classnames, n_ctx=4, ctx_init="a photo of a", evaluator=evaluator)
    with torch.no_grad():
        method.prompt.ctx.normal_(std=1.0)
    return data, evaluator, method, method.prompt.ctx.detach().clone()


def test_under_float16_autocast_each_step_goes_through_tpts_gradient_scaler(tiny_clip, trainer_kwargs):
    """TPT's code tunes under float16 autocast through a GradScaler(init_scale=1000) kept for the whole run; the
    16-mixed test does so (the scaler is the evaluator's, over both images), and a float32 test has none."""
    data, evaluator, method, initial = tpt_on_coop(tiny_clip, steps=2)
    Trainer(limit_test_batches=1, **precision_options("16-mixed"), **trainer_kwargs).test(method, data)
    assert isinstance(evaluator._scaler, torch.amp.GradScaler) and evaluator._scaler._init_scale == 1000.0
    batch = next(iter(data.test_dataloader()[0]))
    method.eval()
    scaler = torch.amp.GradScaler("cpu", init_scale=1000.0)  # one for both images, as the run keeps one
    with torch.autocast("cpu", dtype=torch.float16):
        expected = [
            reference_tpt(
                method,
                initial,
                batch["image"][index],
                batch["image_views"][index],
                steps=2,
                lr=0.1,
                selection=0.5,
                scaler=scaler,
            )  # fmt: skip
            for index in range(2)
        ]
    for index in range(2):
        torch.testing.assert_close(evaluator.scores[0][index].float(), expected[index][0].float(), rtol=0, atol=2e-2)
    with torch.no_grad():
        method.prompt.ctx.copy_(initial)
        untuned = method(batch["image"][:2]).logits
    assert (evaluator.scores[0].float() - untuned).abs().max() > 1.0  # the steps moved the logits (by 4)
    assert evaluator._scaler.get_scale() == scaler.get_scale()  # the same steps skipped (none or the same ones)

    Trainer(limit_test_batches=1, **trainer_kwargs).test(method, data)
    assert evaluator._scaler is None


def test_several_steps_minimise_the_entropy_of_the_mean_probability_not_the_mean_entropy(tiny_clip, trainer_kwargs):
    """Four AdamW steps (lr 0.1) on half of 8 inputs: after the first, sign-like, Adam step the loss's shape decides
    the update, so the mean of per-view entropies would predict other logits."""
    data, evaluator, method, initial = tpt_on_coop(tiny_clip, steps=4)
    Trainer(limit_test_batches=1, **trainer_kwargs).test(method, data)
    batch = next(iter(data.test_dataloader()[0]))
    method.eval()
    for index in range(2):
        expected = reference_tpt(method, initial, batch["image"][index], batch["image_views"][index],
                                       steps=4, lr=0.1, selection=0.5)  # fmt: skip
        torch.testing.assert_close(evaluator.scores[0][index], expected[0], rtol=0, atol=2e-5)  # noise: ~3e-6
