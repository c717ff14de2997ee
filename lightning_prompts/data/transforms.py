"""Image preprocessing presets of the benchmarks the recipes reproduce.

* ``"clip"`` (CoOp/Dassl): train RandomResizedCrop(scale 0.08–1, bicubic) + flip; test resize the
  short side (bicubic) + center crop.
* ``"fgvc"`` (VPT on CUB & co.): train resize to 256/224 of the size + random crop + flip; test
  resize + center crop (bilinear).
* ``"vtab"`` (VPT on VTAB-1k): resize straight to size×size, no augmentation. VPT resizes with TensorFlow's
  ``tf.image.resize`` (bilinear, no antialiasing, kept in float); PIL's bilinear here antialiases, so images
  shrunk to the size (KITTI, CLEVR, DMLab, SUN397, DTD, Caltech) keep less aliasing than VPT's; enlarged ones
  (CIFAR, SVHN, dSprites, smallNORB, Camelyon) differ by rounding only.
* ``"randaugment"`` (CoPrompt): train resize straight to size×size (bicubic) + Dassl's RandAugment (2 of
  its 16 operations at magnitude 10, :class:`~lightning_prompts.data.randaugment.DasslRandAugment`); test
  as ``"clip"``.
* ``"lae"`` (LAE's continual-learning streams): train RandomResizedCrop(default scale, bilinear) +
  flip; test resize the short side to 256/224 of the size + center crop; use with ``normalization:
  "none"`` (LAE feeds [0, 1] pixels to its ViT).
* ``"openood"`` (LAPT, as OpenOOD's ImageNet preprocessors with the ``--dataset.interpolation bilinear`` of
  LAPT's scripts): the same pipeline as ``"lae"`` — train RandomResizedCrop(bilinear) + flip, test resize the
  short side to 256/224 of the size (bilinear) + center crop — for ID and OOD test images alike; use with
  ``normalization: "clip"``.
* ``"multi_lane"`` (MULTI-LANE's streams): train RandomResizedCrop(scale 0.05–1, bilinear) + flip; test
  resize the short side to 256/224 of the size (bicubic) + center crop; inputs in [0, 1] (``normalization:
  "none"``, the official default without ``--normalize_input``).
* ``"clip_preprocess"`` (GRIP, FPL, IFPL): CLIP's own preprocessing for training too (resize the short
  side, bicubic, + center crop), no augmentation.
* ``"elevater"`` (MVLPT on ELEVATER, the toolkit's ``construct_dataloader`` with ``CENTER_CROP: False``): resize
  straight to size×size (bicubic) for training and evaluation alike, no crop, no augmentation.

Transforms are torchvision ``v2`` pipelines applied to PIL images (identical to the v1 transforms
the official code uses); geometric steps also apply to a segmentation mask passed with the image
(``transform(image, mask)``), which is how foreground masks stay aligned with their image.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch


def torch_seeded_generator() -> Any:
    """A NumPy generator seeded from torch's RNG, for augmentations that draw with NumPy (Dassl's RandAugment, TPT's
    AugMix): ``seed_everything``, the loader's worker seeding and a data module's per-image seed then fix them."""
    import numpy as np

    return np.random.default_rng(int(torch.randint(0, 2**62, ())))


Augmentation = Literal[
    "clip", "fgvc", "vtab", "randaugment", "lae", "openood", "multi_lane", "clip_preprocess", "elevater"
]

#: Normalisation constants by name.
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def build_transform(preset: Augmentation, size: int, normalization: str, train: bool) -> Any:
    """The torchvision (v2) transform of ``preset`` for training or evaluation."""
    from torchvision.transforms import v2

    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {sorted(NORMALIZATIONS)}, got {normalization!r}.")
    mean, std = NORMALIZATIONS[normalization]
    bicubic, bilinear = v2.InterpolationMode.BICUBIC, v2.InterpolationMode.BILINEAR
    clip_eval = [v2.Resize(size, interpolation=bicubic), v2.CenterCrop(size)]
    if preset == "clip":
        steps = (
            [v2.RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=bicubic), v2.RandomHorizontalFlip()]
            if train
            else clip_eval
        )
    elif preset == "fgvc":
        resize = {384: 438}.get(size, round(size * 256 / 224))  # VPT's table: 224→256, 384→438, 448→512
        steps = (
            [v2.Resize(resize, interpolation=bilinear), v2.RandomCrop(size), v2.RandomHorizontalFlip()]
            if train
            else [v2.Resize(resize, interpolation=bilinear), v2.CenterCrop(size)]
        )
    elif preset == "vtab":
        steps = [v2.Resize((size, size), interpolation=bilinear)]
    elif preset == "randaugment":
        from lightning_prompts.data.randaugment import DasslRandAugment

        steps = [v2.Resize((size, size), interpolation=bicubic), DasslRandAugment(n=2, m=10)] if train else clip_eval
    elif preset in ("lae", "openood"):
        steps = (
            [v2.RandomResizedCrop(size, interpolation=bilinear), v2.RandomHorizontalFlip()]
            if train
            else [v2.Resize(round(size * 256 / 224), interpolation=bilinear), v2.CenterCrop(size)]
        )
    elif preset == "multi_lane":
        steps = (
            [v2.RandomResizedCrop(size, scale=(0.05, 1.0), interpolation=bilinear), v2.RandomHorizontalFlip()]
            if train
            else [v2.Resize(int(size * 256 / 224), interpolation=bicubic), v2.CenterCrop(size)]
        )
    elif preset == "clip_preprocess":
        steps = clip_eval
    elif preset == "elevater":
        steps = [v2.Resize((size, size), interpolation=bicubic)]
    else:
        raise ValueError(f"augmentation must be one of {list(get_args(Augmentation))}, got {preset!r}.")
    return v2.Compose([*steps, v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


TestViewAugmentation = Literal["crops", "augmix"]


def build_test_view_transform(kind: TestViewAugmentation, size: int, normalization: str) -> Any:
    """One random test-time view of a PIL image, as TPT (Shu et al., NeurIPS 2022) makes them:

    * ``"crops"`` (TPT on the ImageNet variants): RandomResizedCrop(size) with torchvision's defaults
      (scale 0.08–1, bilinear) + horizontal flip;
    * ``"augmix"`` (TPT on the fine-grained sets): the same crop and flip, then TPT's AugMix at severity 1
      (:class:`~lightning_prompts.data.augmix.TPTAugMix`: 3 chains of 1–3 of TPT's nine operations with
      its magnitudes, on the PIL crop, mixed in the normalised space with Dirichlet(1) chain weights and a
      Beta(1, 1) blend with the crop).
    """
    from torchvision.transforms import v2

    if kind not in ("crops", "augmix"):
        raise ValueError(f"test-view augmentation must be 'crops' or 'augmix', got {kind!r}.")
    mean, std = NORMALIZATIONS[normalization]
    if kind == "augmix":
        from lightning_prompts.data.augmix import augmix_view_transform

        return augmix_view_transform(size, mean, std)
    steps: list[Any] = [v2.RandomResizedCrop(size), v2.RandomHorizontalFlip()]
    return v2.Compose([*steps, v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
