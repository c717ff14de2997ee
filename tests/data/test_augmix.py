"""TPT's AugMix views, pinned to a re-computation of azshue/TPT's ``augmix`` (``data/datautils.py``) with the
operations of its ``data/augmix_ops.py``, the NumPy global RNG replaced by a seeded generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torchvision.transforms import functional as TF

from lightning_prompts.data.augmix import TPT_AUGMIX_OPERATIONS, TPTAugMix, apply_operation
from lightning_prompts.data.transforms import NORMALIZATIONS, build_test_view_transform

MEAN, STD = NORMALIZATIONS["clip"]


def reference_augmix(image: Image.Image, rng: np.random.Generator, severity: float = 1.0) -> torch.Tensor:
    size = 224  # TPT's IMAGE_SIZE; the tests below use 224-pixel images where it matters

    def level(n):
        return rng.uniform(low=0.1, high=n)

    def as_int(value, top):
        return int(value * top / 10)

    def as_float(value, top):
        return float(value) * top / 10.0

    def flip_sign(value):
        return -value if rng.uniform() > 0.5 else value

    def affine(img, coefficients):
        return img.transform((size, size), Image.AFFINE, coefficients, resample=Image.BILINEAR)

    operations = [
        lambda img, s: ImageOps.autocontrast(img),
        lambda img, s: ImageOps.equalize(img),
        lambda img, s: ImageOps.posterize(img, 4 - as_int(level(s), 4)),
        lambda img, s: img.rotate(flip_sign(as_int(level(s), 30)), resample=Image.BILINEAR),
        lambda img, s: ImageOps.solarize(img, 256 - as_int(level(s), 256)),
        lambda img, s: affine(img, (1, flip_sign(as_float(level(s), 0.3)), 0, 0, 1, 0)),
        lambda img, s: affine(img, (1, 0, 0, flip_sign(as_float(level(s), 0.3)), 1, 0)),
        lambda img, s: affine(img, (1, 0, flip_sign(as_int(level(s), size / 3)), 0, 1, 0)),
        lambda img, s: affine(img, (1, 0, 0, 0, 1, flip_sign(as_int(level(s), size / 3)))),
    ]

    def preprocess(img):
        return TF.normalize(TF.to_tensor(img), MEAN, STD)

    processed = preprocess(image)
    w = np.float32(rng.dirichlet([1.0, 1.0, 1.0]))
    m = np.float32(rng.beta(1.0, 1.0))
    mix = torch.zeros_like(processed)
    for i in range(3):
        augmented = image.copy()
        for _ in range(rng.integers(1, 4)):
            augmented = operations[rng.integers(len(operations))](augmented, severity)
        mix += w[i] * preprocess(augmented)
    return m * processed + (1 - m) * mix


def textured_image(size: int, seed: int) -> Image.Image:
    generator = np.random.default_rng(seed)
    coarse = generator.integers(0, 256, size=(size // 8, size // 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((size, size), Image.BILINEAR)


@pytest.mark.parametrize("seed", range(6))
def test_views_equal_tpts_augmix_for_the_same_draws(seed):
    image = textured_image(224, seed)
    ours = TPTAugMix(MEAN, STD).mix(image, np.random.default_rng(seed))
    reference = reference_augmix(image, np.random.default_rng(seed))
    assert ours.shape == (3, 224, 224) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
    assert not torch.allclose(ours, TF.normalize(TF.to_tensor(image), MEAN, STD), atol=1e-3)  # the view changed


def test_magnitudes_at_severity_one_are_tpts():
    # a level drawn near its top (U(0.1, 1) ≈ 1): translation int(0.99 · 224/3 / 10) = 7 pixels, TPT's largest
    image = Image.fromarray(np.tile(np.arange(224, dtype=np.uint8), (224, 1))).convert("RGB")

    class Draws:
        def __init__(self, values):
            self.values = list(values)

        def uniform(self, low=0.0, high=1.0):
            return low + (high - low) * self.values.pop(0)

    moved = np.asarray(apply_operation("translate_x", image, 1.0, Draws([0.99, 0.0])))[0, :, 0]
    assert np.array_equal(moved[:-7], np.arange(7, 224))  # shifted left by exactly 7 columns
    rotated = apply_operation("rotate", image, 1.0, Draws([0.5, 0.9]))  # level 0.55 → int(1.65) = 1, sign flipped
    assert np.array_equal(np.asarray(rotated), np.asarray(image.rotate(-1, resample=Image.BILINEAR)))
    ramp = Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (4, 1))).convert("RGB")
    solarized = np.asarray(apply_operation("solarize", ramp, 1.0, Draws([1.0])))[0, :, 0]
    assert solarized[230] == 230 and solarized[231] == 255 - 231  # threshold 256 − int(25.6) = 231


def test_views_are_seeded_by_torch_and_the_options_are_checked():
    transform = build_test_view_transform("augmix", 64, "clip")
    image = textured_image(96, 0)
    torch.manual_seed(3)
    first = transform(image)
    torch.manual_seed(3)
    assert torch.equal(first, transform(image)) and first.shape == (3, 64, 64)
    assert not torch.equal(first, transform(image))
    with pytest.raises(ValueError, match="subset"):
        TPTAugMix(MEAN, STD, operations=["color"])
    with pytest.raises(ValueError, match="unknown AugMix operation"):
        apply_operation("color", image, 1.0, np.random.default_rng(0))
    assert len(TPT_AUGMIX_OPERATIONS) == 9
