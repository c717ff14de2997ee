"""Image preprocessing presets of the benchmarks the recipes reproduce.

* ``"clip"`` (CoOp/Dassl): train RandomResizedCrop(scale 0.08–1, bicubic) + flip; test resize the
  short side (bicubic) + center crop.
* ``"fgvc"`` (VPT on CUB & co.): train resize to 256/224 of the size + random crop + flip; test
  resize + center crop (bilinear).
* ``"vtab"`` (VPT on VTAB-1k): resize straight to size×size, no augmentation.
"""

from __future__ import annotations

from typing import Any, Literal

Augmentation = Literal["clip", "fgvc", "vtab"]

#: Normalisation constants by name.
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def build_transform(preset: Augmentation, size: int, normalization: str, train: bool) -> Any:
    """The torchvision transform of ``preset`` for training or evaluation."""
    from torchvision import transforms as T

    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {sorted(NORMALIZATIONS)}, got {normalization!r}.")
    mean, std = NORMALIZATIONS[normalization]
    bicubic, bilinear = T.InterpolationMode.BICUBIC, T.InterpolationMode.BILINEAR
    if preset == "clip":
        steps = (
            [T.RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=bicubic), T.RandomHorizontalFlip()]
            if train
            else [T.Resize(size, interpolation=bicubic), T.CenterCrop(size)]
        )
    elif preset == "fgvc":
        resize = round(size * 256 / 224)
        steps = (
            [T.Resize(resize, interpolation=bilinear), T.RandomCrop(size), T.RandomHorizontalFlip()]
            if train
            else [T.Resize(resize, interpolation=bilinear), T.CenterCrop(size)]
        )
    elif preset == "vtab":
        steps = [T.Resize((size, size), interpolation=bilinear)]
    else:
        raise ValueError(f"augmentation must be 'clip', 'fgvc' or 'vtab', got {preset!r}.")
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])
