"""Point-cloud classification: ModelNet40 and ScanObjectNN from their usual files, and procedural shapes.

* **ModelNet40** (``modelnet40_normal_resampled/``, the layout Point-MAE and IDPT read):
  ``modelnet40_shape_names.txt``, ``modelnet40_{train,test}.txt`` (shape ids such as ``airplane_0627``)
  and ``<class>/<shape id>.txt`` with ``x,y,z,nx,ny,nz`` per line. The first ``stored_points`` (8,192)
  points are kept, centred and scaled into the unit sphere (``pc_normalize``).
* **Few-shot ModelNet40** (``ModelNetFewshot/<way>way_<shot>shot/<fold>.pkl``, the folds Point-BERT
  generated and IDPT evaluates, 10 per setting): ``{"train": [(points, way index, ModelNet40 class id)],
  "test": [...]}``. They are pickles, so they are read by a restricted unpickler that rebuilds plain
  numpy arrays and scalars and refuses every other global before it is imported.
* **ScanObjectNN** (``h5_files/``): ``main_split_nobg/{training,test}_objectdataset.h5`` (OBJ-ONLY),
  ``main_split/{training,test}_objectdataset.h5`` (OBJ-BG) and
  ``main_split/{training,test}_objectdataset_augmentedrot_scale75.h5`` (PB-T50-RS), datasets ``data``
  ``(N, 2048, 3)`` and ``label``; read with ``h5py`` (the ``points`` extra).
* **ShapeNet-55** (Point-MAE's pre-training set): ``ShapeNet-55/{train,test}.txt`` listing
  ``<taxonomy>-<model>.npy`` files of ``shapenet_pc/`` (8,192 points each), read lazily with
  ``numpy.load(allow_pickle=False)``; each read keeps a random ``num_points`` (Point-MAE's
  ``random_sample``) and normalises them; the label is the taxonomy (55 classes).
* **Procedural shapes** (:class:`ProceduralShapes`): surface samples of spheres, cubes, cylinders, cones
  and tori under a random rotation and stretch, optionally corrupted with jitter or outliers; the
  offline stand-in for the testbed and the tiny recipes.

Sampling follows IDPT's runner and runs on the batch after it reaches the device
(:meth:`PointCloudDataModule.on_after_batch_transfer`, as the official code does it on the GPU):
training clouds are shuffled (IDPT's datasets shuffle every read, so FPS starts at a random point) and cut to
``train_pool`` points by farthest point sampling (1,200 for 1,024 points,
2,400 for 2,048, at most the cloud), of which a random ``num_points`` are kept, then augmented
(ModelNet: per-cloud scale in [2/3, 3/2] and shift in [−0.2, 0.2] per axis; ScanObjectNN: a random
rotation about the vertical axis); evaluation clouds are cut to ``num_points`` by farthest point
sampling alone.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_prompts.backbones.point_ops import farthest_point_sample
from lightning_prompts.batch import LABEL, POINT_VOTES, POINTS
from lightning_prompts.data.arguments import check_at_least
from lightning_prompts.data.processes import drops_last, evaluation_sampler
from lightning_prompts.errors import ConfigurationError, DatasetError
from lightning_prompts.registry import register_datamodule

DatasetName = Literal["modelnet40", "modelnet40_fewshot", "scanobjectnn", "shapenet55", "shapes"]
ScanVariant = Literal["obj_only", "obj_bg", "pb_t50_rs"]
Augment = Literal["scale_translate", "rotate", "none"]
Corruption = Literal["none", "jitter", "outliers"]

SCANOBJECTNN_CLASSES = (
    "bag", "bin", "box", "cabinet", "chair", "desk", "display", "door",
    "shelf", "table", "bed", "pillow", "sink", "sofa", "toilet",
)  # fmt: skip
_SCAN_FILES = {
    "obj_only": ("main_split_nobg", "objectdataset"),
    "obj_bg": ("main_split", "objectdataset"),
    "pb_t50_rs": ("main_split", "objectdataset_augmentedrot_scale75"),
}
SHAPES = ("sphere", "cube", "cylinder", "cone", "torus")


def normalise_cloud(points: np.ndarray) -> np.ndarray:
    """Centre a cloud and scale it into the unit sphere (Point-MAE's ``pc_normalize``)."""
    points = points - points.mean(axis=0)
    radius = np.sqrt((points**2).sum(axis=1)).max()
    return points / radius if radius > 0 else points


def read_modelnet40(
    root: str | Path, split: str, stored_points: int = 8192
) -> tuple[list[np.ndarray], list[int], list[str]]:
    """Clouds ``(stored_points, 3)``, labels and class names of a ModelNet40 ``normal_resampled`` split.

    With the official cache ``modelnet40_<split>_<stored_points>pts_fps.dat`` in ``root`` (Point-BERT's
    download; each cloud farthest-point-sampled from its 10,000 points) the clouds are those, read by the
    restricted unpickler (numpy arrays only); without it, the first ``stored_points`` points of each ``.txt``
    file are kept, which is not the official subset."""
    root = Path(root)
    names_file, split_file = root / "modelnet40_shape_names.txt", root / f"modelnet40_{split}.txt"
    cache = root / f"modelnet40_{split}_{stored_points}pts_fps.dat"
    if cache.is_file() and names_file.is_file():
        classes = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
        return (*read_modelnet40_fps_cache(cache, len(classes)), classes)
    for required in (names_file, split_file):
        if not required.is_file():
            raise DatasetError(
                f"{required} does not exist (expected ModelNet40's modelnet40_normal_resampled/ layout)."
            )
    classes = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
    index = {name: i for i, name in enumerate(classes)}
    clouds, labels, paths = [], [], []
    for line, shape in enumerate(s.strip() for s in split_file.read_text().splitlines()):
        if not shape:
            continue
        name = shape.rsplit("_", 1)[0]
        if name not in index:
            raise DatasetError(f"{split_file}:{line + 1}: shape {shape!r} is of no class in {names_file.name}.")
        path = root / name / f"{shape}.txt"
        if not path.is_file():
            raise DatasetError(f"{path} does not exist (listed in {split_file.name}).")
        try:
            values = np.loadtxt(path, delimiter=",", dtype=np.float32, max_rows=stored_points, ndmin=2)
        except ValueError as error:
            raise DatasetError(f"{path} is not comma-separated coordinates: {error}") from error
        if values.shape[1] < 3:
            raise DatasetError(f"{path} has {values.shape[1]} columns; expected x,y,z[,nx,ny,nz].")
        bad_rows = np.flatnonzero(~np.isfinite(values[:, :3]).all(axis=1))
        if len(bad_rows):  # a nan would spread through normalisation to every point of the cloud
            raise DatasetError(f"{path}: line {bad_rows[0] + 1} has a non-finite coordinate ({len(bad_rows)} lines).")
        clouds.append(normalise_cloud(values[:, :3]))
        labels.append(index[name])
        paths.append(path)
    if not clouds:
        raise DatasetError(f"{split_file} lists no shapes.")
    # Batches stack clouds, so every file must give the same count: the first stored_points of the official
    # 10,000-point files (or, in a small hand-made layout, the most any file has). A shorter file, a truncated
    # download, would otherwise fail only at the first batch that holds it.
    kept = max(len(cloud) for cloud in clouds)
    short = [(path, len(cloud)) for path, cloud in zip(paths, clouds, strict=True) if len(cloud) < kept]
    if short:
        raise DatasetError(
            f"{short[0][0]} has {short[0][1]} points where other files give {kept} (the first {stored_points} of "
            f"ModelNet40's 10,000-point files are read); {len(short)} of the {len(clouds)} files {split_file.name} "
            f"lists are shorter: download them again."
        )
    return clouds, labels, classes


def read_modelnet40_fps_cache(path: Path, num_classes: int) -> tuple[list[np.ndarray], list[int]]:
    """The official ``*_fps.dat`` cache: a pickle of ``[list of (N, 6) float32 clouds, list of (1,) int32
    labels]``, read by the restricted unpickler; each cloud's xyz is centred and scaled as the official
    loader does when it serves it."""
    from lightning_prompts.utils.safe_pickle import load_numpy_pickle

    content = load_numpy_pickle(path, "ModelNet40 FPS cache")
    if not (isinstance(content, (list, tuple)) and len(content) == 2 and len(content[0]) == len(content[1])):
        raise DatasetError(f"{path}: expected [clouds, labels] of equal length (Point-BERT's ModelNet40 cache).")
    clouds, labels = [], []
    for position, (points, label) in enumerate(zip(*content, strict=True)):
        points, label = np.asarray(points, dtype=np.float32), int(np.asarray(label).reshape(-1)[0])
        if points.ndim != 2 or points.shape[1] < 3 or not 0 <= label < num_classes:
            raise DatasetError(f"{path}: entry {position} is not an (N, 3+) cloud with a label below {num_classes}.")
        clouds.append(normalise_cloud(points[:, :3]))
        labels.append(label)
    return clouds, labels


def read_scanobjectnn(root: str | Path, variant: ScanVariant, split: str) -> tuple[list[np.ndarray], list[int]]:
    """Clouds ``(2048, 3)`` and labels of a ScanObjectNN variant (``split``: ``"training"`` or ``"test"``)."""
    try:
        import h5py
    except ImportError as error:
        raise ImportError("ScanObjectNN needs h5py: pip install 'lightning-prompts[points]'.") from error
    if variant not in _SCAN_FILES:
        raise ConfigurationError(f"variant must be one of {sorted(_SCAN_FILES)}, got {variant!r}.")
    folder, stem = _SCAN_FILES[variant]
    path = Path(root) / folder / f"{split}_{stem}.h5"
    if not path.is_file():
        raise DatasetError(f"{path} does not exist (expected ScanObjectNN's h5_files/ layout).")
    with h5py.File(path, "r") as file:
        if "data" not in file or "label" not in file:
            raise DatasetError(f"{path} lacks the 'data' and 'label' datasets.")
        data = np.asarray(file["data"], dtype=np.float32)
        stored = np.asarray(file["label"]).reshape(-1)
    labels = stored.astype(np.int64)
    if not np.array_equal(labels, stored):  # a float label such as 2.7 would be cut to class 2
        raise DatasetError(
            f"{path}: label holds values that are not whole numbers, e.g. {stored[labels != stored][0]}."
        )
    if data.ndim != 3 or data.shape[2] < 3 or len(data) != len(labels):
        raise DatasetError(f"{path}: data {data.shape} and label {labels.shape} are not (N, P, 3) and (N,).")
    bad_clouds = np.flatnonzero(~np.isfinite(data[..., :3]).all(axis=(1, 2)))
    if len(bad_clouds):
        raise DatasetError(f"{path}: cloud {bad_clouds[0]} has a non-finite coordinate ({len(bad_clouds)} clouds).")
    if labels.min() < 0 or labels.max() >= len(SCANOBJECTNN_CLASSES):
        raise DatasetError(f"{path}: labels outside 0..{len(SCANOBJECTNN_CLASSES) - 1}.")
    return [cloud[:, :3] for cloud in data], labels.tolist()


def read_shapenet55_list(root: str | Path, split: str) -> tuple[list[Path], list[str]]:
    """The ``.npy`` paths and taxonomy ids of a ShapeNet-55 split (``root``: ``ShapeNet55-34/``)."""
    root = Path(root)
    listing = root / "ShapeNet-55" / f"{split}.txt"
    if not listing.is_file():
        raise DatasetError(f"{listing} does not exist (expected ShapeNet55-34/ShapeNet-55/{split}.txt).")
    paths, taxonomies = [], []
    for line in (entry.strip() for entry in listing.read_text().splitlines()):
        if not line:
            continue
        if "-" not in line or not line.endswith(".npy"):
            raise DatasetError(f"{listing}: entry {line!r} is not '<taxonomy>-<model>.npy'.")
        paths.append(root / "shapenet_pc" / line)
        taxonomies.append(line.split("-", 1)[0])
    if not paths:
        raise DatasetError(f"{listing} lists no clouds.")
    return paths, taxonomies


class NpyClouds(Dataset):
    """Clouds read on access from ``.npy`` files (no pickles), ``num_points`` of them drawn at random."""

    def __init__(self, paths: list[Path], labels: list[int], num_points: int) -> None:
        self.paths, self.labels, self.num_points = paths, labels, num_points

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        try:
            cloud = np.load(path, allow_pickle=False).astype(np.float32)
        except (OSError, ValueError) as error:
            raise DatasetError(f"{path} cannot be read as a .npy array: {error}") from error
        if cloud.ndim != 2 or cloud.shape[1] < 3 or len(cloud) < self.num_points:
            raise DatasetError(f"{path} holds {cloud.shape}, not at least ({self.num_points}, 3) points.")
        chosen = torch.randperm(len(cloud))[: self.num_points].numpy()
        return {POINTS: torch.from_numpy(normalise_cloud(cloud[chosen, :3])), LABEL: self.labels[index]}


#: ModelNet40's classes in label order (``modelnet40_shape_names.txt``), which the few-shot folds index.
MODELNET40_CLASSES = (
    "airplane", "bathtub", "bed", "bench", "bookshelf", "bottle", "bowl", "car", "chair", "cone",
    "cup", "curtain", "desk", "door", "dresser", "flower_pot", "glass_box", "guitar", "keyboard", "lamp",
    "laptop", "mantel", "monitor", "night_stand", "person", "piano", "plant", "radio", "range_hood", "sink",
    "sofa", "stairs", "stool", "table", "tent", "toilet", "tv_stand", "vase", "wardrobe", "xbox",
)  # fmt: skip


def read_modelnet_fewshot(
    root: str | Path, way: int, shot: int, fold: int
) -> tuple[dict[str, tuple[list[np.ndarray], list[int]]], list[str]]:
    """The train and test clouds (normalised, coordinates only) and way-index labels of one few-shot fold,
    and the class names in way-index order."""
    from lightning_prompts.utils.safe_pickle import load_numpy_pickle

    path = Path(root) / f"{way}way_{shot}shot" / f"{fold}.pkl"
    if not path.is_file():
        raise DatasetError(f"{path} does not exist (expected ModelNetFewshot/<way>way_<shot>shot/<fold>.pkl).")
    content = load_numpy_pickle(path, "ModelNet40 few-shot fold")
    if not isinstance(content, dict) or not {"train", "test"} <= set(content):
        raise DatasetError(f"{path} is not a few-shot fold (a dict with 'train' and 'test').")
    names: dict[int, str] = {}
    splits: dict[str, tuple[list[np.ndarray], list[int]]] = {}
    for split in ("train", "test"):
        clouds, labels = [], []
        for position, entry in enumerate(content[split]):
            if not (isinstance(entry, (tuple, list)) and len(entry) == 3 and isinstance(entry[0], np.ndarray)):
                raise DatasetError(f"{path}: {split} entry {position} is not (points, label, class id).")
            points, label, class_id = entry
            if not 0 <= int(label) < way or not 0 <= int(class_id) < len(MODELNET40_CLASSES):
                raise DatasetError(f"{path}: {split} entry {position} has label {label}, class id {class_id}.")
            names[int(label)] = MODELNET40_CLASSES[int(class_id)]
            clouds.append(normalise_cloud(np.asarray(points, dtype=np.float32)[:, :3]))
            labels.append(int(label))
        splits[split] = (clouds, labels)
    if sorted(names) != list(range(way)):
        raise DatasetError(f"{path}: the training entries do not cover the {way} ways.")
    return splits, [names[i] for i in range(way)]


def sample_shape(kind: str, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` points on the surface of a unit ``kind`` (one of :data:`SHAPES`)."""
    u, v = rng.random(count), rng.random(count)
    if kind == "sphere":
        z, phi = 2 * u - 1, 2 * math.pi * v
        r = np.sqrt(1 - z**2)
        return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)
    if kind == "cube":
        points = rng.uniform(-1, 1, size=(count, 3))
        axis, sign = rng.integers(0, 3, count), rng.choice([-1.0, 1.0], count)
        points[np.arange(count), axis] = sign
        return points
    if kind == "cylinder":
        phi, z = 2 * math.pi * u, 2 * v - 1
        return np.stack([np.cos(phi), np.sin(phi), z], axis=1)
    if kind == "cone":
        phi, h = 2 * math.pi * u, np.sqrt(v)  # uniform over the lateral surface
        return np.stack([h * np.cos(phi), h * np.sin(phi), 1 - 2 * h], axis=1)
    if kind == "torus":
        phi, theta = 2 * math.pi * u, 2 * math.pi * v
        ring = 1 + 0.35 * np.cos(theta)
        return np.stack([ring * np.cos(phi), ring * np.sin(phi), 0.35 * np.sin(theta)], axis=1)
    raise ValueError(f"unknown shape {kind!r}; expected one of {SHAPES}.")


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3-D rotation (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def corrupt(cloud: np.ndarray, corruption: Corruption, severity: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian jitter with std ``severity``, or a ``severity`` share of points replaced by uniform outliers
    in the bounding cube ``[-1, 1]³``."""
    if corruption == "none" or severity <= 0:
        return cloud
    if corruption == "jitter":
        return cloud + rng.normal(0.0, severity, size=cloud.shape).astype(cloud.dtype)
    if corruption == "outliers":
        cloud = cloud.copy()
        chosen = rng.choice(len(cloud), size=int(round(severity * len(cloud))), replace=False)
        cloud[chosen] = rng.uniform(-1, 1, size=(len(chosen), 3))
        return cloud
    raise ValueError(f"corruption must be 'none', 'jitter' or 'outliers', got {corruption!r}.")


class ProceduralShapes(Dataset):
    """``per_class`` clouds of ``points`` points for each shape of :data:`SHAPES` (see the module docstring);
    sample ``i`` is drawn from ``numpy.random.default_rng([seed, i])``, so a split is the same everywhere."""

    def __init__(
        self,
        per_class: int,
        points: int = 1024,
        seed: int = 0,
        corruption: Corruption = "none",
        severity: float = 0.0,
    ) -> None:
        self.per_class, self.points, self.seed = per_class, points, seed
        self.corruption, self.severity = corruption, severity

    def __len__(self) -> int:
        return self.per_class * len(SHAPES)

    def cloud(self, index: int) -> tuple[np.ndarray, int]:
        label = index % len(SHAPES)
        rng = np.random.default_rng([self.seed, index])
        cloud = sample_shape(SHAPES[label], self.points, rng) * rng.uniform(0.6, 1.4, size=3)
        cloud = normalise_cloud(cloud @ random_rotation(rng).T).astype(np.float32)
        return corrupt(cloud, self.corruption, self.severity, rng).astype(np.float32), label

    def __getitem__(self, index: int) -> dict[str, Any]:
        cloud, label = self.cloud(index)
        return {POINTS: torch.from_numpy(cloud), LABEL: label}


class CloudList(Dataset):
    def __init__(self, clouds: list[np.ndarray], labels: list[int]) -> None:
        self.clouds, self.labels = clouds, labels

    def __len__(self) -> int:
        return len(self.clouds)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {POINTS: torch.from_numpy(np.ascontiguousarray(self.clouds[index])), LABEL: self.labels[index]}


def few_shot_indices(labels: list[int], shots: int, seed: int) -> list[int]:
    """``shots`` indices per class, drawn with ``random.Random(seed)``."""
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    rng, chosen = random.Random(seed), []
    for label, members in sorted(by_class.items()):
        if len(members) < shots:
            raise DatasetError(f"class {label} has {len(members)} training clouds, fewer than {shots} shots.")
        chosen += rng.sample(members, shots)
    return sorted(chosen)


def shuffle_points(points: Tensor) -> Tensor:
    """Each cloud's points in a random order of its own. IDPT's (Point-MAE's) training datasets shuffle a cloud's
    points on every read (``np.random.shuffle(pt_idxs)``), so the farthest-point pool drawn from it starts at a
    random point and differs from epoch to epoch; without it, FPS from point 0 gives every epoch the same pool."""
    order = torch.rand(points.shape[:2], device=points.device).argsort(dim=1)
    return points.gather(1, order.unsqueeze(-1).expand_as(points))


def pool_points(points: Tensor, pool: int) -> Tensor:
    """The farthest-point pool of ``pool`` points of each cloud, in the order FPS picks them (greedy, from point
    0, so its first ``k`` points are FPS's ``k``); the cloud itself when it has no more than ``pool`` points."""
    if pool >= points.shape[1]:
        return points
    rows = torch.arange(points.shape[0], device=points.device)[:, None]
    return points[rows, farthest_point_sample(points, pool)]


def sample_points(points: Tensor, count: int, pool: int | None) -> Tensor:
    """Farthest point sampling to ``pool`` points (``count`` if ``None``), then a random ``count`` of them.

    Sampling *all* of a cloud's points only reorders them (FPS starts at point 0, which stays first), and
    the patch grouping that follows does not depend on the order, so that case skips the FPS loop (on a
    CPU it is most of a batch's cost: ScanObjectNN's 2,048 of 2,048 points)."""
    pooled = pool_points(points, pool or count)
    keep = pooled.shape[1]
    if keep == count:
        return pooled if pool is None else pooled[:, torch.randperm(keep, device=points.device)]
    return pooled[:, torch.randperm(keep, device=points.device)[:count]]


def augment_clouds(points: Tensor, augment: Augment) -> Tensor:
    """IDPT's training augmentation per cloud: scale in [2/3, 3/2] and shift in [−0.2, 0.2] per axis, or a
    rotation about the vertical (y) axis."""
    batch = points.shape[0]
    if augment == "scale_translate":
        scale = torch.empty(batch, 1, 3, device=points.device).uniform_(2 / 3, 3 / 2)
        shift = torch.empty(batch, 1, 3, device=points.device).uniform_(-0.2, 0.2)
        return points * scale + shift
    if augment == "rotate":
        angle = torch.rand(batch, device=points.device) * 2 * math.pi
        cos, sin, zero, one = angle.cos(), angle.sin(), torch.zeros_like(angle), torch.ones_like(angle)
        rotation = torch.stack([cos, zero, sin, zero, one, zero, -sin, zero, cos], dim=1).view(batch, 3, 3)
        return points @ rotation.to(points.dtype)
    return points


def voting_views(points: Tensor, count: int, pool: int, votes: int) -> Tensor:
    """``(B, votes, count, 3)``: Point-MAE's ``test_vote`` views. One farthest-point pool of ``pool`` points
    per cloud, then for each vote a random ``count`` of the pool's positions (shared by the batch) and a
    per-cloud scale in [2/3, 3/2] and shift in [−0.2, 0.2] per axis."""
    return views_from_pool(pool_points(points, pool), count, votes)


def views_from_pool(pooled: Tensor, count: int, votes: int) -> Tensor:
    """:func:`voting_views` from an FPS pool already taken."""
    keep = pooled.shape[1]
    views = []
    for _ in range(votes):
        chosen = pooled[:, torch.randperm(keep, device=pooled.device)[: min(count, keep)]]
        views.append(augment_clouds(chosen, "scale_translate"))
    return torch.stack(views, dim=1)


@register_datamodule()
class PointCloudDataModule(LightningDataModule):
    """Point-cloud classification (see the module docstring).

    Args:
        dataset: ``"modelnet40"``, ``"modelnet40_fewshot"``, ``"scanobjectnn"``, ``"shapenet55"`` or
            ``"shapes"`` (procedural, offline).
        root: the dataset folder (``modelnet40_normal_resampled/``, ``ModelNetFewshot/``, ScanObjectNN's
            ``h5_files/`` or ``ShapeNet55-34/``).
        way, shot, fold: the few-shot fold (5 or 10 ways, 10 or 20 shots, folds 0–9).
        variant: ScanObjectNN's ``obj_only``, ``obj_bg`` or ``pb_t50_rs``.
        num_points: points per cloud the model reads (1,024 ModelNet40, 2,048 ScanObjectNN).
        train_pool: farthest-point pool the training points are drawn from (default: IDPT's 1.17×).
        augment: training augmentation (default: ``scale_translate`` for ModelNet and shapes, ``rotate``
            for ScanObjectNN).
        shots: training clouds per class (few-shot); ``None``: all.
        shapes_per_class, shapes_test_per_class: sizes of the procedural splits.
        test_corruption, test_severity: corruption of the procedural validation/test clouds.
        test_votes: V > 0 adds ``"point_votes"`` ``(B, V, num_points, 3)`` to every *test* batch, Point-MAE's
            and IDPT's voting views: a farthest-point pool of ``train_pool`` points, then per vote a random
            ``num_points`` of them (the same positions for the whole batch) scaled and shifted per cloud;
            :class:`~lightning_prompts.evaluation.PointVotingEvaluator` averages the logits (official: 10).
        batch_size: clouds per batch (32).
        num_workers: loader workers.
        seed: seed of the few-shot draw and of the procedural shapes.

    As in the official configs, ModelNet40 and ScanObjectNN validate on their test split (they have no
    other); the recipes report the last epoch's test accuracy rather than the best one.
    """

    def __init__(
        self,
        dataset: DatasetName = "modelnet40",
        root: str | None = None,
        variant: ScanVariant = "pb_t50_rs",
        num_points: int = 1024,
        train_pool: int | None = None,
        augment: Augment | None = None,
        shots: int | None = None,
        shapes_per_class: int = 40,
        shapes_test_per_class: int = 20,
        test_corruption: Corruption = "none",
        test_severity: float = 0.0,
        test_votes: int = 0,
        way: int = 5,
        shot: int = 10,
        fold: int = 0,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if dataset not in ("modelnet40", "modelnet40_fewshot", "scanobjectnn", "shapenet55", "shapes"):
            raise ConfigurationError(
                f"dataset must be 'modelnet40', 'modelnet40_fewshot', 'scanobjectnn', 'shapenet55' or 'shapes', "
                f"got {dataset!r}."
            )
        if dataset != "shapes" and root is None:
            raise ConfigurationError(f"{dataset} needs root (the dataset folder).")
        check_at_least(num_points=(num_points, 1), batch_size=(batch_size, 1), num_workers=(num_workers, 0))
        if shots is not None and shots < 1:
            raise ConfigurationError(
                f"shots must be a positive number of clouds per class, or null for all; got {shots}."
            )
        self.dataset, self.root, self.variant, self.num_points = dataset, root, variant, num_points
        self.train_pool = train_pool if train_pool is not None else int(round(num_points * 1.171875))  # 1024→1200
        if self.train_pool < num_points:
            raise ConfigurationError(f"train_pool ({self.train_pool}) must hold num_points ({num_points}).")
        self.augment: Augment = augment or ("rotate" if dataset == "scanobjectnn" else "scale_translate")
        self.shots, self.seed, self.batch_size, self.num_workers = shots, seed, batch_size, num_workers
        self.shapes_per_class, self.shapes_test_per_class = shapes_per_class, shapes_test_per_class
        self.test_corruption, self.test_severity = test_corruption, test_severity
        if test_votes < 0:
            raise ConfigurationError(f"test_votes must be >= 0, got {test_votes}.")
        self.test_votes = test_votes
        self.way, self.shot, self.fold = way, shot, fold
        self._splits: dict[str, Dataset] | None = None
        self._classnames: list[str] | None = None

    @property
    def classnames(self) -> list[str]:
        if self.dataset == "shapes":
            return list(SHAPES)
        if self.dataset == "scanobjectnn":
            return list(SCANOBJECTNN_CLASSES)
        if self._classnames is None and self.dataset == "modelnet40_fewshot":
            self._classnames = read_modelnet_fewshot(str(self.root), self.way, self.shot, self.fold)[1]
        if self._classnames is None and self.dataset == "shapenet55":
            self._classnames = sorted(set(read_shapenet55_list(str(self.root), "train")[1]))
        if self._classnames is None:
            names = Path(str(self.root)) / "modelnet40_shape_names.txt"
            if not names.is_file():
                raise DatasetError(f"{names} does not exist (expected ModelNet40's modelnet40_normal_resampled/).")
            self._classnames = [line.strip() for line in names.read_text().splitlines() if line.strip()]
        return list(self._classnames)

    def _read(self) -> dict[str, Dataset]:
        if self.dataset == "shapes":
            # as many points as the sampling reads: the training pool, and num_points for evaluation
            train = ProceduralShapes(self.shapes_per_class, self.train_pool, self.seed)
            test = ProceduralShapes(
                self.shapes_test_per_class, self.num_points, self.seed + 1, self.test_corruption, self.test_severity
            )
            labels = [i % len(SHAPES) for i in range(len(train))]
        elif self.dataset == "shapenet55":
            index = {name: i for i, name in enumerate(self.classnames)}
            splits: dict[str, Dataset] = {}
            for split in ("train", "test"):
                paths, taxonomies = read_shapenet55_list(str(self.root), split)
                missing = [path for path in paths if not path.is_file()]  # else the first epoch fails on them
                if missing:
                    raise DatasetError(
                        f"{len(missing)} of the {len(paths)} clouds ShapeNet-55 {split}.txt lists are missing from "
                        f"{missing[0].parent}, e.g. {[path.name for path in missing[:3]]}; extract ShapeNet55-34 "
                        f"again or remove them from {split}.txt."
                    )
                unknown = sorted(set(taxonomies) - set(index))
                if unknown:
                    raise DatasetError(f"ShapeNet-55 {split}.txt has taxonomies {unknown} that train.txt lacks.")
                splits[split] = NpyClouds(paths, [index[t] for t in taxonomies], self.num_points)
            train, test = splits["train"], splits["test"]
            labels = list(train.labels)  # type: ignore[attr-defined]
        else:
            if self.dataset == "modelnet40_fewshot":
                fold, _ = read_modelnet_fewshot(str(self.root), self.way, self.shot, self.fold)
                (train_clouds, labels), (test_clouds, test_labels) = fold["train"], fold["test"]
            elif self.dataset == "modelnet40":
                train_clouds, labels, _ = read_modelnet40(str(self.root), "train")
                test_clouds, test_labels, _ = read_modelnet40(str(self.root), "test")
            else:
                train_clouds, labels = read_scanobjectnn(str(self.root), self.variant, "training")
                test_clouds, test_labels = read_scanobjectnn(str(self.root), self.variant, "test")
            smallest = min(len(cloud) for cloud in (*train_clouds, *test_clouds))
            if smallest < self.num_points:
                raise DatasetError(f"a cloud has {smallest} points, fewer than num_points={self.num_points}.")
            train, test = CloudList(train_clouds, labels), CloudList(test_clouds, test_labels)
        if self.shots is not None:
            train = torch.utils.data.Subset(train, few_shot_indices(labels, self.shots, self.seed))
        return {"train": train, "test": test}

    def setup(self, stage: str) -> None:
        if self._splits is None:
            self._splits = self._read()

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        assert self._splits is not None, "call setup() first"
        dataset = self._splits[split]
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=None if shuffle else evaluation_sampler(dataset),
            num_workers=self.num_workers,
            # BatchNorm in the head: no partial batch (of one cloud, maybe) where each process has a full one
            drop_last=shuffle and drops_last(len(dataset), self.batch_size, self.trainer),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def predict_dataloader(self) -> DataLoader:
        """The test clouds (as ``test``, without its voting over ``test_votes`` augmented copies)."""
        return self.test_dataloader()

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """IDPT's sampling and augmentation on the device (see the module docstring)."""
        points = batch[POINTS].float()
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.training:
            shuffled = shuffle_points(points)  # IDPT's datasets shuffle a training cloud on every read
            points = augment_clouds(sample_points(shuffled, self.num_points, self.train_pool), self.augment)
            return {**batch, POINTS: points}
        if self.test_votes and trainer is not None and trainer.testing:
            pooled = pool_points(points, self.train_pool)
            votes = {POINT_VOTES: views_from_pool(pooled, self.num_points, self.test_votes)}
            if pooled.shape[1] < points.shape[1] and self.num_points <= pooled.shape[1]:
                # FPS picks greedily, so the pool's first num_points are the evaluation sample: no second FPS
                return {**batch, POINTS: pooled[:, : self.num_points], **votes}
            return {**batch, POINTS: sample_points(points, self.num_points, None), **votes}
        return {**batch, POINTS: sample_points(points, self.num_points, None)}
