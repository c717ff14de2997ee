"""Malformed data files: each fails at setup with one DatasetError naming the file and the culprit, instead of a
raw decoder error, a silent extra class, or a run on the wrong images."""

from __future__ import annotations

import bz2
import json
import shutil
import warnings
from pathlib import Path

import pytest

from lightning_prompts.data import (
    FewShotImageDataModule,
    FGVCDataModule,
    ImageFolderDataModule,
    TextClassificationDataModule,
    VTAB1kDataModule,
)
from lightning_prompts.data.images import ImageItem, classnames_by_label
from lightning_prompts.data.synthetic import (
    write_image_folder_layout,
    write_json_map_layout,
    write_list_layout,
    write_split_json_layout,
)
from lightning_prompts.errors import DatasetError

SMALL = {"image_size": 16, "num_workers": 0, "batch_size": 2, "eval_batch_size": 2}
ROWS = "".join(f"good movie {i},pos\nbad movie {i},neg\n" for i in range(5))  # rows 1-10 of every CSV below
JSON_ROWS = "".join(json.dumps({"text": f"movie {i}", "label": label}) + "\n" for i in range(5) for label in "pn")


# -- text files -------------------------------------------------------------------------------------
TEXT_CASES = {
    # name: (file name, content, what the message must name besides the file)
    "latin-1 csv": ("train.csv", ("text,label\n" + ROWS + "café,pos\n").encode("latin-1"), "line 12"),
    "text in a .gz": ("train.csv.gz", ("text,label\n" + ROWS).encode(), ".gz"),
    "text in a .bz2": ("train.csv.bz2", ("text,label\n" + ROWS).encode(), ".bz2"),
    "text in an .xz": ("train.csv.xz", ("text,label\n" + ROWS).encode(), ".xz"),
    "cut jsonl line": ("train.jsonl", (JSON_ROWS + '{"text": "b", "label": \n').encode(), "line 11"),
    "jsonl list line": ("train.jsonl", (JSON_ROWS + '["b", "p"]\n').encode(), "line 11"),
    "jsonl string line": ("train.jsonl", (JSON_ROWS + '"b p"\n').encode(), "line 11"),
    "csv row without its label cell": ("train.csv", ("text,label\n" + ROWS + "forgot the label\n").encode(), "row 11"),
    "jsonl null label": ("train.jsonl", (JSON_ROWS + '{"text": "x", "label": null}\n').encode(), "row 11"),
    "empty label cell": ("train.csv", ("text,label\n" + ROWS + "no label,\n").encode(), "row 11"),
    "blank label cell": ("train.tsv", ("text\tlabel\n" + ROWS.replace(",", "\t") + "no label\t \n").encode(), "row 11"),
}


@pytest.mark.parametrize("case", list(TEXT_CASES))
def test_malformed_text_file_is_named_with_its_culprit(tmp_path, case):
    name, content, culprit = TEXT_CASES[case]
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DatasetError) as error:
        TextClassificationDataModule(train_file=str(tmp_path / name)).setup("fit")
    assert str(tmp_path / name) in str(error.value) and culprit in str(error.value)


def test_a_compressed_non_utf8_file_names_its_line(tmp_path):
    (tmp_path / "train.csv.bz2").write_bytes(bz2.compress(("text,label\n" + ROWS + "café,pos\n").encode("latin-1")))
    with pytest.raises(DatasetError, match=r"train\.csv\.bz2: line 12 is not UTF-8"):
        TextClassificationDataModule(train_file=str(tmp_path / "train.csv.bz2")).setup("fit")


def test_a_byte_order_mark_before_the_csv_header_is_read_past(tmp_path):
    (tmp_path / "train.csv").write_bytes(("\ufefftext,label\n" + ROWS).encode())
    data = TextClassificationDataModule(train_file=str(tmp_path / "train.csv"))
    data.setup("fit")
    assert data.classnames == ["neg", "pos"]
    assert "good movie 0" in data._splits["train"][0] + data._splits["val"][0]


def test_an_empty_multi_label_cell_is_still_a_row_without_labels(tmp_path):
    rows = "".join(f"text {i},a|b\n" for i in range(5)) + "no labels,\n"
    (tmp_path / "train.csv").write_text("text,label\n" + rows)
    data = TextClassificationDataModule(train_file=str(tmp_path / "train.csv"), label_separator="|", val_fraction=0.2)
    data.setup("fit")
    assert data.classnames == ["a", "b"] and [] in data._splits["train"][1] + data._splits["val"][1]


# -- Dassl split files -------------------------------------------------------------------------------
SPLIT_FILE = "split_zhou_DescribableTextures.json"


def dassl_tree(root: Path) -> Path:
    write_split_json_layout(root / "dtd", "images", SPLIT_FILE, 2, 2, 16, 0)
    return root / "dtd" / SPLIT_FILE


@pytest.mark.parametrize("label", [-1, "dog", None, 1.7, True, "1"])
def test_dassl_labels_must_be_whole_numbers_from_0(tmp_path, label):
    split_file = dassl_tree(tmp_path)
    split = json.loads(split_file.read_text())
    split["train"][1][1] = label
    split_file.write_text(json.dumps(split))
    with pytest.raises(DatasetError) as error:
        FewShotImageDataModule(root=str(tmp_path), dataset="dtd", shots=-1, **SMALL).setup("fit")
    message = str(error.value)
    assert str(split_file) in message and "train entry 1" in message and f"label {label!r}" in message, message


def test_a_latin1_dassl_split_file_is_named(tmp_path):
    split_file = dassl_tree(tmp_path)
    split_file.write_bytes(split_file.read_text().replace("airplane", "avión").encode("latin-1"))
    with pytest.raises(DatasetError, match=rf"{SPLIT_FILE} is not UTF-8"):
        FewShotImageDataModule(root=str(tmp_path), dataset="dtd", shots=-1, **SMALL).setup("fit")


def test_an_image_listed_twice_in_a_split_or_in_train_and_test_is_warned_about(tmp_path):
    split_file = dassl_tree(tmp_path)
    split = json.loads(split_file.read_text())
    twice = {**split, "train": [*split["train"], split["train"][0]]}
    split_file.write_text(json.dumps(twice))
    first = split["train"][0][0]
    with pytest.warns(UserWarning, match=rf"the train list gives 1 image\(s\) more than once, e.g. {first}"):
        FewShotImageDataModule(root=str(tmp_path), dataset="dtd", shots=-1, **SMALL).setup("fit")
    leaked = {**split, "test": [*split["test"], split["train"][1]]}
    split_file.write_text(json.dumps(leaked))
    with pytest.warns(UserWarning, match=rf"1 test image\(s\) are also training images, e.g. {split['train'][1][0]}"):
        FewShotImageDataModule(root=str(tmp_path), dataset="dtd", shots=-1, **SMALL).setup("fit")


def test_an_unlabelled_image_cannot_define_a_class(tmp_path):
    items = [ImageItem(tmp_path / "a.jpg", 0, "cat"), ImageItem(tmp_path / "b.jpg", -1, "dog")]
    with pytest.raises(DatasetError, match=r"somewhere: image .*b\.jpg has label -1"):
        classnames_by_label(items, "somewhere")


def test_an_empty_test_split_is_refused(tmp_path):
    split_file = dassl_tree(tmp_path)
    split = json.loads(split_file.read_text())
    split["test"] = []
    split_file.write_text(json.dumps(split))
    data = FewShotImageDataModule(root=str(tmp_path), dataset="dtd", shots=-1, **SMALL)
    with pytest.raises(DatasetError, match=r"test split 'test' holds no images") as error:
        data.setup("test")
    assert "dtd" in str(error.value)


# -- VTAB-1k lists and FGVC json ---------------------------------------------------------------------
def vtab_tree(root: Path) -> Path:
    names = {"train800val200": "train800val200.txt", "train800": "train800.txt", "val200": "val200.txt"}
    write_list_layout(root / "cifar", {**names, "test": "test.txt"}, 2, 2, 16, 0)
    return root / "cifar" / "train800val200.txt"


def test_a_negative_vtab_training_label_is_refused(tmp_path):
    train_list = vtab_tree(tmp_path)
    lines = train_list.read_text().splitlines()
    lines[2] = lines[2].rsplit(" ", 1)[0] + " -1"
    train_list.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"train800val200\.txt:3: label -1 is negative"):
        VTAB1kDataModule(root=str(tmp_path), task="cifar", **SMALL).setup("fit")


def test_an_empty_vtab_training_list_is_refused(tmp_path):
    vtab_tree(tmp_path).write_text("")
    with pytest.raises(DatasetError, match=r"cifar/train800val200\.txt lists no images"):
        VTAB1kDataModule(root=str(tmp_path), task="cifar", **SMALL).setup("fit")


def test_an_fgvc_split_that_is_a_list_is_refused(tmp_path):
    write_json_map_layout(tmp_path, 2, 2, 16, 0)
    mapping = json.loads((tmp_path / "train.json").read_text())
    (tmp_path / "train.json").write_text(json.dumps([[path, class_id] for path, class_id in mapping.items()]))
    with pytest.raises(DatasetError, match=r"train\.json holds a JSON list; .* one object mapping each image path"):
        FGVCDataModule(root=str(tmp_path), **SMALL).setup("fit")


# -- ImageFolder splits ------------------------------------------------------------------------------
@pytest.mark.parametrize("split", ["val", "test"])
def test_a_split_folder_without_images_is_refused_not_replaced(tmp_path, split):
    write_image_folder_layout(tmp_path, 2, 2, 16, 0)
    for image in (tmp_path / split).rglob("*.jpg"):
        image.rename(image.with_suffix(".heic"))  # a format the reader does not take
    with pytest.raises(DatasetError, match=r"holds no images \(.*\.jpg") as error:
        ImageFolderDataModule(root=str(tmp_path), **SMALL).setup("fit")
    assert str(tmp_path / split) in str(error.value)


def test_validation_on_the_training_images_is_warned_about(tmp_path):
    write_image_folder_layout(tmp_path, 2, 2, 16, 0)
    with warnings.catch_warnings():  # with a val split: no warning
        warnings.filterwarnings("error", message=".*no validation split")
        ImageFolderDataModule(root=str(tmp_path), **SMALL).setup("fit")
    shutil.rmtree(tmp_path / "val")
    data = ImageFolderDataModule(root=str(tmp_path), **SMALL)
    with pytest.warns(UserWarning, match=r"no validation split, so validation runs on the training images") as caught:
        data.setup("fit")
    ours = [warning for warning in caught if "no validation split" in str(warning.message)]
    assert len(ours) == 1 and "best-checkpoint selection" in str(ours[0].message)
    assert data._datasets["val"].items == data._datasets["train"].items  # the behaviour recipes rely on is kept


def test_an_image_file_in_a_format_that_runs_an_external_program_is_refused_unrun(tmp_path, monkeypatch):
    # PIL opens files by their content: an EPS file named .jpg would be rendered by Ghostscript (which runs its
    # PostScript). A fake `gs` first on the PATH records any call.
    import os

    from lightning_prompts.data.images import ImageItem, verify_images

    bin_folder, called = tmp_path / "bin", tmp_path / "gs_was_called"
    bin_folder.mkdir()
    (bin_folder / "gs").write_text(f"#!/bin/sh\ntouch {called}\nexit 1\n")
    (bin_folder / "gs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_folder}{os.pathsep}{os.environ['PATH']}")
    image = tmp_path / "cat" / "0.jpg"
    image.parent.mkdir()
    image.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nnewpath 0 0 moveto 8 8 lineto stroke\n")
    with pytest.raises(DatasetError, match=r"0\.jpg.*cannot be read"):
        verify_images([ImageItem(image, 0, "cat")], "the test folder")
    assert not called.exists()
