"""Point-cloud data: ModelNet40 and ScanObjectNN readers on files written in their layouts, the procedural
shapes, and IDPT's device-side sampling and augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_prompts.backbones.point_ops import farthest_point_sample
from lightning_prompts.batch import LABEL, POINT_VOTES, POINTS
from lightning_prompts.data.point_clouds import (
    SHAPES,
    PointCloudDataModule,
    ProceduralShapes,
    augment_clouds,
    read_modelnet40,
    read_scanobjectnn,
    sample_points,
)
from lightning_prompts.errors import ConfigurationError, DatasetError


def write_modelnet(root, classes=("airplane", "night_stand", "vase"), points=300):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    (root / "modelnet40_shape_names.txt").write_text("\n".join(classes) + "\n")
    splits = {"train": [], "test": []}
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(3):
            shape = f"{name}_{i + 1:04d}"
            cloud = rng.normal(size=(points, 3)) * (c + 1) + 5.0
            normals = rng.normal(size=(points, 3))
            np.savetxt(root / name / f"{shape}.txt", np.hstack([cloud, normals]), delimiter=",", fmt="%.6f")
            splits["test" if i == 2 else "train"].append(shape)
    for split, shapes in splits.items():
        (root / f"modelnet40_{split}.txt").write_text("\n".join(shapes) + "\n")
    return root


def test_modelnet40_is_read_normalised_with_class_names_from_the_shape_ids(tmp_path):
    root = write_modelnet(tmp_path / "modelnet40_normal_resampled")
    clouds, labels, classes = read_modelnet40(root, "train", stored_points=200)
    assert classes == ["airplane", "night_stand", "vase"]  # 'night_stand_0001' → 'night_stand'
    assert labels == [0, 0, 1, 1, 2, 2] and clouds[0].shape == (200, 3)
    for cloud in clouds:
        assert np.allclose(cloud.mean(0), 0, atol=1e-5)
        assert np.isclose(np.sqrt((cloud**2).sum(1)).max(), 1.0)
    (root / "modelnet40_test.txt").write_text("chair_0001\n")
    with pytest.raises(DatasetError, match="of no class"):
        read_modelnet40(root, "test")
    with pytest.raises(DatasetError, match="does not exist"):
        read_modelnet40(tmp_path, "train")


def test_the_official_fps_cache_is_read_instead_of_the_text_files(tmp_path):
    import pickle

    root = write_modelnet(tmp_path / "modelnet40_normal_resampled")
    rng = np.random.default_rng(0)
    stored = [rng.normal(size=(50, 6)).astype(np.float32) * 3 + 1 for _ in range(3)]
    labels = [np.array([c]).astype(np.int32) for c in (2, 0, 1)]
    with open(root / "modelnet40_train_50pts_fps.dat", "wb") as handle:  # Point-BERT's format: [points, labels]
        pickle.dump([stored, labels], handle)
    clouds, read_labels, classes = read_modelnet40(root, "train", stored_points=50)
    assert read_labels == [2, 0, 1] and classes == ["airplane", "night_stand", "vase"]
    for cloud, original in zip(clouds, stored, strict=True):  # pc_normalize of the xyz columns
        centred = original[:, :3] - original[:, :3].mean(0)
        assert np.allclose(cloud, centred / np.sqrt((centred**2).sum(1)).max(), atol=1e-6)
    with open(root / "modelnet40_train_50pts_fps.dat", "wb") as handle:
        pickle.dump([stored, [np.array([7], dtype=np.int32)] * 3], handle)
    with pytest.raises(DatasetError, match="label below 3"):
        read_modelnet40(root, "train", stored_points=50)


def test_scanobjectnn_variants_are_read_from_their_h5_files(tmp_path):
    h5py = pytest.importorskip("h5py")
    folder = tmp_path / "h5_files" / "main_split"
    folder.mkdir(parents=True)
    data = np.random.default_rng(0).normal(size=(4, 64, 3)).astype(np.float32)
    with h5py.File(folder / "training_objectdataset_augmentedrot_scale75.h5", "w") as file:
        file["data"], file["label"] = data, np.array([0, 3, 14, 2], dtype=np.uint8)
    clouds, labels = read_scanobjectnn(tmp_path / "h5_files", "pb_t50_rs", "training")
    assert labels == [0, 3, 14, 2] and np.array_equal(clouds[1], data[1])
    with pytest.raises(DatasetError, match="does not exist"):
        read_scanobjectnn(tmp_path / "h5_files", "obj_only", "training")
    with h5py.File(folder / "test_objectdataset_augmentedrot_scale75.h5", "w") as file:
        file["data"], file["label"] = data, np.array([0, 1, 2, 15])
    with pytest.raises(DatasetError, match="labels outside"):
        read_scanobjectnn(tmp_path / "h5_files", "pb_t50_rs", "test")


def test_procedural_shapes_are_deterministic_and_corruptible():
    shapes = ProceduralShapes(per_class=2, points=512, seed=3)
    assert len(shapes) == 10 and [shapes[i][LABEL] for i in range(5)] == [0, 1, 2, 3, 4]
    assert torch.equal(shapes[7][POINTS], ProceduralShapes(2, 512, seed=3)[7][POINTS])
    sphere = shapes.cloud(0)[0]  # unit sphere, stretched and rotated: every point within the unit ball
    assert sphere.shape == (512, 3) and np.sqrt((sphere**2).sum(1)).max() == pytest.approx(1.0, abs=1e-5)
    clean = ProceduralShapes(2, 512, seed=3).cloud(1)[0]
    noisy = ProceduralShapes(2, 512, seed=3, corruption="outliers", severity=0.25).cloud(1)[0]
    assert (np.abs(noisy - clean).sum(1) > 0).sum() == pytest.approx(128, abs=2)  # 25 % of the points moved
    assert SHAPES == ("sphere", "cube", "cylinder", "cone", "torus")


def test_sampling_is_fps_for_evaluation_and_a_random_subset_of_an_fps_pool_for_training():
    torch.manual_seed(0)
    points = torch.randn(2, 300, 3)
    rows = torch.arange(2)[:, None]
    assert torch.equal(sample_points(points, 64, None), points[rows, farthest_point_sample(points, 64)])
    train = sample_points(points, 64, 75)
    pool = points[rows, farthest_point_sample(points, 75)]
    for b in range(2):  # every training point is one of the 75 pool points, none twice
        matches = (train[b][:, None] == pool[b][None]).all(-1)
        assert matches.sum(1).eq(1).all() and matches.sum(0).le(1).all()
    # all of a cloud: FPS would only reorder it (point 0 first), so the loop is skipped
    ordered = points[rows, farthest_point_sample(points, 300)]
    assert torch.equal(ordered[:, 0], points[:, 0]) and torch.equal(sample_points(points, 300, None), points)
    assert torch.equal(ordered.sort(dim=1).values, sample_points(points, 300, 300).sort(dim=1).values)
    scaled = augment_clouds(torch.ones(8, 5, 3), "scale_translate")
    assert scaled.min() >= 2 / 3 - 0.2 and scaled.max() <= 3 / 2 + 0.2
    rotated = augment_clouds(points, "rotate")
    assert torch.allclose(rotated[..., 1], points[..., 1]) and torch.allclose(rotated.norm(dim=-1), points.norm(dim=-1))


def test_data_module_serves_sampled_clouds_and_checks_its_arguments(tmp_path):
    with pytest.raises(ConfigurationError, match="needs root"):
        PointCloudDataModule("modelnet40")
    with pytest.raises(ConfigurationError, match="train_pool"):
        PointCloudDataModule("shapes", num_points=64, train_pool=32)
    data = PointCloudDataModule("shapes", num_points=64, shapes_per_class=4, shapes_test_per_class=2, shots=2)
    data.setup("fit")
    assert data.classnames == list(SHAPES) and len(data._splits["train"]) == 10
    batch = data.on_after_batch_transfer(next(iter(data.val_dataloader())), 0)
    assert batch[POINTS].shape == (10, 64, 3)
    modelnet = PointCloudDataModule("modelnet40", str(write_modelnet(tmp_path / "m")), num_points=64, batch_size=2)
    modelnet.setup("fit")
    assert modelnet.classnames == ["airplane", "night_stand", "vase"]
    assert next(iter(modelnet.train_dataloader()))[POINTS].shape == (2, 300, 3)


def test_shapenet55_reads_npy_clouds_lazily_and_never_unpickles(tmp_path):
    root = tmp_path / "ShapeNet55-34"
    (root / "ShapeNet-55").mkdir(parents=True)
    (root / "shapenet_pc").mkdir()
    rng = np.random.default_rng(0)
    names = ["02691156-aaa.npy", "03001627-bbb.npy", "02691156-ccc.npy"]
    for name in names:
        np.save(root / "shapenet_pc" / name, (rng.normal(size=(200, 3)) + 3).astype(np.float32))
    (root / "ShapeNet-55" / "train.txt").write_text("\n".join(names[:2]) + "\n")
    (root / "ShapeNet-55" / "test.txt").write_text(names[2] + "\n")
    data = PointCloudDataModule("shapenet55", str(root), num_points=64, batch_size=2)
    data.setup("fit")
    assert data.classnames == ["02691156", "03001627"]
    item = data._splits["train"][1]
    assert item[POINTS].shape == (64, 3) and item[LABEL] == 1
    assert np.isclose(item[POINTS].norm(dim=1).max().item(), 1.0, atol=1e-5)
    np.save(root / "shapenet_pc" / names[2], np.array([{"code": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match="cannot be read"):
        data._splits["test"][0]


def write_fewshot_fold(path, way=5, shot=2, seed=0):
    """A fold as Point-BERT's generate_few_shot_data.py pickles it: (points, way index, np.int32 class id)."""
    import pickle

    rng = np.random.default_rng(seed)
    keys = [np.array([k]).astype(np.int32)[0] for k in (8, 0, 39, 17, 23)][:way]  # chair, airplane, xbox, …
    content = {
        split: [(rng.normal(size=(64, 6)).astype(np.float32) + 2, i, keys[i]) for i in range(way) for _ in range(n)]
        for split, n in (("train", shot), ("test", 3))
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(content))


def test_modelnet_fewshot_folds_are_read_by_a_restricted_unpickler(tmp_path):
    import pickle

    from lightning_prompts.data.point_clouds import read_modelnet_fewshot

    root = tmp_path / "ModelNetFewshot"
    write_fewshot_fold(root / "5way_2shot" / "3.pkl")
    splits, names = read_modelnet_fewshot(root, 5, 2, 3)
    assert names == ["chair", "airplane", "xbox", "guitar", "night_stand"]
    clouds, labels = splits["train"]
    assert len(clouds) == 10 and sorted(set(labels)) == [0, 1, 2, 3, 4] and clouds[0].shape == (64, 3)
    assert np.isclose(np.sqrt((clouds[0] ** 2).sum(1)).max(), 1.0)
    data = PointCloudDataModule("modelnet40_fewshot", str(root), num_points=32, way=5, shot=2, fold=3, batch_size=4)
    data.setup("fit")
    assert data.classnames[0] == "chair" and len(data._splits["test"]) == 15

    class Payload:  # a pickle that would run a command when loaded
        def __reduce__(self):
            import os

            return (os.system, ("echo unsafe",))

    (root / "5way_2shot" / "4.pkl").write_bytes(pickle.dumps({"train": [Payload()], "test": []}))
    with pytest.raises(DatasetError, match="not allowed"):
        read_modelnet_fewshot(root, 5, 2, 4)


def test_voting_views_follow_the_official_test_vote():
    from lightning_prompts.data.point_clouds import voting_views

    torch.manual_seed(0)
    clouds = torch.randn(3, 80, 3)
    pooled_positions = farthest_point_sample(clouds, 60)
    torch.manual_seed(5)
    views = voting_views(clouds, 50, 60, votes=4)
    assert views.shape == (3, 4, 50, 3)
    # re-computed with the same draws: one FPS pool, per vote a shared random subset, then per-cloud scale/shift
    torch.manual_seed(5)
    rows = torch.arange(3)[:, None]
    pooled = clouds[rows, pooled_positions]
    for vote in range(4):
        chosen = pooled[:, torch.randperm(60)[:50]]
        scale = torch.empty(3, 1, 3).uniform_(2 / 3, 3 / 2)
        shift = torch.empty(3, 1, 3).uniform_(-0.2, 0.2)
        torch.testing.assert_close(views[:, vote], chosen * scale + shift)
    assert not torch.allclose(views[:, 0], views[:, 1])


def test_the_voting_evaluator_averages_logits_over_the_views(trainer_kwargs):
    from lightning.pytorch import Trainer

    from lightning_prompts.backbones import PointMAE
    from lightning_prompts.evaluation import PointVotingEvaluator
    from lightning_prompts.methods import PointLinearProbe

    torch.manual_seed(0)
    backbone = PointMAE(num_patches=8, patch_size=8, width=16, depth=1, num_heads=2)
    data = PointCloudDataModule(dataset="shapes", num_points=64, train_pool=80, shapes_per_class=2,
                                shapes_test_per_class=2, batch_size=10, test_votes=3)  # fmt: skip
    captured = []

    class Capture(PointVotingEvaluator):
        def score(self, module, batch, stage, dataloader_idx):
            scores = super().score(module, batch, stage, dataloader_idx)
            votes = batch[POINT_VOTES]
            with torch.no_grad():
                each = torch.stack([module.forward_batch({POINTS: votes[:, v]}).logits for v in range(3)])
            captured.append(torch.allclose(scores, each.mean(dim=0), atol=1e-6))
            return scores

    method = PointLinearProbe(backbone, data.classnames, evaluator=Capture())
    result = Trainer(**trainer_kwargs).test(method, data)[0]
    assert captured and all(captured) and 0.0 <= result["test/acc"] <= 1.0
    with pytest.raises(ConfigurationError, match="test_votes"):
        plain = PointCloudDataModule(dataset="shapes", num_points=64, shapes_per_class=2, shapes_test_per_class=2)
        Trainer(**trainer_kwargs).test(
            PointLinearProbe(backbone, plain.classnames, evaluator=PointVotingEvaluator()), plain
        )


def test_the_idpt_page_voting_options_run_a_test(tmp_path, monkeypatch):
    import re
    import shlex
    from pathlib import Path

    from lightning_prompts.cli import run_cli

    root = Path(__file__).resolve().parents[2]
    page = (root / "docs" / "methods" / "idpt.md").read_text()
    options = shlex.split(re.search(r"ModelNet voting: `(.*?)`", page).group(1))
    monkeypatch.chdir(root)
    cli = run_cli(["test", "--config", "recipes/idpt/modelnet40.yaml", "--config", "recipes/_tiny/idpt.yaml",
                   *options, f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    assert type(cli.model.evaluator).__name__ == "PointVotingEvaluator" and cli.datamodule.test_votes == 10
    assert "test/acc" in cli.trainer.callback_metrics


def test_the_fps_pool_prefix_is_the_evaluation_sample():
    """Voting reuses its FPS pool for the evaluated clouds: FPS is greedy, so the pool's first points are FPS's."""
    from lightning_prompts.data.point_clouds import pool_points

    clouds = torch.randn(2, 300, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(pool_points(clouds, 120)[:, :64], sample_points(clouds, 64, None))
    assert pool_points(clouds, 300) is clouds


def test_training_pools_start_at_a_random_point_as_idpts_shuffled_reads_do():
    """IDPT's datasets shuffle a training cloud on every read, so its FPS pool changes between epochs; from a fixed
    first point it would be the same pool every time."""
    from types import SimpleNamespace

    from lightning_prompts.data.point_clouds import pool_points, shuffle_points

    torch.manual_seed(0)
    cloud = torch.randn(1, 200, 3)
    shuffled = shuffle_points(cloud.expand(3, -1, -1))
    assert torch.equal(shuffled.sort(dim=1).values, cloud.expand(3, -1, -1).sort(dim=1).values)  # same points
    assert not torch.equal(shuffled[0], shuffled[1])  # each cloud its own order
    data = PointCloudDataModule("shapes", num_points=16, train_pool=24, augment="none")
    data.trainer = SimpleNamespace(training=True, testing=False)
    fixed_pool = {tuple(point) for point in pool_points(cloud, 24)[0].tolist()}
    seen = set()
    for _ in range(20):
        points = data.on_after_batch_transfer({POINTS: cloud}, 0)[POINTS]
        assert points.shape == (1, 16, 3)
        seen |= {tuple(point) for point in points[0].tolist()}
    assert len(fixed_pool) == 24 and len(seen - fixed_pool) > 0  # training points from outside the fixed pool
