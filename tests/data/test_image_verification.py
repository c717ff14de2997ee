"""The record of verified images (docs/data.md, "Image verification"): kept outside the data folder, a second run
decodes nothing, and a file whose size or modification time changed is decoded again."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from lightning_prompts.data import images
from lightning_prompts.data.images import ImageItem, verify_images
from lightning_prompts.errors import DatasetError


def test_verified_images_are_recorded_outside_the_data_folder_and_decoded_again_only_when_changed(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("LIGHTNING_PROMPTS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "data" / "cat"
    folder.mkdir(parents=True)
    items = []
    for index in range(3):
        Image.new("RGB", (8, 8), (40 * index, 0, 0)).save(folder / f"{index}.png")
        items.append(ImageItem(folder / f"{index}.png", 0, "cat"))
    decoded = []
    decode = images.decode_fully
    monkeypatch.setattr(images, "decode_fully", lambda path: decoded.append(path.name) or decode(path))
    before = sorted(os.listdir(folder))

    verify_images(items, "the folder")
    assert decoded == ["0.png", "1.png", "2.png"]
    assert sorted(os.listdir(folder)) == before  # nothing written beside the data
    records = list((tmp_path / "cache" / "verified").glob("*.json"))
    assert len(records) == 1 and "1.png" in records[0].read_text()

    decoded.clear()
    verify_images(items, "the folder")  # the next run: one stat per image, no decoding
    assert decoded == []

    stat = (folder / "1.png").stat()
    (folder / "1.png").write_bytes(b"not an image")  # another size
    os.utime(folder / "1.png", ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old modification time
    with pytest.raises(DatasetError, match=r"1\.png \(class 'cat'\) cannot be read"):
        verify_images(items, "the folder")
    assert decoded == ["1.png"]  # the changed file only
