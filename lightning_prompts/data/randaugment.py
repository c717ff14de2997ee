"""RandAugment as Dassl applies it (``RandAugment`` in ``dassl/data/transforms/randaugment.py``), the training
augmentation of CoPrompt (``TRANSFORMS: ["randaugment", "normalize"]``, n = 2, m = 10).

Each image gets ``n`` operations drawn with replacement from Dassl's sixteen (those of TensorFlow's EfficientNet
AutoAugment code), each at the fixed value ``m / 30 · (high − low) + low`` — at m = 10:

===============  ====================================================================================
operation        at m = 10
===============  ====================================================================================
autocontrast     —
equalize         —
invert           —
rotate           ±10° (random sign), nearest neighbour
posterize        keep 5 bits
solarize         invert pixels ≥ 85.3
solarize_add     add 36.7 to every pixel (clipped, truncated to uint8), then invert pixels ≥ 128
color            enhance 0.7
contrast         enhance 0.7
brightness       enhance 0.7
sharpness        enhance 0.7
shear_x/y        ±0.1 (random sign), nearest neighbour
cutout           a 13.3-pixel square of grey (125, 123, 114) at a random position
translate_x/y    ±33.3 pixels (random sign), nearest neighbour
===============  ====================================================================================

Two of Dassl's quirks are kept because they shape the images CoPrompt trained on: the cutout corner is drawn
with ``np.random.uniform(w)`` — NumPy reads that as ``low=w, high=1``, so the corner is uniform on ``(1, w]``,
not ``[0, w)`` — and the enhancement operations only ever weaken (factor 0.7, no sign). One is not:
Dassl's ``solarize_add`` calls ``np.int``, removed in NumPy 1.24, so under current NumPy Dassl crashes whenever
it draws that operation; here it runs as Dassl meant it. Dassl draws from Python's and NumPy's global
generators; here every draw comes from one NumPy generator seeded from torch's RNG (``seed_everything``
and the data loader's worker seeding fix it), in Dassl's order: the ``n`` operation indices first, then
each operation's own draws.

torchvision's ``RandAugment(num_ops=2, magnitude=10)`` is a different augmentation: fourteen operations
(identity instead of invert, solarize-add and cutout), enhancement factors 1 ± 0.3 with a random sign,
solarize at 170 and 7-bit posterize.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lightning_prompts.data.transforms import torch_seeded_generator

#: Dassl's RandAugment operations (``randaugment_list``) and their value ranges, in its order.
DASSL_RANDAUGMENT_OPERATIONS: tuple[tuple[str, float, float], ...] = (
    ("autocontrast", 0, 1),
    ("equalize", 0, 1),
    ("invert", 0, 1),
    ("rotate", 0, 30),
    ("posterize", 4, 8),
    ("solarize", 0, 256),
    ("solarize_add", 0, 110),
    ("color", 0.1, 1.9),
    ("contrast", 0.1, 1.9),
    ("brightness", 0.1, 1.9),
    ("sharpness", 0.1, 1.9),
    ("shear_x", 0.0, 0.3),
    ("shear_y", 0.0, 0.3),
    ("cutout", 0, 40),
    ("translate_x", 0.0, 100),
    ("translate_y", 0.0, 100),
)

#: The grey Dassl's cutout paints.
CUTOUT_COLOR = (125, 123, 114)


def _signed(value: float, rng: np.random.Generator) -> float:
    return -value if rng.random() > 0.5 else value


def apply_operation(name: str, image: Any, value: float, rng: np.random.Generator) -> Any:
    """One Dassl RandAugment operation at ``value`` on a PIL image (signs and cutout positions from ``rng``)."""
    from PIL import Image, ImageDraw, ImageEnhance, ImageOps

    if name == "autocontrast":
        return ImageOps.autocontrast(image)
    if name == "equalize":
        return ImageOps.equalize(image)
    if name == "invert":
        return ImageOps.invert(image)
    if name == "rotate":
        return image.rotate(_signed(value, rng))
    if name == "posterize":
        return ImageOps.posterize(image, int(value))
    if name == "solarize":
        return ImageOps.solarize(image, value)
    if name == "solarize_add":
        shifted = np.clip(np.asarray(image).astype(np.int64) + value, 0, 255).astype(np.uint8)
        return ImageOps.solarize(Image.fromarray(shifted), 128)
    if name in ("color", "contrast", "brightness", "sharpness"):
        enhancers = {"color": ImageEnhance.Color, "contrast": ImageEnhance.Contrast}
        enhancers |= {"brightness": ImageEnhance.Brightness, "sharpness": ImageEnhance.Sharpness}
        return enhancers[name](image).enhance(value)
    if name in ("shear_x", "shear_y", "translate_x", "translate_y"):
        amount = _signed(value, rng)
        matrix = {
            "shear_x": (1, amount, 0, 0, 1, 0),
            "shear_y": (1, 0, 0, amount, 1, 0),
            "translate_x": (1, 0, amount, 0, 1, 0),
            "translate_y": (1, 0, 0, 0, 1, amount),
        }[name]
        return image.transform(image.size, Image.AFFINE, matrix)
    if name == "cutout":
        width, height = image.size
        # np.random.uniform(w) is uniform(low=w, high=1): w + (1 − w)·U, on (1, w]
        x0 = int(max(0, width + (1 - width) * rng.random() - value / 2.0))
        y0 = int(max(0, height + (1 - height) * rng.random() - value / 2.0))
        painted = image.copy()
        ImageDraw.Draw(painted).rectangle((x0, y0, min(width, x0 + value), min(height, y0 + value)), CUTOUT_COLOR)
        return painted
    known = [operation for operation, _, _ in DASSL_RANDAUGMENT_OPERATIONS]
    raise ValueError(f"unknown RandAugment operation {name!r}; Dassl's are {known}.")


class DasslRandAugment:
    """Dassl's RandAugment on a PIL image (see the module docstring); returns a PIL image.

    Args:
        n: operations per image (Dassl's ``INPUT.RANDAUGMENT_N``, 2).
        m: the magnitude, 0–30 (``INPUT.RANDAUGMENT_M``, 10).
    """

    def __init__(self, n: int = 2, m: float = 10) -> None:
        if n < 1 or not 0 <= m <= 30:
            raise ValueError(f"RandAugment needs n ≥ 1 and 0 ≤ m ≤ 30 (Dassl's range), got n={n}, m={m}.")
        self.n, self.m = n, m

    def __call__(self, image: Any) -> Any:
        rng = torch_seeded_generator()
        return self.apply(image, rng)

    def apply(self, image: Any, rng: np.random.Generator) -> Any:
        """``image`` after ``n`` operations, every draw taken from ``rng`` in Dassl's order."""
        count = len(DASSL_RANDAUGMENT_OPERATIONS)
        chosen = [DASSL_RANDAUGMENT_OPERATIONS[int(rng.random() * count)] for _ in range(self.n)]
        for name, low, high in chosen:
            image = apply_operation(name, image, (self.m / 30) * (high - low) + low, rng)
        return image

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.n}, m={self.m})"
