"""Own data (ImageFolder), VTAB-1k folders and VPT's FGVC json: layouts, labels, bad input."""

from __future__ import annotations

import json

import pytest

from lightning_prompts.data import (
    FewShotImageDataModule,
    FGVCDataModule,
    ImageFolderDataModule,
    Synthetic,
    TextClassificationDataModule,
    VTAB1kDataModule,
)
from lightning_prompts.data.synthetic import write_image_folder_layout, write_json_map_layout
from lightning_prompts.errors import ConfigurationError, DatasetError

SMALL = {"image_size": 32, "num_workers": 0, "batch_size": 4, "eval_batch_size": 4}


def test_image_folder_reads_classes_from_train_folders(tmp_path):
    write_image_folder_layout(tmp_path, num_classes=3, per_class=4, size=16, seed=0)
    data = ImageFolderDataModule(root=str(tmp_path), shots=2, **SMALL)
    assert data.classnames == ["airplane", "bicycle", "bird"]
    data.setup("fit")
    assert len(data._datasets["train"]) == 6
    assert data.test_class_sets == {"test": data.classnames}


@pytest.mark.parametrize(("shots", "train", "val"), [(5, 4, 1), (-1, 8, 2), (1, 1, 1)])
def test_image_folder_toolkit_validation_holds_out_a_fifth_of_each_class(tmp_path, shots, train, val):
    """MVLPT's ELEVATER protocol: per class the first ceil(0.2 n) drawn images validate, the rest train (one shot:
    the same image does both); the val/ folder is not read."""
    write_image_folder_layout(tmp_path, num_classes=3, per_class=10, size=16, seed=0)
    data = ImageFolderDataModule(root=str(tmp_path), shots=shots, validation="toolkit", seed=2, **SMALL)
    splits = data._splits()
    for label in range(3):
        trained = [item.path for item in splits.train if item.label == label]
        validated = [item.path for item in splits.val if item.label == label]
        assert (len(trained), len(validated)) == (train, val)
        assert (set(trained) == set(validated)) if shots == 1 else not set(trained) & set(validated)
        assert all(path.parent.parent.name == "train" for path in validated)
    folder = ImageFolderDataModule(root=str(tmp_path), shots=shots, seed=2, **SMALL)._splits()
    drawn = [item.path for item in folder.train]
    assert sorted(drawn) == sorted({item.path for item in [*splits.train, *splits.val]})  # the same draw, divided
    with pytest.raises(ConfigurationError, match="validation must be 'folder' or 'toolkit'"):
        ImageFolderDataModule(root=str(tmp_path), validation="index")


def test_image_folder_rejects_an_unknown_test_class(tmp_path):
    write_image_folder_layout(tmp_path, num_classes=2, per_class=2, size=16, seed=0)
    (tmp_path / "test" / "zebra").mkdir()
    with pytest.raises(DatasetError, match=r"class folders \['zebra'\]"):
        ImageFolderDataModule(root=str(tmp_path), **SMALL).classnames


def test_vtab_lists_train_on_train800val200_in_final_mode():
    data = VTAB1kDataModule(task="dtd", synthetic=Synthetic(num_classes=3, images_per_class=2), **SMALL)
    data.setup("fit")
    assert data.classnames == ["class 0", "class 1", "class 2"]
    assert all("train800val200" in str(item.path) for item in data._datasets["train"].items)
    tune = VTAB1kDataModule(task="dtd", mode="tune", synthetic=Synthetic(num_classes=3, images_per_class=2), **SMALL)
    tune.setup("fit")
    assert all("/train800/" in str(item.path) for item in tune._datasets["train"].items)


def test_vtab_lists_written_by_hand_give_their_paths_and_labels(tmp_path):
    """A task folder written here in VTAB-1k's layout (``images/<split>/<file> <label>`` lines; a file name with a
    space): every item is its line, final runs validate on val200 and test on test, tuning runs test on val200."""
    from lightning_prompts.data.synthetic import write_image

    task = tmp_path / "vtab-1k" / "dtd"
    lines: dict[str, list[str]] = {}
    for split, count in (("train800", 6), ("val200", 3), ("test", 4)):
        lines[split] = []
        for index in range(count):
            relative = f"images/{split}/photo {index}.jpg"
            write_image(task / relative, index % 3, index, 16, 0)
            lines[split].append(f"{relative} {index % 3}")
        (task / f"{split}.txt").write_text("\n".join(lines[split]) + "\n")
    (task / "train800val200.txt").write_text("\n".join(lines["train800"] + lines["val200"]) + "\n")

    def as_lines(items):
        return [f"{item.path.relative_to(task)} {item.label}" for item in items]

    final = VTAB1kDataModule(root=str(tmp_path / "vtab-1k"), task="dtd", **SMALL)
    final.setup("test")
    splits = final.load_splits()
    assert final.classnames == ["class 0", "class 1", "class 2"]
    assert as_lines(splits.train) == lines["train800"] + lines["val200"] and as_lines(splits.val) == lines["val200"]
    assert as_lines(splits.test_sets["test"][1]) == lines["test"]
    tune = VTAB1kDataModule(root=str(tmp_path / "vtab-1k"), task="dtd", mode="tune", **SMALL).load_splits()
    assert as_lines(tune.train) == lines["train800"] and as_lines(tune.test_sets["test"][1]) == lines["val200"]


def test_vtab_unknown_task():
    with pytest.raises(ValueError, match="Unknown VTAB-1k task"):
        VTAB1kDataModule(task="imagenet")


def test_fgvc_relabels_sorted_class_ids_and_names_from_folders(tmp_path):
    write_json_map_layout(tmp_path, num_classes=3, per_class=2, size=16, seed=0)
    data = FGVCDataModule(root=str(tmp_path), **SMALL)
    assert data.classnames == ["airplane", "bicycle", "bird"]
    splits = data._splits()
    assert sorted({item.label for item in splits.train}) == [0, 1, 2]


def test_fgvc_integer_class_ids_are_ordered_numerically_as_vpts_sorted_does(tmp_path):
    write_json_map_layout(tmp_path, num_classes=3, per_class=2, size=16, seed=0)
    integer = {"001": 1, "002": 2, "003": 10}  # JSON integers: VPT's sorted() puts 10 after 2, not before
    for split in ("train", "val", "test"):
        mapping = json.loads((tmp_path / f"{split}.json").read_text())
        (tmp_path / f"{split}.json").write_text(json.dumps({path: integer[cid] for path, cid in mapping.items()}))
    data = FGVCDataModule(root=str(tmp_path), **SMALL)
    assert data.classnames == ["airplane", "bicycle", "bird"]
    train = data._splits().train
    assert {item.path.parent.name: item.label for item in train} == {"001.airplane": 0, "002.bicycle": 1, "003.bird": 2}


def test_fgvc_test_entry_with_unknown_class(tmp_path):
    write_json_map_layout(tmp_path, num_classes=2, per_class=2, size=16, seed=0)
    test = json.loads((tmp_path / "test.json").read_text())
    test[next(iter(test))] = "099"
    (tmp_path / "test.json").write_text(json.dumps(test))
    with pytest.raises(DatasetError, match="class id '099'"):
        FGVCDataModule(root=str(tmp_path), **SMALL).classnames


@pytest.mark.parametrize(("size", "resize"), [(224, 256), (384, 438), (448, 512)])
def test_fgvc_preset_resizes_as_vpts_table(size, resize):
    """VPT's src/data/transforms.py: resize to 256 / 438 / 512, then crop 224 / 384 / 448 (438 is not 384·256/224)."""
    from torchvision.transforms import v2

    from lightning_prompts.data.transforms import build_transform

    for train in (True, False):
        steps = build_transform("fgvc", size, "imagenet", train=train).transforms
        assert isinstance(steps[0], v2.Resize) and steps[0].size == [resize]
        assert steps[1].size == (size, size)


@pytest.mark.parametrize(
    ("data_module", "kwargs", "message"),
    [
        (ImageFolderDataModule, {"shots": 0}, "shots must be a positive number of examples per class, or -1"),
        (ImageFolderDataModule, {"shots": -5}, "shots must be a positive number of examples per class, or -1"),
        (ImageFolderDataModule, {"batch_size": 0}, "batch_size must be at least 1, got 0"),
        (ImageFolderDataModule, {"num_workers": -1}, "num_workers must be at least 0, got -1"),
        (ImageFolderDataModule, {"image_size": 0}, "image_size must be at least 1, got 0"),
        (FewShotImageDataModule, {"dataset": "dtd", "shots": 0}, "shots must be a positive number"),
        (TextClassificationDataModule, {"train_file": "x.csv", "shots": -2}, "shots must be a positive number"),
        (TextClassificationDataModule, {"train_file": "x.csv", "eval_batch_size": 0}, "eval_batch_size must be at"),
    ],
)
def test_a_shot_count_or_loader_size_that_cannot_work_is_refused_at_construction(data_module, kwargs, message):
    """0 or a negative number of shots read as "all" (a typo trained on every image); a batch size of 0 failed only
    once training had started, after the run folder was written."""
    with pytest.raises(ValueError, match=message):
        data_module(**kwargs)
