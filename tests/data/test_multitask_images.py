"""MVLPT's multi-task pieces: the merged label space, per-task accuracy on each task's own classes, and the
official per-task logit masking."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer, seed_everything

from lightning_prompts.callbacks.task_logit_masking import TaskLogitMasking, task_masked_logits
from lightning_prompts.data import Synthetic
from lightning_prompts.data.multitask_images import MultiTaskImageDataModule
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.evaluation.multitask_accuracy import MultiTaskAccuracyEvaluator
from lightning_prompts.methods import CoOp


def merged(**kwargs):
    options = {"batch_size": 8, "eval_batch_size": 16, "num_workers": 0, "image_size": 32}
    return MultiTaskImageDataModule(
        tasks=["dtd", "eurosat"], shots=2, synthetic=Synthetic(num_classes=3, images_per_class=4), **options, **kwargs
    )


def test_tasks_are_concatenated_with_offset_labels():
    data = merged()
    assert data.task_class_ranges == {"dtd": (0, 3), "eurosat": (3, 6)}
    data.setup("fit")
    labels = sorted({int(data.train_dataset()[i]["label"]) for i in range(len(data.train_dataset()))})
    assert labels == list(range(6)) and len(data.train_dataset()) == 6 * 2
    assert len(data.classnames) == 6  # the generated names repeat across tasks: different classes all the same


def test_a_task_can_keep_one_half_of_its_classes_so_the_other_is_held_out_for_a_target():
    data = merged(subsample_classes={"eurosat": "base"})  # 3 classes: base keeps the first ceil(3/2) = 2
    assert data.task_class_ranges == {"dtd": (0, 3), "eurosat": (3, 5)}
    whole = merged()
    assert data.classnames[3:] == whole.classnames[3:5]
    data.setup("fit")
    assert sorted({int(data.train_dataset()[i]["label"]) for i in range(len(data.train_dataset()))}) == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigurationError, match="not among the tasks"):
        merged(subsample_classes={"food101": "base"})
    with pytest.raises(ConfigurationError, match="'base' or 'new'"):
        merged(subsample_classes={"dtd": "all"})


def test_per_task_accuracy_slices_each_sample_to_its_task_and_averages_tasks():
    evaluator = MultiTaskAccuracyEvaluator()
    evaluator._ranges = {"a": (0, 2), "b": (2, 5)}

    class Module:
        device = torch.device("cpu")

    evaluator.start(Module(), "test")
    scores = torch.tensor(
        [[0.9, 0.1, 5.0, 0.0, 0.0], [0.1, 0.2, 0.0, 0.0, 0.0], [9.0, 9.0, 0.1, 0.3, 0.2], [0.0, 0.0, 1.0, 0.0, 0.5]]
    )
    targets = torch.tensor([0, 0, 3, 4])
    evaluator.update(Module(), None, scores, targets, "test", 0)
    result = evaluator.finish(Module(), "test")
    # task a: sample 0 right (0.9 > 0.1; class 2's 5.0 is another task's), sample 1 wrong; task b: sample 2
    # right (0.3 is the largest of classes 2-4), sample 3 wrong (class 2 wins)
    assert float(result["test/acc_a"]) == 0.5 and float(result["test/acc_b"]) == 0.5
    assert float(result["test/acc"]) == 0.5


def test_masking_multiplies_other_tasks_logits_by_zero_as_the_official_code():
    logits = torch.randn(4, 5, generator=torch.Generator().manual_seed(0)) * 3
    targets = torch.tensor([1, 3, 4, 0])
    starts, ends = torch.tensor([0, 2]), torch.tensor([2, 5])
    # the official CustomCLIP.forward: select_index = (index >= start_of_task) * (index < end_of_task)
    task = torch.tensor([0, 1, 1, 0])
    index = torch.arange(5).unsqueeze(0).repeat(4, 1)
    select = (index >= starts[task].unsqueeze(-1)).float() * (index < ends[task].unsqueeze(-1)).float()
    torch.testing.assert_close(task_masked_logits(logits, targets, starts, ends, "zero"), logits * select)
    masked = task_masked_logits(logits, targets, starts, ends, "-inf")
    assert torch.isinf(masked[0, 2:]).all() and torch.equal(masked[0, :2], logits[0, :2])


def test_a_merged_run_trains_with_masking_and_reports_each_task(tiny_clip, trainer_kwargs):
    seed_everything(0)
    data = merged()
    method = CoOp(tiny_clip, data.classnames, n_ctx=4, class_token_position="middle")
    losses = []

    class Record(TaskLogitMasking):
        def weighted_task_loss(self, module, batch, output, targets):
            value = super().weighted_task_loss(module, batch, output, targets)
            starts, ends = (bound.to(targets.device) for bound in self._bounds)
            expected = F.cross_entropy(task_masked_logits(output.logits.float(), targets, starts, ends), targets)
            plain = F.cross_entropy(output.logits.float(), targets)
            losses.append((value.item(), expected.item(), plain.item()))
            return value

    trainer = Trainer(max_epochs=1, limit_val_batches=0, callbacks=[Record()], **trainer_kwargs)
    trainer.fit(method, data)
    assert losses and all(a == b and a != c for a, b, c in losses)  # the masked loss is the one trained
    result = Trainer(**trainer_kwargs).test(method, data)[0]
    assert {"test/acc_dtd", "test/acc_eurosat", "test/acc"} <= set(result)
    assert result["test/acc"] == pytest.approx((result["test/acc_dtd"] + result["test/acc_eurosat"]) / 2)


def test_the_masking_page_command_adds_the_callback(tmp_path, monkeypatch):
    import re
    import shlex
    from pathlib import Path

    from lightning_prompts.cli import run_cli

    root = Path(__file__).resolve().parents[2]
    page = (root / "docs" / "callbacks" / "task_logit_masking.md").read_text()
    command = shlex.split(re.findall(r"```bash\n(.*?)```", page, re.S)[0])
    monkeypatch.chdir(root)
    cli = run_cli([*command[1:], "--config", "recipes/_tiny/clip.yaml", f"--trainer.default_root_dir={tmp_path}"])
    assert any(isinstance(callback, TaskLogitMasking) for callback in cli.trainer.callbacks)
    assert cli.trainer.state.finished
