"""The Dassl/CoOp dataset format, few-shot sampling and base/novel splits, and the bad inputs."""

from __future__ import annotations

import json
import math
import pickle
import random
import sys
import types
from pathlib import Path

import pytest
import torch
from helpers import synthetic_fewshot

from lightning_prompts.data import FewShotImageDataModule
from lightning_prompts.data.dassl import DASSL_DATASETS, few_shot_splits, read_split_json, subsample_classes
from lightning_prompts.data.images import ImageItem
from lightning_prompts.data.synthetic import write_image, write_split_json_layout
from lightning_prompts.errors import DatasetError


@pytest.mark.parametrize("dataset", sorted(DASSL_DATASETS))
def test_every_coop_dataset_layout_reads(dataset):
    data = synthetic_fewshot(dataset, shots=2, num_classes=3)
    data.setup("fit")
    data.setup("test")
    assert len(data.classnames) == 3
    assert len(data._datasets["train"]) == 6  # 2 shots x 3 classes
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32)


def dassl_reference(train, val, shots, seed):
    """Dassl's generate_fewshot_dataset with the global `random` seeded by set_random_seed."""
    random.seed(seed)
    out = []
    for items, k in ((train, shots), (val, min(shots, 4))):
        groups = {}
        for item in items:
            groups.setdefault(item.label, []).append(item)
        chosen = []
        for group in groups.values():
            chosen.extend(random.sample(group, k) if len(group) >= k else group)
        out.append(chosen)
    return out


def make_items(num_classes, per_class, prefix="img"):
    return [ImageItem(Path(f"{prefix}/{c}/{i}.jpg"), c, f"c{c}") for c in range(num_classes) for i in range(per_class)]


def test_few_shot_sampling_reproduces_dassl_and_is_deterministic():
    train, val = make_items(5, 20), make_items(5, 9, "val")
    ours = few_shot_splits(train, val, 16, seed=2, where="x")
    assert list(ours) == dassl_reference(train, val, 16, 2)
    assert few_shot_splits(train, val, 16, seed=2, where="x") == ours  # independent of global state
    assert len(ours[1]) == 5 * 4  # validation capped at min(K, 4)
    assert few_shot_splits(train, val, 16, seed=3, where="x") != ours


def test_subsample_classes_relabels_base_and_new_like_coop():
    train, test = make_items(5, 2), make_items(5, 1, "test")
    base_train, base_test = subsample_classes("base", train, test)
    new_train, new_test = subsample_classes("new", train, test)
    assert sorted({i.label for i in base_train}) == [0, 1, 2]  # ceil(5/2) base classes
    assert sorted({i.label for i in new_test}) == [0, 1]  # relabelled from 0
    assert {i.classname for i in new_test} == {"c3", "c4"}
    assert len(base_test) == 3 and len(new_train) == 4


def test_base_to_novel_test_sets():
    data = synthetic_fewshot("eurosat", shots=2, num_classes=5, subsample_classes="base_to_novel")
    sets = data.test_class_sets
    assert list(sets) == ["base", "novel"]
    assert len(sets["base"]) == math.ceil(5 / 2) and len(sets["novel"]) == 2
    assert data.classnames == sets["base"]
    data.setup("test")
    novel_labels = {item.label for item in data._datasets["test"][1].items}
    assert novel_labels == {0, 1}


def test_dassl_fewshot_cache_is_used_verbatim(tmp_path):
    data = synthetic_fewshot("oxford_pets", shots=2, num_classes=3)
    data.classnames  # generate the synthetic tree
    root = data.root
    spec = DASSL_DATASETS["oxford_pets"]
    split = json.loads((root / spec.dataset_dir / spec.split_file).read_text())
    names = ["dassl", "dassl.data", "dassl.data.datasets", "dassl.data.datasets.base_dataset"]
    modules = {name: types.ModuleType(name) for name in names}
    module = modules[names[-1]]

    class Datum:  # what Dassl pickles: absolute paths of the machine that made the cache
        def __init__(self, impath, label, classname):
            self._impath, self._label, self._domain, self._classname = impath, label, 0, classname

    Datum.__module__, Datum.__qualname__ = module.__name__, "Datum"
    module.Datum = Datum
    sys.modules.update(modules)  # pretend Dassl is installed while pickling, as on the machine that made it
    try:
        chosen = [entry for entry in split["train"] if entry[0].endswith("_001.jpg")] + [split["train"][0]]
        cache = {
            "train": [Datum(f"/elsewhere/oxford_pets/images/{p}", label, c) for p, label, c in chosen],
            "val": [Datum(f"/elsewhere/oxford_pets/images/{p}", label, c) for p, label, c in split["val"][:3]],
        }
        folder = root / spec.dataset_dir / "split_fewshot"
        folder.mkdir()
        (folder / "shot_2-seed_1.pkl").write_bytes(pickle.dumps(cache))
    finally:
        for name in names:
            del sys.modules[name]
    fresh = FewShotImageDataModule(root=str(root), dataset="oxford_pets", shots=2, image_size=32, num_workers=0)
    loaded = fresh._splits()
    assert [i.path.name for i in loaded.train] == [Path(p).name for p, _, _ in chosen]
    assert all(i.path.is_file() for i in loaded.train)


# -- bad input -----------------------------------------------------------------------------------------
def test_missing_root_fails_with_the_expected_folder(tmp_path):
    data = FewShotImageDataModule(root=str(tmp_path / "nowhere"), dataset="caltech101")
    with pytest.raises(DatasetError, match="does not exist"):
        data.classnames


def test_missing_split_file_names_it(tmp_path):
    (tmp_path / "caltech-101").mkdir()
    data = FewShotImageDataModule(root=str(tmp_path), dataset="caltech101")
    with pytest.raises(DatasetError, match="split_zhou_Caltech101.json does not exist"):
        data.classnames


def write_tree(tmp_path, num_classes=3, per_class=4):
    root = tmp_path / "dtd"
    write_split_json_layout(root, "images", "split_zhou_DescribableTextures.json", num_classes, per_class, 16, 0)
    return root / "split_zhou_DescribableTextures.json"


def test_split_entry_with_unknown_class_is_rejected(tmp_path):
    split_file = write_tree(tmp_path)
    split = json.loads(split_file.read_text())
    split["test"][0][1] = 7  # a label the train split does not have
    split_file.write_text(json.dumps(split))
    data = FewShotImageDataModule(root=str(tmp_path), dataset="dtd", shots=2)
    with pytest.raises(DatasetError, match=r"test split: entry 0 .* not one of the 3 training classes"):
        data.classnames


def test_class_renamed_in_one_entry_is_rejected(tmp_path):
    split_file = write_tree(tmp_path)
    split = json.loads(split_file.read_text())
    split["val"][1][2] = "zebra"
    split_file.write_text(json.dumps(split))
    with pytest.raises(DatasetError, match="zebra"):
        FewShotImageDataModule(root=str(tmp_path), dataset="dtd", shots=2).classnames


def test_more_shots_than_images_is_an_error(tmp_path):
    write_tree(tmp_path, per_class=4)
    data = FewShotImageDataModule(root=str(tmp_path), dataset="dtd", shots=8)
    with pytest.raises(DatasetError, match="has 4 images, fewer than the 8 shots"):
        data.classnames


def test_unreadable_image_fails_at_setup(tmp_path):
    split_file = write_tree(tmp_path)
    first = json.loads(split_file.read_text())["train"][0][0]
    (tmp_path / "dtd" / "images" / first).write_bytes(b"not a jpeg")
    data = FewShotImageDataModule(root=str(tmp_path), dataset="dtd", shots=4, num_workers=0)
    with pytest.raises(DatasetError, match=r"cannot be read"):
        data.setup("fit")


def test_missing_image_fails_at_setup(tmp_path):
    split_file = write_tree(tmp_path)
    first = json.loads(split_file.read_text())["train"][0][0]
    (tmp_path / "dtd" / "images" / first).unlink()
    with pytest.raises(DatasetError, match="does not exist"):
        FewShotImageDataModule(root=str(tmp_path), dataset="dtd", shots=4).setup("fit")


def test_split_reader_joins_paths_on_the_image_folder(tmp_path):
    split_file = write_tree(tmp_path, num_classes=2, per_class=1)
    splits = read_split_json(split_file, tmp_path / "dtd" / "images")
    assert all(item.path.is_file() for item in splits["train"])
    assert [item.classname for item in splits["train"]] == ["airplane", "bicycle"]
    write_image(tmp_path / "x.jpg", 0, 0, 8, 0)


def test_two_views_and_masks_travel_with_the_training_batch():
    data = synthetic_fewshot(
        "oxford_pets", shots=2, num_classes=2, views=2, masks=True, augmentation="clip", batch_size=4
    )
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == batch["image_view2"].shape == (4, 3, 32, 32)
    assert not torch.equal(batch["image"], batch["image_view2"])  # independently augmented
    assert batch["mask"].shape == (4, 1, 32, 32) and set(batch["mask"].unique().tolist()) <= {0.0, 1.0}
    assert type(batch["image"]) is torch.Tensor


def test_missing_mask_fails_at_setup():
    data = synthetic_fewshot("dtd", shots=2, num_classes=2, masks=True)
    data.classnames
    first = data._splits().train[0]
    data.mask_path(first).unlink()
    with pytest.raises(DatasetError, match="mask of .* does not exist"):
        data.setup("fit")


def test_masks_are_found_in_dapts_released_layouts():
    data = synthetic_fewshot("dtd", shots=2, num_classes=2, masks=True)
    data.classnames
    first = data._splits().train[0]
    mask_root = data.root / data.spec.dataset_dir / "mask"
    mirrored_png = data.mask_path(first)
    assert mirrored_png == mask_root / first.path.parent.name / (first.path.stem + ".png")
    # DAPT's flat folder, keeping the image's own file name and extension
    flat = mask_root / first.path.name
    mirrored_png.rename(flat)
    assert data.mask_path(first) == flat
    data.setup("fit")  # every mask is found


def test_imagenet_variants_are_test_sets_on_their_own_classes(tmp_path, trainer_kwargs):
    from lightning.pytorch import Trainer

    from lightning_prompts.backbones import OpenCLIP
    from lightning_prompts.data.synthetic import write_imagenet_layout
    from lightning_prompts.methods import CoOp

    write_imagenet_layout(tmp_path / "imagenet", num_classes=4, per_class=2, size=32, seed=0)
    wnids = [f"n{label:08d}" for label in range(4)]
    for index in (1, 3):  # ImageNet-A/-R style: a subset of wnid folders
        write_image(tmp_path / "imagenet-a" / wnids[index] / "a.jpg", index, 7, 32, 0)
    for index in (0, 2, 3):  # ImageNetV2 style: folders named by class index
        write_image(tmp_path / "imagenetv2" / str(index) / "v.jpeg", index, 8, 32, 0)
    data = FewShotImageDataModule(
        root=str(tmp_path), dataset="imagenet", shots=1, image_size=32,
        imagenet_variants={"imagenet_a": "imagenet-a", "imagenetv2": str(tmp_path / "imagenetv2")},
    )  # fmt: skip
    data.setup("test")
    names = data.classnames
    sets = data.test_class_sets
    assert list(sets) == ["imagenet", "imagenet_a", "imagenetv2"]
    assert sets["imagenet_a"] == [names[1], names[3]] and sets["imagenetv2"] == [names[0], names[2], names[3]]
    labels = [item.label for item in data._splits().test_sets["imagenetv2"][1]]
    assert labels == [0, 1, 2]  # labelled within the variant's own classes
    method = CoOp(OpenCLIP("tiny", pretrained=None), names, n_ctx=2)
    results = Trainer(**trainer_kwargs).test(method, data, verbose=False)[0]
    assert {"test/acc_imagenet", "test/acc_imagenet_a", "test/acc_imagenetv2"} <= set(results)
    with pytest.raises(ValueError, match="ImageNet"):
        FewShotImageDataModule(root=str(tmp_path), dataset="dtd", imagenet_variants={"a": "x"})
    (tmp_path / "bad" / "not_a_class").mkdir(parents=True)
    bad = FewShotImageDataModule(root=str(tmp_path), dataset="imagenet", shots=1, imagenet_variants={"b": "bad"})
    with pytest.raises(DatasetError, match="neither an ImageNet wnid"):
        bad.setup("test")


def test_a_mask_of_another_size_is_resized_to_its_image_as_dapt_does():
    """DAPT's loader resizes each mask to its image (``mask.resize(img0.size)``) before the joint crop; a mask of
    another size used to stop torchvision's crop ("multiple HxW dimensions")."""
    import numpy as np
    from PIL import Image

    from lightning_prompts.data.images import fit_mask, load_mask

    data = synthetic_fewshot("dtd", shots=2, num_classes=2, masks=True, augmentation="clip", batch_size=4)
    data.classnames
    first = data._splits().train[0]
    path = data.mask_path(first)
    half = np.zeros((8, 12), dtype=np.uint8)
    half[:, 6:] = 255  # right half foreground, at a quarter of the image's resolution
    Image.fromarray(half).save(path)
    data.setup("fit")
    dataset = data.train_dataloader().dataset
    position = next(k for k, item in enumerate(dataset.items) if item.path == first.path)
    mask = dataset[position]["mask"]
    assert mask.shape == (1, 32, 32) and set(mask.unique().tolist()) <= {0.0, 1.0}  # cropped with its image
    resized = fit_mask(load_mask(path), (48, 32))
    assert resized.shape == (1, 32, 48) and resized[0, :, :24].sum() == 0 and resized[0, :, 24:].min() == 255
