"""ELEVATER's downloaded format (iris index files, images in zip archives): reading, vision-datasets' few-shot
draw, checks before training, multi-hot batches, MVLPT's multi-label objective and the 11-point mAP evaluator,
end to end with a tiny CLIP."""

from __future__ import annotations

import collections
import json
import math
import random
import zipfile
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightning_prompts.data.elevater import (
    ElevaterDataModule,
    IndexEntry,
    read_index,
    sample_few_shot,
    toolkit_validation_split,
)
from lightning_prompts.data.image_datamodule import Synthetic
from lightning_prompts.data.synthetic import classnames_for
from lightning_prompts.errors import DatasetError
from lightning_prompts.evaluation import MultiLabelEvaluator
from lightning_prompts.methods.base.module import PromptModule
from lightning_prompts.metrics import NPointMeanAveragePrecision
from lightning_prompts.outputs import PromptOutput

SYNTHETIC = {"num_classes": 4, "images_per_class": 4, "image_size": 16}


def write_dataset(root: Path, lines: list[str], names=("cat", "dog", "bus")) -> Path:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    (root / "labels.txt").write_text("\n".join(names) + "\n")
    with zipfile.ZipFile(root / "train_images.zip", "w") as archive:
        for k in range(3):
            path = root / f"{k}.png"
            Image.new("RGB", (8, 8), (40 * k, 0, 0)).save(path)
            archive.write(path, f"images/{k}.png")
        archive.writestr("images/broken.png", b"\x89PNG not an image")
    (root / "broken.png").write_bytes(b"\xff\xd8 truncated")
    for split in ("train.txt", "test.txt"):
        (root / split).write_text("\n".join(lines) + "\n")
    return root


def test_multi_label_batches_come_from_the_archive_with_multi_hot_targets():
    data = ElevaterDataModule(
        multi_label=True, synthetic=SYNTHETIC, image_size=16, batch_size=16, num_workers=0, validation="index"
    )
    data.setup("fit")
    assert data.classnames == classnames_for(4) and (data.root / "labels.txt").read_text().split("\n")[0] == "airplane"
    assert (data.root / "train_images.zip").is_file() and not (data.root / "train").exists()
    assert set(data._datasets) == {"train", "val"}  # the test split is read (and decoded) only to test
    data.setup("test")
    assert set(data._datasets) == {"train", "val", "test"}
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (16, 3, 16, 16)
    assert batch["label"].dtype == torch.float32 and batch["label"].shape == (16, 4)
    assert set(batch["label"].sum(dim=1).tolist()) == {1.0, 2.0}  # every other image holds two classes
    evaluator = data.default_evaluator()
    assert isinstance(evaluator, MultiLabelEvaluator) and evaluator.monitor == ("val/map_11point", "max")


def test_single_label_reads_plain_indices_and_refuses_several_labels(tmp_path):
    root = write_dataset(tmp_path / "set", ["train_images.zip@images/0.png 0", "1.png 1", "2.png 2"])
    data = ElevaterDataModule(root=str(root), image_size=16, num_workers=0, batch_size=3, validation="index")
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))  # no val.txt: validation on the test split
    assert batch["label"].tolist() == [0, 1, 2] and data.classnames == ["cat", "dog", "bus"]
    root = write_dataset(tmp_path / "multi", ["train_images.zip@images/0.png 0,2", "1.png 1"])
    with pytest.raises(DatasetError, match="multi_label: true"):
        ElevaterDataModule(root=str(root), num_workers=0).setup("fit")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("1.png 3", "labels in 0..2"),
        ("1.png", "expected '<image> <label>"),
        ("1.png one", "expected '<image> <label>"),
        ("../outside.png 0", "inside the dataset folder"),
        ("/etc/passwd 0", "inside the dataset folder"),
        ("train_images.zip@../../x.png 0", "inside the dataset folder"),
        ("evil.tar@x.png 0", "not a .zip file"),
        ("train_images.zip@images/9.png 0", "is not in archive"),
        ("missing.png 0", "does not exist"),
        ("broken.png 0", "cannot be read"),
        ("train_images.zip@images/broken.png 0", "cannot be read"),
    ],
)
def test_bad_index_lines_fail_at_setup(tmp_path, line, message):
    root = write_dataset(tmp_path / "set", ["1.png 1", line])
    with pytest.raises(DatasetError, match=message):
        ElevaterDataModule(root=str(root), num_workers=0).setup("fit")


def vision_datasets_few_shot(entries, shots, seed, num_classes):
    # the published procedure, written independently: shuffle, take an image while any of its classes lacks shots
    images = list(entries)
    random.Random(seed).shuffle(images)
    need = {c: shots for c in range(num_classes)}
    taken = []
    for image in images:
        if any(need[c] > 0 for c in image.labels):
            for c in image.labels:
                need[c] -= 1
            taken.append(image)
        if all(v <= 0 for v in need.values()):
            break
    return taken


@pytest.mark.parametrize("multi", [False, True])
def test_few_shot_draw_is_vision_datasets_procedure(multi):
    rng = random.Random(5)
    entries = [
        IndexEntry(f"{k}.png", tuple(sorted(rng.sample(range(6), 2 if multi and k % 3 == 0 else 1))))
        for k in range(300)
    ]
    for seed in (0, 1, 2):
        drawn = sample_few_shot(entries, 4, seed, 6)
        assert drawn == vision_datasets_few_shot(entries, 4, seed, 6)
        counts = collections.Counter(c for entry in drawn for c in entry.labels)
        assert all(counts[c] >= 4 for c in range(6))
        if not multi:
            assert all(counts[c] == 4 for c in range(6))
    with pytest.raises(DatasetError, match="fewer than 400"):
        sample_few_shot(entries, 400, 0, 6)


def test_index_files_keep_spaces_in_paths(tmp_path):
    (tmp_path / "index.txt").write_text("a photo.jpg 1,0\n\n")
    assert read_index(tmp_path / "index.txt", 2) == [IndexEntry("a photo.jpg", (0, 1))]
    (tmp_path / "index.txt").write_text("images\\train.zip@cats\\1.jpg 0\n")  # written on Windows
    assert read_index(tmp_path / "index.txt", 2) == [IndexEntry("images/train.zip@cats/1.jpg", (0,))]


def test_multi_label_loss_is_cross_entropy_against_the_uniform_distribution_over_positives():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    log_p = F.log_softmax(logits, dim=1)
    expected = -((log_p[0, 0] + log_p[0, 2]) / 2 + log_p[1, 1]) / 2  # MVLPT: label /= label.sum(); CE
    loss = PromptModule.task_loss(SimpleNamespace(), PromptOutput(logits=logits), targets)
    assert float(loss) == pytest.approx(float(expected), abs=1e-6)
    indices = PromptModule.task_loss(SimpleNamespace(), PromptOutput(logits=logits), torch.tensor([0, 1]))
    assert float(indices) == pytest.approx(float(-(log_p[0, 0] + log_p[1, 1]) / 2), abs=1e-6)


def test_evaluator_logs_the_11_point_map_of_raw_scores():
    generator = torch.Generator().manual_seed(0)
    targets = (torch.rand(40, 5, generator=generator) < 0.4).long()
    scores = 25 * torch.randn(40, 5, generator=generator) + 20 * targets  # CLIP-scale logits: sigmoid would tie
    module = SimpleNamespace(classnames=list("abcde"), device=torch.device("cpu"))
    evaluator = MultiLabelEvaluator(n_point_map=11)
    evaluator.start(module, "test")
    for start in (0, 20):
        evaluator.update(module, None, scores[start : start + 20], targets[start : start + 20], "test", 0)
    logged = evaluator.finish(module, "test")
    metric = NPointMeanAveragePrecision()
    metric.update(scores, targets)
    assert float(logged["test/map_11point"]) == pytest.approx(float(metric.compute()), abs=1e-12)
    assert {"test/macro_f1", "test/map"} <= logged.keys()
    assert MultiLabelEvaluator().monitor == ("val/macro_f1", "max")


def test_coop_trains_on_multi_label_data_and_reports_the_11_point_map(tmp_path):
    from lightning.pytorch import Trainer

    from lightning_prompts.backbones import OpenCLIP
    from lightning_prompts.methods import CoOp

    data = ElevaterDataModule(multi_label=True, synthetic=SYNTHETIC, image_size=32, batch_size=8, num_workers=0)
    model = CoOp(OpenCLIP("tiny", pretrained=None), data.classnames, n_ctx=4)
    trainer = Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu",
        default_root_dir=tmp_path,
    )  # fmt: skip
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    trainer.fit(model, data)
    metrics = trainer.callback_metrics
    assert 0.0 < float(metrics["val/map_11point"]) <= 1.0 and torch.isfinite(metrics["train/loss"])
    trained = dict(model.named_parameters())
    assert before and all(not torch.equal(value, trained[name]) for name, value in before.items())


def write_manifest(path: Path, images, annotations, categories=((1, "cat"), (2, "dog"), (3, "bus"))) -> None:
    path.write_text(
        json.dumps(
            {
                "images": [dict(id=i, file_name=f, **({"zip_file": z} if z else {})) for i, f, z in images],
                "annotations": [{"id": k, "image_id": i, "category_id": c} for k, (i, c) in enumerate(annotations)],
                "categories": [{"id": c, "name": n} for c, n in categories],
            }
        )
    )


def test_coco_manifests_are_read_like_the_index_files(tmp_path):
    root = write_dataset(tmp_path / "set", ["1.png 1"])
    images = [(1, "images/0.png", "train_images.zip"), (2, "1.png", None), (3, "2.png", None)]
    for split in ("train", "test"):
        write_manifest(root / f"{split}.json", images, [(1, 1), (2, 2), (3, 3)])
    data = ElevaterDataModule(
        root=str(root), train_index="train.json", test_index="test.json", image_size=16, num_workers=0, batch_size=3
    )
    data.setup("fit")
    assert data.classnames == ["cat", "dog", "bus"]  # category order by id; labels.txt is not read
    assert next(iter(data.val_dataloader()))["label"].tolist() == [0, 1, 2]
    write_manifest(root / "bad.json", [(1, "https://example.com/a.jpg", None)], [(1, 1)])
    with pytest.raises(DatasetError, match="is a URL"):
        ElevaterDataModule(root=str(root), train_index="bad.json", num_workers=0).setup("fit")
    write_manifest(root / "bad.json", images, [(1, 1), (2, 9), (3, 3)])
    with pytest.raises(DatasetError, match="unknown category 9"):
        ElevaterDataModule(root=str(root), train_index="bad.json", num_workers=0).setup("fit")
    write_manifest(root / "bad.json", images, [(1, 1), (2, 2)])
    with pytest.raises(DatasetError, match="has no annotation"):
        ElevaterDataModule(root=str(root), train_index="bad.json", num_workers=0).setup("fit")
    (root / "bad.json").write_text('{"images": [{"file_name": "1.png"}]}')
    with pytest.raises(DatasetError, match="not a COCO classification manifest"):
        ElevaterDataModule(root=str(root), train_index="bad.json", num_workers=0).setup("fit")


def test_downloaded_format_recipe_with_the_mean_per_class_override(tmp_path):
    from lightning_prompts.cli import run_cli

    recipes = Path(__file__).resolve().parents[2] / "recipes"
    cli = run_cli(
        [
            "fit",
            "--config", str(recipes / "mvlpt" / "target_elevater_downloaded.yaml"),
            "--config", str(recipes / "_tiny" / "clip.yaml"),
            "--model.init_args.prompt_init", "null",  # the source prompt is another stage's output
            "--model.init_args.evaluator", "{class_path: ClassificationEvaluator, init_args: {mean_per_class: true}}",
            "--trainer.default_root_dir", str(tmp_path),
        ]
    )  # fmt: skip
    assert type(cli.datamodule).__name__ == "ElevaterDataModule" and not cli.datamodule.multi_label
    assert {"val/acc", "val/mean_per_class"} <= set(cli.trainer.callback_metrics)


def official_validation_indices(labels: np.ndarray, val_split: float = 0.2) -> set[int]:
    """The toolkit's ``train_val_dataset`` (MVLPT's trainers/vision_benchmark/evaluation/feature.py), on labels."""
    if labels.ndim == 1:
        val = []
        for label, count in Counter(labels.tolist()).items():
            val.append(np.where(labels == label)[0][: math.ceil(count * val_split)])
        return set(np.concatenate(val).tolist())
    labels = labels.copy()
    target = np.ceil(np.sum(labels, axis=0) * val_split)
    pending, val = np.where(target > 0)[0], []
    while pending.size > 0:
        sample = np.where(labels[:, pending[0]] > 0)[0][0]
        val.append(sample)
        target -= labels[sample]
        labels[sample] = 0
        pending = np.where(target > 0)[0]
    return set(val)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("multi_label", [False, True])
def test_toolkit_validation_split_equals_the_toolkits(seed, multi_label):
    rng = np.random.default_rng(seed)
    if multi_label:
        hot = (rng.random((60, 5)) < 0.3).astype(int)
        hot[np.arange(60), rng.integers(0, 5, 60)] = 1  # every image has a class
        entries = [IndexEntry(f"{k}.png", tuple(np.nonzero(row)[0].tolist())) for k, row in enumerate(hot)]
        labels = hot
    else:
        labels = rng.integers(0, 4, 57)
        entries = [IndexEntry(f"{k}.png", (int(label),)) for k, label in enumerate(labels)]
    train, val = toolkit_validation_split(entries, 5 if multi_label else 4, multi_label)
    expected = official_validation_indices(labels)
    assert {int(entry.image.split(".")[0]) for entry in val} == expected
    assert len(train) + len(val) == len(entries) and not {e.image for e in train} & {e.image for e in val}
    assert [entry.image for entry in train] == [e.image for k, e in enumerate(entries) if k not in expected]


def test_toolkit_split_by_hand():
    # 15 images of class 0 and 5 of class 1: the first ceil(3.0) = 3 and ceil(1.0) = 1 of each validate
    entries = [IndexEntry(f"{k}.png", (0,)) for k in range(15)] + [IndexEntry(f"{k}.png", (1,)) for k in range(15, 20)]
    train, val = toolkit_validation_split(entries, 2, multi_label=False)
    assert [e.image for e in val] == ["0.png", "1.png", "2.png", "15.png"] and len(train) == 16
    # multi-label: class 0 needs ceil(0.6) = 1, class 1 ceil(0.4) = 1; image 0 (classes 0 and 1) serves both
    multi = [IndexEntry("a.png", (0, 1)), IndexEntry("b.png", (0,)), IndexEntry("c.png", (1, 2))]
    train, val = toolkit_validation_split(multi, 3, multi_label=True)
    assert [e.image for e in val] == ["a.png", "c.png"] and [e.image for e in train] == ["b.png"]


def test_the_module_validates_as_the_toolkit_and_resizes_without_augmentation(tmp_path):
    from torchvision.transforms import v2

    data = ElevaterDataModule(synthetic=Synthetic(num_classes=3, images_per_class=10), shots=5, image_size=16,
                              num_workers=0)  # fmt: skip
    data.setup("fit")
    train, val = data._datasets["train"].entries, data._datasets["val"].entries
    assert len(train) == 3 * 4 and len(val) == 3  # of 5 shots per class, ceil(0.2 * 5) = 1 validates
    assert not {e.image for e in train} & {e.image for e in val}
    one_shot = ElevaterDataModule(synthetic=Synthetic(num_classes=3, images_per_class=4), shots=1, num_workers=0)
    one_shot.setup("fit")
    assert one_shot._datasets["train"].entries == one_shot._datasets["val"].entries  # the toolkit's 1-shot case
    steps = data._datasets["train"].transform.transforms
    assert isinstance(steps[0], v2.Resize) and steps[0].size == [16, 16]
    assert steps[0].interpolation == v2.InterpolationMode.BICUBIC
    assert not any(isinstance(step, (v2.RandomResizedCrop, v2.RandomHorizontalFlip)) for step in steps)
    with pytest.raises(ValueError, match="validation must be"):
        ElevaterDataModule(validation="val")
