"""Sequential fine-tuning (the continual lower bound) and the ``image_folder`` class-incremental stream."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from PIL import Image

from lightning_prompts.backbones import TimmViT
from lightning_prompts.data import ClassIncrementalDataModule
from lightning_prompts.errors import DatasetError
from lightning_prompts.methods.sequential_fine_tuning import SequentialFineTuning
from lightning_prompts.outputs import PromptOutput


def write_stream(root, classes=("coat", "dress", "sandal", "t_shirt"), per_class=3):
    for split in ("train", "test"):
        for index, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(per_class):
                Image.new("RGB", (20, 20), (60 * index, 20 * k, 100)).save(folder / f"{k}.png")


def test_image_folder_stream_reads_sorted_class_folders(tmp_path):
    write_stream(tmp_path)
    data = ClassIncrementalDataModule("image_folder", root=tmp_path, num_tasks=2, epochs_per_task=1, image_size=32)
    assert data.classnames == ["coat", "dress", "sandal", "t shirt"]
    paths, labels = data.data()["train"]
    assert labels == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3] and paths[3].parent.name == "dress"
    (tmp_path / "test" / "t_shirt").rename(tmp_path / "test" / "shirt")
    with pytest.raises(DatasetError, match="hold different classes"):
        ClassIncrementalDataModule("image_folder", root=tmp_path, num_tasks=2).data()


def test_training_masks_other_tasks_and_the_whole_vit_learns(tmp_path):
    write_stream(tmp_path)
    data = ClassIncrementalDataModule("image_folder", root=tmp_path, num_tasks=2, epochs_per_task=1, image_size=32,
                                      batch_size=4, eval_batch_size=4)  # fmt: skip
    module = SequentialFineTuning(TimmViT("tiny"), data.classnames, num_tasks=2)
    module.train().current_task = 1
    logits = torch.randn(3, 4)
    targets = torch.tensor([2, 3, 2])
    expected = F.cross_entropy(logits[:, 2:], targets - 2)  # only task 1's classes compete
    torch.testing.assert_close(module.task_loss(PromptOutput(logits=logits), targets), expected)
    module.eval().current_task = 0
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():  # timm's own pooled [CLS] through the head over all classes, task 0's columns seen
        vit = module.backbone.model
        expected = module.head(vit.forward_head(vit.forward_features(images), pre_logits=True))[:, :2]
        torch.testing.assert_close(module(images).logits, expected, atol=1e-5, rtol=1e-5)
    weight = module.backbone.model.blocks[0].attn.qkv.weight.detach().clone()
    trainer = Trainer(max_epochs=2, reload_dataloaders_every_n_epochs=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")  # fmt: skip
    trainer.fit(module, data)
    assert not torch.equal(module.backbone.model.blocks[0].attn.qkv.weight, weight)
    assert 0.0 <= float(trainer.callback_metrics["val/acc"]) <= 1.0
