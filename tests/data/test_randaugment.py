"""Dassl's RandAugment (CoPrompt's training augmentation), pinned to a re-computation of
``dassl/data/transforms/randaugment.py``'s ``RandAugment`` with its global generators replaced by one legacy NumPy
``RandomState`` (whose ``uniform(w)`` is the real call behind Dassl's cutout position)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from lightning_prompts.data import FewShotImageDataModule
from lightning_prompts.data.randaugment import DASSL_RANDAUGMENT_OPERATIONS, DasslRandAugment, apply_operation
from lightning_prompts.data.transforms import build_transform


def reference_operations(state: np.random.RandomState):
    def flip(v):
        return -v if state.random() > 0.5 else v

    def cutout(img, v):
        w, h = img.size
        x0, y0 = state.uniform(w), state.uniform(h)  # Dassl: np.random.uniform(w), np.random.uniform(h)
        x0, y0 = int(max(0, x0 - v / 2.0)), int(max(0, y0 - v / 2.0))
        img = img.copy()
        ImageDraw.Draw(img).rectangle((x0, y0, min(w, x0 + v), min(h, y0 + v)), (125, 123, 114))
        return img

    def solarize_add(img, v):
        array = np.clip(np.array(img).astype(int) + v, 0, 255).astype(np.uint8)  # Dassl: astype(np.int)
        return ImageOps.solarize(Image.fromarray(array), 128)

    return [
        (lambda img, v: ImageOps.autocontrast(img), 0, 1),
        (lambda img, v: ImageOps.equalize(img), 0, 1),
        (lambda img, v: ImageOps.invert(img), 0, 1),
        (lambda img, v: img.rotate(flip(v)), 0, 30),
        (lambda img, v: ImageOps.posterize(img, int(v)), 4, 8),
        (lambda img, v: ImageOps.solarize(img, v), 0, 256),
        (solarize_add, 0, 110),
        (lambda img, v: ImageEnhance.Color(img).enhance(v), 0.1, 1.9),
        (lambda img, v: ImageEnhance.Contrast(img).enhance(v), 0.1, 1.9),
        (lambda img, v: ImageEnhance.Brightness(img).enhance(v), 0.1, 1.9),
        (lambda img, v: ImageEnhance.Sharpness(img).enhance(v), 0.1, 1.9),
        (lambda img, v: img.transform(img.size, Image.AFFINE, (1, flip(v), 0, 0, 1, 0)), 0.0, 0.3),
        (lambda img, v: img.transform(img.size, Image.AFFINE, (1, 0, 0, flip(v), 1, 0)), 0.0, 0.3),
        (cutout, 0, 40),
        (lambda img, v: img.transform(img.size, Image.AFFINE, (1, 0, flip(v), 0, 1, 0)), 0.0, 100),
        (lambda img, v: img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, flip(v))), 0.0, 100),
    ]


def reference_randaugment(image: Image.Image, state: np.random.RandomState, n: int = 2, m: float = 10):
    operations = reference_operations(state)
    chosen = [operations[int(state.random() * len(operations))] for _ in range(n)]  # random.choices(list, k=n)
    for operation, low, high in chosen:
        image = operation(image, (m / 30) * (high - low) + low)
    return image


def photo(seed: int, size: int = 96) -> Image.Image:
    generator = np.random.default_rng(seed)
    coarse = generator.integers(0, 256, size=(size // 8, size // 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((size, size), Image.BILINEAR)


@pytest.mark.parametrize("index", range(len(DASSL_RANDAUGMENT_OPERATIONS)))
def test_each_operation_equals_dassls(index):
    name, low, high = DASSL_RANDAUGMENT_OPERATIONS[index]
    value = (10 / 30) * (high - low) + low
    for seed in range(3):  # both signs, several cutout positions
        image = photo(seed)
        ours = apply_operation(name, image, value, np.random.RandomState(seed))
        operation = reference_operations(np.random.RandomState(seed))[index][0]
        assert np.array_equal(np.asarray(ours), np.asarray(operation(image, value))), (name, seed)


def test_the_augmentation_equals_dassls_for_the_same_draws():
    changed = 0
    for seed in range(40):
        image = photo(seed)
        ours = DasslRandAugment(n=2, m=10).apply(image, np.random.RandomState(seed))
        reference = reference_randaugment(image, np.random.RandomState(seed))
        assert np.array_equal(np.asarray(ours), np.asarray(reference)), seed
        changed += not np.array_equal(np.asarray(ours), np.asarray(image))
    assert changed >= 35  # two operations almost always change the image


def test_magnitudes_at_m10_and_the_cutout_position_quirk():
    ramp = Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (4, 1))).convert("RGB")
    solarized = np.asarray(apply_operation("solarize", ramp, 256 / 3, np.random.RandomState(0)))[0, :, 0]
    assert solarized[85] == 85 and solarized[86] == 255 - 86  # threshold 85.3
    assert int(10 / 30 * 4 + 4) == 5  # posterize keeps 5 bits
    # cutout at (x0, y0) with x0 from uniform(low=w, high=1): never at the left or top edge of a wide image
    blank = Image.new("RGB", (200, 200), (0, 0, 0))
    corners = []
    for seed in range(200):
        painted = np.asarray(apply_operation("cutout", blank, 40 / 3, np.random.RandomState(seed)))
        ys, xs = np.nonzero(painted[..., 0])
        corners.append((xs.min(), ys.min()))
        assert (painted[ys[0], xs[0]] == (125, 123, 114)).all()
    assert min(corners)[0] >= 0 and max(corners)[0] > 150 and np.mean([x for x, _ in corners]) > 80


def test_the_preset_uses_it_seeded_by_torch_and_masks_are_refused():
    import torch

    transform = build_transform("randaugment", 64, "clip", train=True)
    image = photo(1, 80)
    torch.manual_seed(5)
    first = transform(image)
    torch.manual_seed(5)
    assert torch.equal(first, transform(image)) and first.shape == (3, 64, 64)
    assert "DasslRandAugment(n=2, m=10)" in repr(transform)
    with pytest.raises(ValueError, match="n ≥ 1 and 0 ≤ m ≤ 30"):
        DasslRandAugment(m=31)
    with pytest.raises(ValueError, match="unknown RandAugment operation"):
        apply_operation("identity", image, 0.0, np.random.RandomState(0))
    with pytest.raises(ValueError, match="masks=True needs an augmentation"):
        FewShotImageDataModule(root="unused", dataset="dtd", masks=True, augmentation="randaugment")
