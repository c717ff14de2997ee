"""Multi-label class-incremental streams: VOC 2007 and COCO 2014 read as the official loaders read them, the
task subsets of the protocol, and MULTI-LANE trained and scored on one (mAP / CF1 / OF1 over seen classes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from lightning.pytorch import Trainer
from PIL import Image

from lightning_prompts.backbones import TimmViT
from lightning_prompts.data.multilabel_incremental import MultiLabelIncrementalDataModule, read_coco, read_voc
from lightning_prompts.errors import ConfigurationError, DatasetError
from lightning_prompts.methods.multi_lane import MultiLane


def write_voc(root, split, table):
    """``table``: {class: {image id: '1'|'0'|'-1'}}."""
    main = root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"
    main.mkdir(parents=True, exist_ok=True)
    images = root / "VOCdevkit" / "VOC2007" / "JPEGImages"
    images.mkdir(parents=True, exist_ok=True)
    (main / f"{split}.txt").write_text("\n".join(sorted({i for rows in table.values() for i in rows})))
    for name, rows in table.items():
        (main / f"{name}_{split}.txt").write_text("".join(f"{i} {v}\n" for i, v in rows.items()))
        for image_id in rows:
            Image.new("RGB", (40, 30), (10 * len(image_id), 80, 120)).save(images / f"{image_id}.jpg")


VOC_TRAIN = {
    "dog": {"000005": "-1", "000007": "1", "000009": "0"},
    "cat": {"000005": "1", "000007": "-1", "000009": "1"},
    "bird": {"000005": "1", "000007": "-1", "000009": "-1"},
    "aeroplane": {"000005": "-1", "000007": "-1", "000009": "-1"},
}


def test_voc_reads_positives_only_in_the_official_order(tmp_path):
    write_voc(tmp_path, "trainval", VOC_TRAIN)
    names, paths, labels = read_voc(tmp_path, "trainval")
    assert names == ["aeroplane", "bird", "cat", "dog"]  # sorted
    assert [p.name for p in paths] == ["000005.jpg", "000007.jpg", "000009.jpg"]  # first seen in sorted files
    # 000009 is "0" (difficult) for dog: not a positive; aeroplane has none
    assert labels == [[1, 2], [3], [2]]
    (tmp_path / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "cat_trainval.txt").write_text("000005 yes\n")
    with pytest.raises(DatasetError, match="cat_trainval.txt:1: expected"):
        read_voc(tmp_path, "trainval")
    with pytest.raises(DatasetError, match="VOC 2007 not found"):
        read_voc(tmp_path / "nowhere", "trainval")


def test_coco_reads_sorted_category_names_and_unique_labels(tmp_path):
    folder = tmp_path / "coco" / "annotations"
    folder.mkdir(parents=True)
    content = {
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
        "images": [{"id": 42, "file_name": "a.jpg"}, {"id": 7, "file_name": "b.jpg"}],
        "annotations": [
            {"image_id": 7, "category_id": 1},
            {"image_id": 42, "category_id": 18},
            {"image_id": 7, "category_id": 1},
            {"image_id": 7, "category_id": 3},
        ],
    }
    (folder / "instances_val2014.json").write_text(json.dumps(content))
    names, paths, labels = read_coco(tmp_path, "val")
    assert names == ["car", "dog", "person"]
    assert [str(p.relative_to(tmp_path)) for p in paths] == ["coco/val/a.jpg", "coco/val/b.jpg"]
    assert labels == [[1], [0, 2]]
    content["annotations"].append({"image_id": 99, "category_id": 1})
    (folder / "instances_val2014.json").write_text(json.dumps(content))
    with pytest.raises(DatasetError, match="names image 99"):
        read_coco(tmp_path, "val")


def test_tasks_hold_images_with_any_current_class_and_validation_any_seen_class(tmp_path):
    write_voc(tmp_path, "trainval", VOC_TRAIN)
    write_voc(tmp_path, "test", VOC_TRAIN)
    data = MultiLabelIncrementalDataModule("voc", tmp_path, base_classes=2, num_tasks=2, image_size=32, batch_size=8)
    assert data.classes_per_task == [2, 2] and data.seen_classes(0) == 2
    train = data._subset("train", 0, 2, train=True)  # aeroplane, bird: only 000005 (bird)
    assert train.labels == [[1, 2]]
    sample = train[0]
    assert sample["label"].tolist() == [0, 1, 1, 0]  # all of the image's labels travel; the method masks
    assert data._subset("train", 2, 4, train=True).labels == [[1, 2], [3], [2]]
    with pytest.raises(DatasetError, match="base task of 3 and 2 equal increments"):
        MultiLabelIncrementalDataModule("voc", tmp_path, base_classes=3, num_tasks=3).data()


def test_multi_lane_trains_on_a_multilabel_stream_and_logs_map_cf1_of1(tmp_path):
    spec = {"num_classes": 4, "train_images": 8, "test_images": 8, "image_size": 32}
    data = MultiLabelIncrementalDataModule(base_classes=2, num_tasks=2, epochs_per_task=1, image_size=32,
                                           batch_size=4, eval_batch_size=4, synthetic=spec)  # fmt: skip
    settings = {"num_selectors": 2, "num_prompts": 2, "prompt_blocks": 1}
    module = MultiLane(TimmViT("tiny"), data.classnames, num_tasks=2, multi_label=True, **settings)
    trainer = Trainer(max_epochs=2, reload_dataloaders_every_n_epochs=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                      default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(module, data)
    history = module.evaluator.map_history
    assert not history.isnan().any() and 0.0 <= float(history.min()) <= float(history.max()) <= 1.0
    metrics = trainer.callback_metrics
    assert float(metrics["val/avg_map"]) == pytest.approx(float(history.mean()), abs=1e-6)
    assert float(metrics["val/map"]) == pytest.approx(float(history[1]), abs=1e-6)
    (tested,) = trainer.test(module, data, verbose=False)
    assert {"test/map", "test/cf1", "test/of1"} <= set(tested)
    single = MultiLane(TimmViT("tiny"), data.classnames, num_tasks=2, **settings)
    with pytest.raises(ConfigurationError, match="multi_label: True"):
        Trainer(max_epochs=2, logger=False, accelerator="cpu").fit(single, data)
    uneven = MultiLabelIncrementalDataModule(base_classes=2, num_tasks=3, synthetic=spec)
    wrong = MultiLane(TimmViT("tiny"), data.classnames, num_tasks=3, multi_label=True,
                      classes_per_task=[1, 2, 1], **settings)  # fmt: skip
    with pytest.raises(ConfigurationError, match=r"classes_per_task: \[2, 1, 1\]"):
        Trainer(max_epochs=3, logger=False, accelerator="cpu").fit(wrong, uneven)


def test_the_synthetic_stream_is_deterministic_and_multilabel():
    spec = {"num_classes": 5, "train_images": 10, "test_images": 5, "image_size": 16, "max_labels": 3}
    first = MultiLabelIncrementalDataModule(base_classes=1, num_tasks=5, synthetic=spec).data()
    second = MultiLabelIncrementalDataModule(base_classes=1, num_tasks=5, synthetic=spec).data()
    assert np.array_equal(first["train"][0], second["train"][0]) and first["train"][1] == second["train"][1]
    assert max(len(labels) for labels in first["train"][1]) > 1
