"""GRIP / FPL / IFPL: pseudolabel selection, the round schedule, the γ-weighted loss, the data splits and the
rounds themselves, pinned to re-computations of the official code (BatsResearch/menghini-enhanceCLIPwithCLIP-code)."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import docs_python
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_prompts.batch import IMAGE, PSEUDO_LABELLED
from lightning_prompts.callbacks import FrozenFeatureCache, PseudoLabelRounds
from lightning_prompts.callbacks.pseudolabel_selection import (
    balance_weight,
    leaderboard_top_k,
    pseudolabel_loss,
    pseudolabels_per_class,
)
from lightning_prompts.data import ImageFolderDataModule, Synthetic
from lightning_prompts.data.images import ImageItem
from lightning_prompts.data.pseudolabels import PseudoLabelSplit, partition_for_pseudolabels, seen_class_split
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods import LAPT, CoOp
from lightning_prompts.methods.base.clip import template_ensemble


# -- the official streaming leaderboard, transcribed (tensor scores, tuples sorted like the official ones) --
def official_leaderboard(probs, k):
    boards = {label: [] for label in range(probs.shape[1])}
    for index in range(probs.shape[0]):
        row = probs[index : index + 1]
        pred = int(torch.argmax(row, dim=1).item())
        score = row[0][pred]
        if len(boards[pred]) < k:
            boards[pred].append((score, index))
        elif boards[pred][-1][0] < score:
            boards[pred] = sorted(boards[pred] + [(row[0][pred], index)], reverse=True)[:k]
        else:
            order = sorted([(row[0][j], j) for j in range(probs.shape[1]) if j != pred], reverse=True)
            for _, other in order:
                if len(boards[other]) < k:
                    boards[other].append((row[0][other], index))
                elif boards[other][-1][0] < row[0][other]:
                    boards[other] = sorted(boards[other] + [(row[0][other], index)], reverse=True)[:k]
    images, labels = [], []
    for label, board in boards.items():
        images += [entry[1] for entry in board]
        labels += [label for _ in board]
    return images, labels


def skewed_probabilities(n=80, c=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=generator) * 2.0
    logits[:, 0] += 1.5  # most images predict class 0, so its board overflows and images spill over
    logits[:, -1] -= 4.0  # to the last class, which almost no image predicts
    return logits.softmax(dim=-1)


@pytest.mark.parametrize("k", [1, 4, 9])
def test_the_leaderboard_equals_the_official_streaming_selection(k):
    probs = skewed_probabilities()
    ours = leaderboard_top_k(probs, k)
    assert ours == official_leaderboard(probs, k)
    indices, labels = ours
    predicted = probs.argmax(dim=1)
    spilled = any(int(predicted[i]) != label for i, label in zip(indices, labels, strict=True))
    assert spilled  # images that lost their predicted class's board went to others
    assert all(labels.count(label) <= k for label in range(5))


def test_an_image_that_misses_its_predicted_board_joins_every_board_with_room():
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.85, 0.1, 0.05]])
    # image 0 takes class 0's only place; image 1 (predicted 0, less sure) is offered to classes 2 and 1 and
    # joins both (their boards are empty); image 2 beats no board's last entry (ties do not) and is dropped
    assert leaderboard_top_k(probs, 1) == ([0, 1, 1], [0, 1, 2])
    assert leaderboard_top_k(probs, 1) == official_leaderboard(probs, 1)


def test_grip_grows_k_to_all_unlabelled_data_and_fpl_ifpl_keep_it():
    # |U| = 1000, C = 7, 10 rounds: step int(1000/10) = 100, K_r = int((r+1)·100/7)
    assert [pseudolabels_per_class("grip", r, 1000, 7) for r in range(10)] == [
        int((r + 1) * 100 / 7) for r in range(10)
    ]
    assert pseudolabels_per_class("grip", 9, 1000, 7) == 142 == 1000 // 7
    assert pseudolabels_per_class("grip", 10, 1000, 7) == 142  # capped at floor(|U|/C)
    assert pseudolabels_per_class("grip", 0, 30, 7) == 1  # int(int(30/10)/7) = 0 would leave nothing to train on
    assert pseudolabels_per_class("ifpl", 5, 1000, 7) == pseudolabels_per_class("fpl", 0, 1000, 7) == 16


def test_the_loss_is_gamma_times_the_labelled_mean_plus_the_pseudolabelled_mean():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [0.0, 0.0, 3.0], [1.0, -2.0, 0.5]])
    targets = torch.tensor([0, 2, 2, 1])
    pseudo = torch.tensor([False, True, True, False])
    per_sample = [-(logits[i].log_softmax(-1)[targets[i]]) for i in range(4)]
    expected = 0.25 * (per_sample[0] + per_sample[3]) / 2 + (per_sample[1] + per_sample[2]) / 2
    assert pseudolabel_loss(logits, targets, pseudo, 0.25) == pytest.approx(float(expected), rel=1e-6)
    only_pseudo = torch.ones(4, dtype=torch.bool)
    assert pseudolabel_loss(logits, targets, only_pseudo, 7.0) == pytest.approx(
        float(F.cross_entropy(logits, targets)), rel=1e-6
    )


def test_gamma_follows_the_official_ratio_of_each_strategy():
    assert balance_weight("fpl", 16, 200) == 200 / 16
    assert balance_weight("grip", 16, 200) == balance_weight("ifpl", 16, 200) == 16 / 200
    assert balance_weight("grip", 0, 200) == 0.0


# -- splits ------------------------------------------------------------------------------------------
EUROSAT = [
    "annual crop land",
    "forest",
    "brushland or shrubland",
    "highway or road",
    "industrial buildings or commercial buildings",
    "pasture land",
    "permanent crop land",
    "residential buildings or homes or apartments",
    "river",
    "lake or sea",
]


def test_the_seen_class_draw_reproduces_the_released_eurosat_splits():
    # data/data_splits/EuroSAT.json of the official repository: the seen classes of split seeds 500, 0, 200
    released = {
        500: ["industrial buildings or commercial buildings", "brushland or shrubland", "lake or sea",
              "highway or road", "annual crop land", "pasture land"],
        0: ["brushland or shrubland", "river", "industrial buildings or commercial buildings", "lake or sea",
            "forest", "permanent crop land"],
        200: ["river", "highway or road", "pasture land", "permanent crop land", "forest",
              "residential buildings or homes or apartments"],
    }  # fmt: skip
    for seed, names in released.items():
        seen, unseen = seen_class_split(len(EUROSAT), 0.62, seed)
        assert [EUROSAT[i] for i in seen] == names
        assert sorted(seen + unseen) == list(range(10))


def items_for(classes=3, per_class=6):
    return [ImageItem(f"img_{c}_{i}.png", c, f"class{c}") for i in range(per_class) for c in range(classes)]


def test_the_ssl_split_draws_the_official_shots_and_train_validation_division():
    items = items_for()
    names = ["class0", "class1", "class2"]
    partition = partition_for_pseudolabels(items, names, PseudoLabelSplit(setting="ssl", labelled_per_class=2), "t")
    # the official main_SSL.py: per class, np.random.seed(0) then choice(where(labels == c), 2, replace=False);
    # then np.random.seed(0), choice(range(6), int(6 · 0.8)) for training, the rest for validation
    labels = np.array([item.label for item in items])
    shots = []
    for c in range(3):
        np.random.seed(0)
        shots += list(np.random.choice(np.where(labels == c)[0], size=2, replace=False))
    np.random.seed(0)
    train = np.random.choice(range(6), size=int(6 * 0.8), replace=False)
    assert partition.labelled == [items[shots[i]] for i in train]
    assert sorted(map(str, (i.path for i in partition.labelled + partition.labelled_val))) == sorted(
        str(items[i].path) for i in shots
    )
    assert partition.unlabelled == [item for index, item in enumerate(items) if index not in set(shots)]
    assert partition.pseudolabel_classes == [0, 1, 2]


def test_the_trzsl_split_labels_seen_classes_and_pseudolabels_only_unseen_ones():
    items = items_for(classes=4)
    names = [f"class{c}" for c in range(4)]
    spec = PseudoLabelSplit(setting="trzsl", seen_classes=["class2", "class0"])
    partition = partition_for_pseudolabels(items, names, spec, "t")
    assert {item.label for item in partition.labelled + partition.labelled_val} == {0, 2}
    assert {item.label for item in partition.unlabelled} == {1, 3}
    assert partition.pseudolabel_classes == [1, 3]
    ul = partition_for_pseudolabels(items, names, PseudoLabelSplit(setting="ul"), "t")
    assert ul.labelled == [] and ul.unlabelled == items


# -- the rounds ---------------------------------------------------------------------------------------
def pseudolabel_data(setting="ssl", root="data", augmentation="vtab", **split):
    return ImageFolderDataModule(
        root=root,  # the synthetic images are written once: a root that has them is read again
        shots=-1,
        batch_size=8,
        eval_batch_size=16,
        num_workers=0,
        image_size=32,
        augmentation=augmentation,
        synthetic=Synthetic(num_classes=4, images_per_class=10),
        pseudolabels={"setting": setting, **split},
    )


class RecordRounds(Callback):
    """What each epoch started from (the optimizer object, its state size, the training set) and the
    method's class probabilities on the unlabelled images at each epoch's end."""

    def __init__(self):
        self.starts, self.probabilities = [], []

    def on_train_epoch_start(self, trainer, module):
        optimizer = trainer.optimizers[0]
        dataset = trainer.datamodule.train_dataset()
        self.starts.append((id(optimizer), len(optimizer.state), dataset.num_labelled, dataset.num_pseudo))

    def on_train_epoch_end(self, trainer, module):
        unlabelled = trainer.datamodule.unlabelled_dataset()
        images = torch.stack([unlabelled[i][IMAGE] for i in range(len(unlabelled))])
        module.eval()
        with torch.no_grad():
            self.probabilities.append(module.forward_batch({IMAGE: images}).logits.softmax(dim=-1))
        module.train()


class StopAfterFirstEpoch(Callback):
    def on_train_epoch_end(self, trainer, module):
        trainer.should_stop = True


class StopAtEpoch(Callback):
    def __init__(self, epochs):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, module):
        trainer.should_stop = trainer.current_epoch + 1 >= self.epochs


def official_holdout(indices, labels):
    np.random.seed(0)  # the official 80 % of the pseudolabels (K ≥ holdout_from_k)
    kept = np.random.choice(range(len(indices)), size=int(len(indices) * 0.8), replace=False)
    return [indices[i] for i in kept], [labels[i] for i in kept]


def fit_rounds(
    clip,
    trainer_kwargs,
    rounds,
    strategy="grip",
    epochs=2,
    setting="ssl",
    extra=(),
    root="data",
    augmentation="vtab",
    **fit,
):
    seed_everything(0)
    data = pseudolabel_data(setting, root=root, augmentation=augmentation)
    method = CoOp(clip, data.classnames, n_ctx=4, init_std=0.5, optimizer={"class_path": "torch.optim.SGD",
                  "init_args": {"lr": 0.5, "momentum": 0.9}})  # fmt: skip
    pseudo = PseudoLabelRounds(strategy=strategy, rounds=rounds, epochs_per_round=epochs, holdout_from_k=3)
    record = RecordRounds()
    trainer = Trainer(max_epochs=rounds * epochs, callbacks=[pseudo, record, *extra], limit_val_batches=0,
                      **trainer_kwargs)  # fmt: skip
    trainer.fit(method, data, **fit)
    return method, data, pseudo, record


def test_grip_rounds_relabel_with_the_current_prompt_reset_the_optimizer_and_grow_k(tiny_clip, trainer_kwargs):
    seed_everything(0)
    data = pseudolabel_data()
    data.setup("fit")
    unlabelled = data.unlabelled_dataset()
    images = torch.stack([unlabelled[i][IMAGE] for i in range(len(unlabelled))])
    # round 1: zero-shot CLIP on the filled-in template, softmax over the classes, the leaderboard, the holdout
    text = template_ensemble(tiny_clip, data.classnames, ["a photo of a {}"])
    image = F.normalize(tiny_clip.encode_image(images).features, dim=-1)
    zero_shot = (tiny_clip.logit_scale * image @ text.t()).softmax(dim=-1)
    k1, k2 = (pseudolabels_per_class("grip", r, len(unlabelled), 4, rounds=2) for r in (0, 1))
    assert (len(unlabelled), k1, k2) == (32, 4, 8)  # 40 training images, 8 labelled; K grows 16/4 → 32/4
    first = official_holdout(*leaderboard_top_k(zero_shot, k1))

    method, data, pseudo, record = fit_rounds(tiny_clip, trainer_kwargs, rounds=2)
    assert len(pseudo.history) == 2 and pseudo.history[0]["count"] == len(first[0])
    # round 2 relabels with the prompt as round 1 left it (recorded at the end of epoch 2)
    second = official_holdout(*leaderboard_top_k(record.probabilities[1], k2))
    assert (pseudo.indices, pseudo.labels) == second
    assert second != official_holdout(*leaderboard_top_k(zero_shot, k2))  # the trained prompt labels differently
    # the optimizer is new at the start of round 2 (no momentum carried over); the training set grew
    assert record.starts[0][0] == record.starts[1][0] and record.starts[1][1] > 0
    assert record.starts[2][0] != record.starts[1][0] and record.starts[2][1] == 0
    assert record.starts[0][3] == len(first[0]) and record.starts[2][3] == len(second[0]) > len(first[0])
    assert record.starts[0][2] == int(4 * 2 * 0.8)  # the labelled shots kept for training
    # the schedule restarts too: the default constant lr, so check the rounds' epoch count instead
    assert len(record.starts) == 4


def test_with_the_feature_cache_rounds_equal_the_uncached_run_and_encode_each_image_once(
    tiny_clip, trainer_kwargs, monkeypatch
):
    plain, _, plain_rounds, _ = fit_rounds(tiny_clip, trainer_kwargs, rounds=3)
    encoded = []
    encode = type(tiny_clip).encode_image
    counting = lambda self, x, *a, **k: encoded.append(len(x)) or encode(self, x, *a, **k)  # noqa: E731
    monkeypatch.setattr(type(tiny_clip), "encode_image", counting)
    cache = FrozenFeatureCache(passes=1, batch_size=64)
    cached, data, cached_rounds, record = fit_rounds(tiny_clip, trainer_kwargs, rounds=3, extra=[cache])
    assert cached_rounds.history == plain_rounds.history and cached_rounds.labels == plain_rounds.labels
    assert torch.allclose(cached.prompt.ctx, plain.prompt.ctx, atol=1e-5)
    # the 32 unlabelled images once for pseudolabelling ("eval"), and each training image once when it first
    # enters the training set: the 6 labelled shots and the pseudolabelled images of the three rounds
    trained = {str(item.path) for item in data.pseudolabel_partition.labelled[:6]}
    trained |= {str(data.pseudolabel_partition.unlabelled[i].path) for i in cached_rounds.indices}
    first_pass = {key for version, key in cache._stored if version == 0}
    assert trained <= first_pass
    assert sum(encoded) == 32 + len(first_pass) + 6 * 32  # + RecordRounds' own pass at each of the 6 epochs' ends
    assert len([key for version, key in cache._stored if version == "eval"]) == 32


def test_the_first_round_trains_on_the_zero_shot_leaderboard(tiny_clip, trainer_kwargs):
    seen = []

    class Batches(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen.append(batch[PSEUDO_LABELLED].clone())

    method, data, pseudo, _ = fit_rounds(tiny_clip, trainer_kwargs, rounds=1, strategy="fpl", epochs=1,
                                         extra=[Batches()])  # fmt: skip
    total = torch.cat(seen)
    assert int(total.sum()) == len(pseudo.labels) and int((~total).sum()) == int(4 * 2 * 0.8)
    assert pseudo.current_gamma(method) == len(pseudo.labels) / int(4 * 2 * 0.8)  # FPL's γ


@pytest.mark.parametrize("epochs", [1, 2], ids=["between-rounds", "mid-round"])
def test_a_resumed_run_equals_the_uninterrupted_run(tiny_clip, trainer_kwargs, tmp_path, epochs):
    straight, _, straight_rounds, _ = fit_rounds(tiny_clip, trainer_kwargs, rounds=2, epochs=epochs)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_epochs=1)
    kwargs = {**trainer_kwargs, "enable_checkpointing": True}
    fit_rounds(tiny_clip, kwargs, rounds=2, epochs=epochs, extra=[checkpoint, StopAfterFirstEpoch()])
    resumed, _, pseudo, _ = fit_rounds(tiny_clip, trainer_kwargs, rounds=2, epochs=epochs,
                                       ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))  # fmt: skip
    assert pseudo.history == straight_rounds.history and pseudo.labels == straight_rounds.labels
    assert torch.equal(straight.prompt.ctx, resumed.prompt.ctx)


@pytest.mark.parametrize("epochs", [1, 2], ids=["between-rounds", "mid-round"])
@pytest.mark.parametrize("augmentation", ["vtab", "clip"], ids=["resize", "random-crops-and-flips"])
def test_a_resumed_run_with_the_feature_cache_equals_the_uninterrupted_run(
    tiny_clip, trainer_kwargs, tmp_path, epochs, augmentation
):
    # two passes in batches of 5: re-encoding a later round's images after the resume would put them in other
    # batches (float rounding) and, with random crops and flips, draw other augmentations
    def cache():
        return FrozenFeatureCache(passes=2, batch_size=5)

    rounds = {"rounds": 3, "epochs": epochs, "augmentation": augmentation}
    # the cache keys images by file, so the three runs read the same files
    straight, data, straight_rounds, _ = fit_rounds(tiny_clip, trainer_kwargs, extra=[cache()], **rounds)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_epochs=1)
    kwargs = {**trainer_kwargs, "enable_checkpointing": True}
    stop = StopAtEpoch(epochs + 1)  # after the first round boundary, so the cache holds two training sets
    fit_rounds(tiny_clip, kwargs, extra=[cache(), checkpoint, stop], root=data.root, **rounds)
    resumed, _, pseudo, _ = fit_rounds(tiny_clip, trainer_kwargs, extra=[cache()], root=data.root,
                                       ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"), **rounds)  # fmt: skip
    assert pseudo.history == straight_rounds.history and pseudo.labels == straight_rounds.labels
    assert torch.equal(straight.prompt.ctx, resumed.prompt.ctx)


def test_resuming_with_the_dataset_in_another_folder_warns_that_the_cached_features_are_not_used(
    tiny_clip, trainer_kwargs, tmp_path
):
    _, data, _, _ = fit_rounds(tiny_clip, trainer_kwargs, rounds=2, epochs=1)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_epochs=1)
    kwargs = {**trainer_kwargs, "enable_checkpointing": True}
    cache = FrozenFeatureCache(passes=1)
    fit_rounds(tiny_clip, kwargs, rounds=2, epochs=1, extra=[cache, checkpoint, StopAfterFirstEpoch()], root=data.root)
    moved = shutil.copytree(data.root, tmp_path / "moved")
    resumed = FrozenFeatureCache(passes=1)
    with pytest.warns(UserWarning, match="other image files"):
        fit_rounds(tiny_clip, trainer_kwargs, rounds=2, epochs=1, extra=[resumed], root=moved,
                   ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))  # fmt: skip
    assert resumed._stored and all(str(moved) in key for _, key in resumed._stored)  # the old files' features dropped


def test_bad_configurations_are_refused_before_training(tiny_clip, trainer_kwargs):
    data = pseudolabel_data()
    method = CoOp(tiny_clip, data.classnames, n_ctx=4)
    with pytest.raises(ConfigurationError, match="max_epochs"):
        Trainer(max_epochs=3, callbacks=[PseudoLabelRounds(rounds=2, epochs_per_round=1)], **trainer_kwargs).fit(
            method, data
        )
    plain = ImageFolderDataModule(shots=-1, num_workers=0, image_size=32, synthetic=Synthetic(num_classes=4))
    with pytest.raises(ConfigurationError, match="pseudolabels"):
        PseudoLabelRounds().check_ready(CoOp(tiny_clip, plain.classnames, n_ctx=4), plain)
    lapt = LAPT(tiny_clip, data.classnames, negative_labels=["stone", "cloud"])
    with pytest.raises(ConfigurationError, match="objective"):
        PseudoLabelRounds().check_ready(lapt, data)
    with pytest.raises(ValueError, match="one round"):
        PseudoLabelRounds(strategy="fpl", rounds=3)


def test_the_transductive_zero_shot_test_reports_seen_unseen_and_their_harmonic_mean(tiny_clip, trainer_kwargs):
    seed_everything(0)
    data = pseudolabel_data("trzsl", seen_classes=None, split_seed=0)
    method = CoOp(tiny_clip, data.classnames, n_ctx=4, init_std=0.5)
    groups = data.class_groups
    seen, unseen = seen_class_split(4, 0.62, 0)
    assert groups == {"seen": [data.classnames[i] for i in seen], "unseen": [data.classnames[i] for i in unseen]}
    result = Trainer(**trainer_kwargs).test(method, data)[0]
    # predictions over all four classes, accuracy within each group's test images (the official metric)
    data.setup("test")
    test = data._datasets["test"][0]
    images = torch.stack([test[i][IMAGE] for i in range(len(test))])
    labels = torch.tensor([test[i]["label"] for i in range(len(test))])
    method.eval()
    with torch.no_grad():
        predicted = method.forward_batch({IMAGE: images}).logits.argmax(dim=-1)
    accuracy = {}
    for name, members in (("seen", seen), ("unseen", unseen)):
        inside = torch.isin(labels, torch.tensor(members))
        accuracy[name] = float((predicted[inside] == labels[inside]).float().mean())
        assert result[f"test/acc_{name}"] == pytest.approx(accuracy[name], abs=1e-6)
    hm = 2 * accuracy["seen"] * accuracy["unseen"] / max(accuracy["seen"] + accuracy["unseen"], 1e-12)
    assert result["test/hm"] == pytest.approx(hm, abs=1e-6)
    assert result["test/acc"] == pytest.approx(float((predicted == labels).float().mean()), abs=1e-6)


def test_transductive_zero_shot_pseudolabels_range_over_the_unseen_classes_only(tiny_clip, trainer_kwargs):
    _, data, pseudo, _ = fit_rounds(tiny_clip, trainer_kwargs, rounds=1, strategy="fpl", epochs=1, setting="trzsl")
    _, unseen = seen_class_split(4, 0.62, 500)
    assert pseudo.labels and set(pseudo.labels) <= set(unseen)
    labelled = data.pseudolabel_partition.labelled
    assert labelled and {item.label for item in labelled}.isdisjoint(unseen)


# -- the docs page runs as written ----------------------------------------------------------------------
PAGE = Path(__file__).resolve().parents[2] / "docs" / "callbacks" / "pseudolabel_rounds.md"


def test_the_page_snippet_builds_a_grip_run():
    block = docs_python(PAGE)[0]
    block = block.replace('OpenCLIP("ViT-B-32-quickgelu", pretrained="openai")', 'OpenCLIP("tiny", pretrained=None)')
    block = block.replace(
        'root="data/grip/DTD",', 'image_size=32, synthetic={"num_classes": 3, "images_per_class": 12},'
    )
    namespace: dict = {}
    exec(block, namespace)
    rounds, trainer = namespace["rounds"], namespace["trainer"]
    assert (rounds.strategy, rounds.rounds, rounds.epochs_per_round) == ("grip", 10, 150)
    assert trainer.max_epochs == 1500 and namespace["data"].pseudolabels.setting == "ssl"


def test_the_page_fpl_command_switches_the_strategy(tmp_path, monkeypatch):
    from lightning_prompts.cli import run_cli

    bash = re.findall(r"```bash\n(.*?)```", PAGE.read_text(), re.S)[0].replace("\\\n", " ")
    fpl = next(shlex.split(line) for line in bash.splitlines() if "strategy fpl" in line)
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    overlay = "recipes/_tiny/clip.yaml"
    cli = run_cli([*fpl[1:], "--config", overlay, f"--trainer.default_root_dir={tmp_path}"])
    callback = next(c for c in cli.trainer.callbacks if isinstance(c, PseudoLabelRounds))
    assert (callback.strategy, callback.rounds, cli.trainer.max_epochs) == ("fpl", 1, 1)  # fast_dev_run: 1
    assert callback.history and callback.history[0]["count"] > 0


def test_grip_trains_visual_prompts_too(tiny_clip, trainer_kwargs):
    """The callback is not tied to text prompts: GRIP's visual variant (MVPT's shallow tokens before ln_pre)."""
    from lightning_prompts.methods import MVPT

    seed_everything(0)
    data = pseudolabel_data()
    sgd = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.5}}
    method = MVPT(tiny_clip, data.classnames, num_tokens=4, deep=False, after_ln_pre=False, init="normal",
                  frozen_template="a photo of a {}", optimizer=sgd)  # fmt: skip
    before = method.prompt.tokens.detach().clone()
    record = RecordRounds()
    rounds = PseudoLabelRounds(strategy="grip", rounds=2, epochs_per_round=1, holdout_from_k=3)
    Trainer(max_epochs=2, callbacks=[rounds, record], limit_val_batches=0, **trainer_kwargs).fit(method, data)
    assert len(rounds.history) == 2 and not torch.equal(method.prompt.tokens, before)
    k2 = pseudolabels_per_class("grip", 1, len(data.unlabelled_dataset()), 4, rounds=2)
    assert (rounds.indices, rounds.labels) == official_holdout(*leaderboard_top_k(record.probabilities[0], k2))


@pytest.mark.parametrize("recipe", ["grip_ssl", "grip_ssl_ifpl", "grip_ssl_fpl", "coop_ssl_labelled"])
def test_the_testbed_pseudolabel_recipes_run_from_the_command_line(recipe, tmp_path):
    from lightning_prompts.cli import run_cli

    recipes = Path(__file__).resolve().parents[2] / "recipes"
    tiny = str(recipes / "_tiny" / "clip.yaml")
    configs = ["--config", str(recipes / "testbed" / f"{recipe}.yaml"), "--config", tiny]
    cli = run_cli(["fit", *configs, "--data.init_args.shots", "4", "--trainer.default_root_dir", str(tmp_path)])
    cache = next(c for c in cli.trainer.callbacks if isinstance(c, FrozenFeatureCache))
    rounds = [c for c in cli.trainer.callbacks if isinstance(c, PseudoLabelRounds)]
    dataset = cli.datamodule.train_dataset()
    assert cache.features.shape[:2] == (1, len(dataset))
    if rounds:  # the first round's pseudolabels joined the 2 labelled images per class (minus the validation share)
        assert rounds[0].labelled_round == 0 and dataset.num_pseudo == len(rounds[0].labels) > 0
        unlabelled = 4 * (4 - 2)  # 4 classes x (4 shots - 2 labelled)
        assert len([key for version, key in cache._stored if version == "eval"]) == unlabelled
    else:
        assert dataset.num_pseudo == 0


@pytest.mark.parametrize("strategy", ["fpl", "grip"])
def test_a_training_step_loss_is_gamma_labelled_ce_plus_pseudolabelled_ce_by_hand(strategy, tiny_clip, trainer_kwargs):
    """The loss a training step returns, re-computed: ``γ · mean CE(labelled) + mean CE(pseudolabelled)`` with the
    official γ, |pseudolabelled| / |labelled| for FPL and |labelled| / |pseudolabelled| in GRIP's rounds, on the
    prompt as the step found it."""

    class Steps(Callback):
        def __init__(self):
            self.steps = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            dataset = trainer.datamodule.train_dataset()
            counts = (dataset.num_labelled, dataset.num_pseudo)
            self.steps.append({"batch": {k: v.clone() for k, v in batch.items()}, "counts": counts,
                               "ctx": module.prompt.ctx.detach().clone()})  # fmt: skip

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.steps[-1]["loss"] = (outputs["loss"] if isinstance(outputs, dict) else outputs).detach().clone()

    steps = Steps()
    method, data, pseudo, _ = fit_rounds(tiny_clip, trainer_kwargs, rounds=1, strategy=strategy, epochs=1,
                                         extra=[steps])  # fmt: skip
    mixed = [s for s in steps.steps if 0 < int(s["batch"][PSEUDO_LABELLED].sum()) < len(s["batch"][PSEUDO_LABELLED])]
    assert mixed  # a batch with labelled and pseudolabelled images
    step = mixed[0]
    labelled_count, pseudo_count = step["counts"]
    gamma = pseudo_count / labelled_count if strategy == "fpl" else labelled_count / pseudo_count
    assert abs(gamma - 1.0) > 0.3  # far from the 1 of a plain CE
    batch = step["batch"]
    flags, targets = batch[PSEUDO_LABELLED].bool(), batch["label"]
    with torch.no_grad():
        method.prompt.ctx.copy_(step["ctx"])  # the prompt this step started from
        logits = method.eval()(batch[IMAGE]).logits
        per_sample = -logits.log_softmax(dim=-1)[torch.arange(len(targets)), targets]
    expected = gamma * per_sample[~flags].mean() + per_sample[flags].mean()
    torch.testing.assert_close(step["loss"], expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(expected, per_sample.mean(), rtol=1e-3)  # plain CE would give another number
