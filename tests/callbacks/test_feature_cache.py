"""FrozenFeatureCache: text-side prompts train on precomputed frozen image features."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import synthetic_fewshot
from lightning.pytorch import Callback, Trainer, seed_everything

from lightning_prompts.callbacks import FrozenFeatureCache
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods import CoOp, MaPLe


class ValidationAccuracies(Callback):
    def __init__(self):
        self.values = []

    def on_train_epoch_end(self, trainer, module):  # after the epoch's validation has logged
        self.values.append(float(trainer.callback_metrics["val/acc"]))


def fit_coop(clip, trainer_kwargs, callbacks, augmentation="vtab", validate=False):
    seed_everything(0)
    data = synthetic_fewshot(shots=4, augmentation=augmentation)
    method = CoOp(clip, data.classnames, n_ctx=4, init_std=0.5)
    limits = {} if validate else {"limit_val_batches": 0}
    Trainer(max_epochs=3, callbacks=callbacks, **limits, **trainer_kwargs).fit(method, data)
    return method


def test_with_deterministic_preprocessing_one_pass_trains_and_validates_as_without_the_cache(tiny_clip, trainer_kwargs):
    plain_val, cached_val = ValidationAccuracies(), ValidationAccuracies()
    plain = fit_coop(tiny_clip, trainer_kwargs, [plain_val], validate=True)
    cached = fit_coop(tiny_clip, trainer_kwargs, [FrozenFeatureCache(passes=1), cached_val], validate=True)
    assert torch.allclose(plain.prompt.ctx, cached.prompt.ctx, atol=1e-5)
    assert len(cached_val.values) == 3 and cached_val.values == pytest.approx(plain_val.values, abs=1e-6)


def test_the_cache_leaves_the_training_random_stream_alone(tiny_clip, trainer_kwargs):
    """Filling the cache with random augmentations must not shift the run's own draws (shuffling):
    after fit the global generator is where the uncached run leaves it."""
    fit_coop(tiny_clip, trainer_kwargs, [], augmentation="clip")
    after_plain = torch.get_rng_state()
    fit_coop(tiny_clip, trainer_kwargs, [FrozenFeatureCache(passes=2)], augmentation="clip")
    # the uncached run draws its augmentations from the global stream; the cached run does not, so
    # compare against a run whose training draws no augmentation at all
    fit_coop(tiny_clip, trainer_kwargs, [], augmentation="vtab")
    after_deterministic = torch.get_rng_state()
    fit_coop(tiny_clip, trainer_kwargs, [FrozenFeatureCache(passes=2)], augmentation="vtab")
    assert torch.equal(torch.get_rng_state(), after_deterministic)
    assert not torch.equal(after_plain, after_deterministic)  # the comparison can tell the two apart


def test_training_steps_skip_the_image_encoder(tiny_clip, trainer_kwargs, monkeypatch):
    calls = []
    encode = type(tiny_clip).encode_image
    monkeypatch.setattr(type(tiny_clip), "encode_image", lambda self, *a, **k: calls.append(1) or encode(self, *a, **k))
    cache = FrozenFeatureCache(passes=3, batch_size=64)
    fit_coop(tiny_clip, trainer_kwargs, [cache], augmentation="clip")  # random crops: 3 augmented copies
    images = 4 * 4  # 4 classes x 4 shots, one encoder batch per pass
    assert cache.features.shape == (3, images, tiny_clip.embed_dim)
    assert len(calls) == 3  # the three passes that filled the cache; no training step encoded an image
    assert not torch.allclose(cache.features[0], cache.features[1])  # each pass is its own augmentation


def test_validation_images_are_encoded_once_per_fit(tiny_clip, trainer_kwargs, monkeypatch):
    calls = []
    encode = type(tiny_clip).encode_image
    monkeypatch.setattr(type(tiny_clip), "encode_image", lambda self, *a, **k: calls.append(1) or encode(self, *a, **k))
    fit_coop(tiny_clip, trainer_kwargs, [FrozenFeatureCache(passes=1, batch_size=64)], validate=True)
    # one training pass (16 images, one batch) + one validation pass (16 images, eval batch 8: two batches);
    # the sanity check and the three validation epochs read the cache
    assert len(calls) == 1 + 2


def test_a_method_that_prompts_its_image_side_is_refused(tiny_clip, trainer_kwargs):
    data = synthetic_fewshot()
    trainer = Trainer(max_steps=1, callbacks=[FrozenFeatureCache()], **trainer_kwargs)
    with pytest.raises(ConfigurationError, match="FrozenFeatureCache needs a method whose image encoder"):
        trainer.fit(MaPLe(tiny_clip, data.classnames, depth=2), data)


def test_the_testbed_recipe_with_the_cache_runs_from_the_command_line(tmp_path):
    from lightning_prompts.cli import run_cli

    recipes = Path(__file__).resolve().parents[2] / "recipes"
    cli = run_cli(
        [
            "fit",
            "--config",
            str(recipes / "testbed" / "coop_feature_cache.yaml"),
            "--config",
            str(recipes / "_tiny" / "clip.yaml"),
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    cache = next(c for c in cli.trainer.callbacks if isinstance(c, FrozenFeatureCache))
    assert cache.passes == 1 and cache.features is not None
    assert cache.features.shape[:2] == (1, len(cli.datamodule.train_dataset()))


def test_without_a_callback_that_changes_the_training_set_checkpoints_hold_no_features(tiny_clip, trainer_kwargs):
    cache = FrozenFeatureCache(passes=2)
    fit_coop(tiny_clip, trainer_kwargs, [cache])
    assert cache._stored and cache.state_dict() == {}  # a resumed run encodes the same set in the same batches


def test_the_checkpointed_features_round_trip_and_malformed_ones_are_refused():
    rows = torch.randn(3, 4)
    cache = FrozenFeatureCache(passes=2)
    cache._stored = {(0, "a.png"): rows[0], (1, "a.png"): rows[1], (0, "b.png"): rows[2], ("eval", "a.png"): rows[0]}
    cache._training_set_changes = True
    state = cache.state_dict()
    assert state["entries"] == [[0, "a.png"], [1, "a.png"], [0, "b.png"]]  # the evaluation pass is not written
    restored = FrozenFeatureCache(passes=2)
    restored.load_state_dict(state)
    assert restored._stored.keys() == {(0, "a.png"), (1, "a.png"), (0, "b.png")}
    assert all(torch.equal(restored._stored[key], cache._stored[key]) for key in restored._stored)
    assert FrozenFeatureCache(passes=2, checkpoint_features=False).state_dict() == {}
    for bad in (
        {"entries": [[0, "a.png"]], "features": torch.zeros(2, 4)},  # one row per entry
        {"entries": [["0", "a.png"]], "features": torch.zeros(1, 4)},
        {"entries": [[0, "a.png"]], "features": torch.zeros(1, 4, dtype=torch.long)},
        {"entries": "a.png", "features": torch.zeros(1, 4)},
    ):
        with pytest.raises(ConfigurationError, match="malformed"):
            FrozenFeatureCache().load_state_dict(bad)
    with pytest.raises(ConfigurationError, match="NaN"):
        FrozenFeatureCache().load_state_dict({"entries": [[0, "a.png"]], "features": torch.full((1, 4), float("nan"))})


def test_features_a_validate_or_test_checkpoint_restored_are_not_kept_for_a_later_fit():
    from types import SimpleNamespace

    cache = FrozenFeatureCache(passes=1)
    cache.load_state_dict({"entries": [[0, "old.png"]], "features": torch.zeros(1, 4)})  # validate(ckpt_path=...)
    cache.setup(None, None, "fit")  # the next run: setup comes before its own restore, if any
    cache.on_fit_start(SimpleNamespace(callbacks=[]), None)
    assert cache._stored == {}
