"""AugMix as TPT applies it to its test-time views (``data/augmix_ops.py`` and ``augmix`` in azshue/TPT).

Each view is ``m · x + (1 − m) · Σ_i w_i · chain_i(x)`` with ``w ~ Dirichlet(1, 1, 1)`` (three chains),
``m ~ Beta(1, 1)`` and each chain 1–3 operations drawn uniformly from TPT's list (AugMix's operations
minus the four that overlap ImageNet-C: no colour, contrast, brightness or sharpness):

=============  ==============================================================  =====================
operation      magnitude from ``level = U(0.1, severity)``                     at severity 1
=============  ==============================================================  =====================
autocontrast   —                                                               —
equalize       —                                                               —
posterize      keep ``4 − int(level · 4 / 10)`` bits                           4 bits
rotate         ``±int(level · 30 / 10)`` degrees, bilinear                     0–2°
solarize       invert pixels ≥ ``256 − int(level · 256 / 10)``                 threshold 231–254
shear_x/y      ``±level · 0.3 / 10``, bilinear                                 0.003–0.03
translate_x/y  ``±int(level · side / 3 / 10)`` pixels, bilinear                0–7 px at 224
=============  ==============================================================  =====================

The operations run on PIL images, as TPT's do, and the mix is taken between the normalised tensors, in
float32, with the weights rounded to float32 first — TPT's arithmetic. Two details differ and are
deliberate: the affine output size is the image's own (TPT hard-codes 224, the only size it uses), and
the draws come from a NumPy generator seeded from torch's RNG rather than NumPy's global state, so the
views of an image depend only on the seed our data module sets for it.

Why not torchvision's ``AugMix(all_ops=False)``, which has the same operation list: at ``severity=1`` it
indexes its magnitude bins with ``randint(1)``, i.e. always bin 0, so rotation, shear and translation are
the identity and solarize never fires; it also mixes in uint8 and truncates, and runs its affine
operations as ``grid_sample`` on tensors, about 30 times slower per view than PIL on 224-pixel crops.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from lightning_prompts.data.transforms import torch_seeded_generator

#: TPT's AugMix operations, in its order (the draw picks an index into this tuple).
TPT_AUGMIX_OPERATIONS = (
    "autocontrast",
    "equalize",
    "posterize",
    "rotate",
    "solarize",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
)


def _level(rng: np.random.Generator, severity: float) -> float:
    return float(rng.uniform(0.1, severity))


def _signed(value: float, rng: np.random.Generator) -> float:
    # TPT flips the sign when a second uniform draw exceeds 0.5, after drawing the level
    return -value if rng.uniform() > 0.5 else value


def apply_operation(name: str, image: Any, severity: float, rng: np.random.Generator) -> Any:
    """One TPT AugMix operation on a PIL image, drawing its magnitude (and sign) from ``rng``."""
    from PIL import Image, ImageOps

    width, height = image.size
    if name == "autocontrast":
        return ImageOps.autocontrast(image)
    if name == "equalize":
        return ImageOps.equalize(image)
    if name == "posterize":
        return ImageOps.posterize(image, 4 - int(_level(rng, severity) * 4 / 10))
    if name == "rotate":
        degrees = _signed(int(_level(rng, severity) * 30 / 10), rng)
        return image.rotate(degrees, resample=Image.BILINEAR)
    if name == "solarize":
        return ImageOps.solarize(image, 256 - int(_level(rng, severity) * 256 / 10))
    if name in ("shear_x", "shear_y"):
        shear = _signed(_level(rng, severity) * 0.3 / 10, rng)
        matrix = (1, shear, 0, 0, 1, 0) if name == "shear_x" else (1, 0, 0, shear, 1, 0)
        return image.transform((width, height), Image.AFFINE, matrix, resample=Image.BILINEAR)
    if name in ("translate_x", "translate_y"):
        side = width if name == "translate_x" else height
        pixels = _signed(int(_level(rng, severity) * (side / 3) / 10), rng)
        matrix = (1, 0, pixels, 0, 1, 0) if name == "translate_x" else (1, 0, 0, 0, 1, pixels)
        return image.transform((width, height), Image.AFFINE, matrix, resample=Image.BILINEAR)
    raise ValueError(f"unknown AugMix operation {name!r}; TPT's are {list(TPT_AUGMIX_OPERATIONS)}.")


class TPTAugMix:
    """AugMix on a PIL image, returning the mixed, normalised float tensor (see the module docstring).

    Args:
        mean, std: the normalisation applied to every chain before mixing (as TPT's ``preprocess``).
        severity: the upper bound of the operation levels (TPT: 1).
        width: the number of chains (TPT: 3).
        max_depth: each chain draws 1 to ``max_depth`` operations (TPT: 3).
        operations: the operation names (default: TPT's nine).
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        severity: float = 1.0,
        width: int = 3,
        max_depth: int = 3,
        operations: Sequence[str] = TPT_AUGMIX_OPERATIONS,
    ) -> None:
        unknown = sorted(set(operations) - set(TPT_AUGMIX_OPERATIONS))
        if unknown or not operations:
            raise ValueError(f"operations must be a non-empty subset of {list(TPT_AUGMIX_OPERATIONS)}, got {unknown}.")
        if width < 1 or max_depth < 1 or severity < 0.1:
            raise ValueError(f"need width ≥ 1, max_depth ≥ 1 and severity ≥ 0.1, got {width}, {max_depth}, {severity}.")
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.severity, self.width, self.max_depth = severity, width, max_depth
        self.operations = tuple(operations)

    def __call__(self, image: Any) -> torch.Tensor:
        rng = torch_seeded_generator()
        return self.mix(image, rng)

    def mix(self, image: Any, rng: np.random.Generator) -> torch.Tensor:
        """The AugMix view of ``image`` with every draw taken from ``rng`` (in TPT's order)."""
        weights = np.float32(rng.dirichlet([1.0] * self.width))
        blend = np.float32(rng.beta(1.0, 1.0))
        original = self._preprocess(image)
        mixed = np.zeros_like(original)
        for chain in range(self.width):
            augmented = image.copy()
            for _ in range(int(rng.integers(1, self.max_depth + 1))):
                name = self.operations[int(rng.integers(len(self.operations)))]
                augmented = apply_operation(name, augmented, self.severity, rng)
            mixed += weights[chain] * self._preprocess(augmented)
        view = blend * original + (np.float32(1) - blend) * mixed
        return torch.from_numpy(np.ascontiguousarray(view.transpose(2, 0, 1)))

    def _preprocess(self, image: Any) -> np.ndarray:
        # float32 arithmetic in NumPy, channels last: the same IEEE operations as ToTensor + Normalize, without
        # torch's intra-op thread pool, which costs more than the arithmetic on one crop when cores are busy
        pixels = np.asarray(image, dtype=np.uint8)
        if pixels.ndim == 2:
            pixels = pixels[..., None]
        return (pixels.astype(np.float32) / np.float32(255) - self.mean) / self.std

    def __repr__(self) -> str:
        return f"{type(self).__name__}(severity={self.severity}, width={self.width}, max_depth={self.max_depth})"


def augmix_view_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> Callable[[Any], torch.Tensor]:
    """TPT's AugMix view: RandomResizedCrop(size) and a horizontal flip on the PIL image, then :class:`TPTAugMix`."""
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomResizedCrop(size), v2.RandomHorizontalFlip(), TPTAugMix(mean, std)])
