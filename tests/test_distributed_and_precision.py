"""DDP on CPU (gloo, 2 processes) ends where one process ends; bf16-mixed stays finite."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from helpers import run_from_scratch_root, short_pseudolabel_rounds, synthetic_fewshot, without_early_stop
from lightning.pytorch import Callback, Trainer
from test_recipes import RECIPES, fit_with_tiny_overlay, one_trained_recipe_per_folder_and_method, overlay_for

from lightning_prompts.methods import VPT, CoOp


def fit_copies_back(method, data, strategy: str, devices: int, root, **options) -> None:
    trainer = Trainer(
        strategy=strategy,
        devices=devices,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=str(root),
        **options,
    )
    # ddp_fork, not ddp_spawn: a forked rank inherits the imported torch and lightning, a spawned one
    # imports them again (about 20 s per two-rank launch on a 2-core machine); both copy the trained
    # weights back into this process
    trainer.fit(method, data)


def train_coop(clip, strategy: str, devices: int, batch_size: int, root, lr: float = 0.5, callbacks=()) -> torch.Tensor:
    # resize-only preprocessing and no shuffling: both runs see the same 8 images per step
    data = synthetic_fewshot(shots=2, num_classes=4, augmentation="vtab", shuffle=False, batch_size=batch_size)
    torch.manual_seed(0)
    method = CoOp(clip, data.classnames, n_ctx=4, optimizer=functools.partial(torch.optim.SGD, lr=lr, momentum=0.9))
    fit_copies_back(method, data, strategy, devices, root, max_epochs=3, callbacks=list(callbacks))
    return method.prompt.ctx.detach().clone()


def test_ddp_two_processes_match_one_process_on_the_same_global_batch(tiny_clip, tmp_path):
    single = train_coop(tiny_clip, "auto", 1, batch_size=8, root=tmp_path / "single")  # 1 step per epoch
    ddp = train_coop(tiny_clip, "ddp_fork", 2, batch_size=4, root=tmp_path / "ddp")
    initial = CoOp(tiny_clip, ["a"], n_ctx=4).prompt.ctx  # same seed as above: torch.manual_seed(0) first
    assert not torch.allclose(single, initial)  # training moved the prompt
    assert torch.allclose(single, ddp, atol=1e-5), (single - ddp).abs().max()


def test_ddp_trains_on_small_shares_and_validates_every_image_once(tiny_clip, tmp_path):
    """5 training images in batches of 4 are 3 per process under two processes: Dassl's drop-the-last-partial-batch
    rule, decided on the whole set, left them no step at all. The 5 validation images split 3 + 2: Lightning's
    sampler repeated one to make 3 + 3, and its own average of ``val/loss`` divided the integer sample counts
    (3 + 2) by 2 with integer division. Validation under DDP now equals one process's on the same weights."""
    from lightning_prompts.data import FewShotImageDataModule, Synthetic

    data = FewShotImageDataModule(
        dataset="caltech101", shots=1, batch_size=4, eval_batch_size=2, num_workers=0, image_size=32,
        augmentation="vtab", shuffle=False, synthetic=Synthetic(num_classes=5, images_per_class=3),
    )  # fmt: skip
    torch.manual_seed(0)
    method = CoOp(tiny_clip, data.classnames, n_ctx=4, init_std=1.0)  # classes score differently
    before = method.prompt.ctx.detach().clone()
    trainer = Trainer(
        strategy="ddp_fork", devices=2, accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(tmp_path),
    )  # fmt: skip
    trainer.fit(method, data)
    assert not torch.equal(method.prompt.ctx, before)  # the processes took a step
    ddp = {key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("val/")}
    single = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    alone = single.validate(method, data, verbose=False)[0]  # the same (trained) weights, one process
    assert {"val/acc", "val/loss"} <= set(ddp)
    for key in ddp:
        assert ddp[key] == pytest.approx(alone[key], abs=1e-6), key


@pytest.mark.parametrize("method_name", ["coop", "vpt"])
def test_bf16_mixed_run_stays_finite(method_name, tiny_clip, tiny_vit, trainer_kwargs):
    data = synthetic_fewshot(augmentation="clip" if method_name == "coop" else "vtab")
    if method_name == "coop":
        method = CoOp(tiny_clip, data.classnames, n_ctx=4)
    else:
        method = VPT(tiny_vit, data.classnames, num_tokens=4, deep=True)
    before = [p.detach().clone() for p in method.parameters() if p.requires_grad]
    trainer = Trainer(max_steps=3, precision="bf16-mixed", **trainer_kwargs)
    trainer.fit(method, data)
    loss = trainer.callback_metrics["train/loss"]
    assert torch.isfinite(loss)
    after = [p.detach() for p in method.parameters() if p.requires_grad]
    assert all(torch.isfinite(p).all() for p in after)
    assert all(p.dtype == torch.float32 for p in after)  # fp32 master weights
    assert any(not torch.equal(a, b) for a, b in zip(after, before))


def coop_with_consistency(clip, strategy: str, devices: int, batch_size: int, root):
    from lightning_prompts.callbacks import ConsistencyRegularization

    term = ConsistencyRegularization(weight=4.0, templates=["a photo of a {}.", "a drawing of a {}."], seed=3)
    return train_coop(clip, strategy, devices, batch_size, root, lr=0.05, callbacks=[term])


def test_ddp_with_a_loss_term_matches_one_process_on_the_same_global_batch(tiny_clip, tmp_path):
    single = coop_with_consistency(tiny_clip, "auto", 1, batch_size=8, root=tmp_path / "single")
    ddp = coop_with_consistency(tiny_clip, "ddp_fork", 2, batch_size=4, root=tmp_path / "ddp")
    torch.manual_seed(0)
    initial = CoOp(tiny_clip, ["a"], n_ctx=4).prompt.ctx
    assert (single - initial).abs().max() > 1e-2  # training moved the prompt
    assert torch.allclose(single, ddp, atol=1e-6), (single - ddp).abs().max()


def gram_run(clip, strategy: str, devices: int, root, accumulate: int):
    from lightning_prompts.data import ImageTextDataModule
    from lightning_prompts.pretraining import GRAM

    spec = {"num_classes": 3, "images_per_class": 4, "image_size": 32}
    data = ImageTextDataModule(synthetic=spec, image_size=32, batch_size=2, tasks_per_epoch=4, val_fraction=0.0)
    torch.manual_seed(0)
    gram = GRAM(clip, n_ctx=4, num_domains=3, output_dir=root / "gram")
    # Lightning's default use_distributed_sampler: it leaves the meta-task sampler (a DistributedSampler) alone
    options = {"max_epochs": 2, "accumulate_grad_batches": accumulate}
    fit_copies_back(gram, data, strategy, devices, root, **options)
    return gram.prompt.ctx.detach().clone(), [p.detach().clone() for p in gram.regulator.parameters()]


def test_ddp_shares_gram_meta_tasks_among_ranks_like_accumulation_in_one_process(tiny_clip, tmp_path):
    """Two ranks each take every other meta-task; one process takes both per optimizer step (two
    accumulated batches): the same global batch, so the same meta-learned context and regulator."""
    single_ctx, single_psi = gram_run(tiny_clip, "auto", 1, tmp_path / "single", accumulate=2)
    ddp_ctx, ddp_psi = gram_run(tiny_clip, "ddp_fork", 2, tmp_path / "ddp", accumulate=1)
    torch.manual_seed(0)
    assert torch.allclose(single_ctx, ddp_ctx, atol=1e-6), (single_ctx - ddp_ctx).abs().max()
    for single, ddp in zip(single_psi, ddp_psi):
        assert torch.allclose(single, ddp, rtol=1e-6, atol=1e-6), (single - ddp).abs().max()


@pytest.mark.slow  # two spawned ranks (about 25 s); tests/metrics covers the gathering in one process
def test_ddp_ood_metrics_are_computed_on_the_scores_of_both_ranks(tiny_clip, tmp_path):
    """Two ranks each score half of the ID and OOD images (even halves: no padding duplicates); the
    evaluator gathers the scores before computing, so FPR95/AUROC equal one process's, not an average.
    Spawned, not forked: with forked ranks gloo's first broadcast hangs under pytest here (not in a script)."""
    results = {}
    for strategy, devices in (("auto", 1), ("ddp_spawn", 2)):
        data = synthetic_fewshot(ood_sets={"noise": "unused"}, eval_batch_size=4)  # 16 ID and 4 OOD images
        torch.manual_seed(0)
        method = CoOp(tiny_clip, data.classnames, n_ctx=4, init_std=1.0)
        trainer = Trainer(
            strategy=strategy, devices=devices, accelerator="cpu", logger=False, enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=str(tmp_path / strategy),
        )  # fmt: skip
        results[strategy] = trainer.test(method, data, verbose=False)[0]
    single, ddp = results["auto"], results["ddp_spawn"]
    assert set(single) == set(ddp) and "test/auroc_noise" in single
    for key in single:
        assert ddp[key] == pytest.approx(single[key], abs=1e-6), key


def local_prompt_run(clip, strategy: str, devices: int, batch_size: int, root) -> tuple[torch.Tensor, torch.Tensor]:
    from lightning_prompts.methods import LocalPrompt

    # three identical views per image (resize only), no shuffling: both runs see the same 8 images per step
    data = synthetic_fewshot(shots=2, num_classes=4, augmentation="vtab", shuffle=False, batch_size=batch_size, views=3)
    torch.manual_seed(0)
    method = LocalPrompt(clip, data.classnames, n_ctx=2, num_negative_prompts=3, top_k=2, num_positive_views=2,
                         optimizer=functools.partial(torch.optim.SGD, lr=0.5))  # fmt: skip
    fit_copies_back(method, data, strategy, devices, root, max_epochs=2)
    return method.prompt.ctx.detach().clone(), method.negative_prompt.ctx.detach().clone()


def test_ddp_local_prompt_steps_match_one_process_on_the_same_global_batch(tiny_clip, tmp_path):
    """Manual optimisation, two steps per batch: each rank's mean losses over half the batch, averaged by DDP,
    are the one-process means over the whole batch."""
    single = local_prompt_run(tiny_clip, "auto", 1, batch_size=8, root=tmp_path / "single")
    ddp = local_prompt_run(tiny_clip, "ddp_fork", 2, batch_size=4, root=tmp_path / "ddp")
    torch.manual_seed(0)
    for one, two in zip(single, ddp, strict=True):
        assert torch.allclose(one, two, atol=1e-5), (one - two).abs().max()


class SamePseudolabelsOnEveryRank(Callback):
    """Fails the rank whose pseudolabels differ from the other rank's (the pass runs on every rank)."""

    def on_train_epoch_start(self, trainer, module):
        from lightning_prompts.callbacks import PseudoLabelRounds

        rounds = next(c for c in trainer.callbacks if isinstance(c, PseudoLabelRounds))
        mine = torch.tensor(rounds.indices + rounds.labels, dtype=torch.float64)
        gathered = module.all_gather(mine)
        assert gathered.dim() == 2 and len(rounds.labels) > 0 and torch.equal(gathered[0], gathered[1])


def test_ddp_pseudolabel_rounds_agree_across_ranks(tiny_clip, tmp_path):
    from lightning_prompts.callbacks import PseudoLabelRounds
    from lightning_prompts.data import ImageFolderDataModule, Synthetic

    synthetic = Synthetic(num_classes=4, images_per_class=10)
    data = ImageFolderDataModule(shots=-1, batch_size=4, num_workers=0, image_size=32, augmentation="vtab",
                                 synthetic=synthetic, pseudolabels={"setting": "ssl"})  # fmt: skip
    torch.manual_seed(0)
    method = CoOp(tiny_clip, data.classnames, n_ctx=4, optimizer=functools.partial(torch.optim.SGD, lr=0.5))
    before = method.prompt.ctx.detach().clone()
    rounds = PseudoLabelRounds(strategy="grip", rounds=2, epochs_per_round=1, holdout_from_k=3)
    fit_copies_back(
        method, data, "ddp_fork", 2, tmp_path, max_epochs=2, callbacks=[rounds, SamePseudolabelsOnEveryRank()]
    )
    assert not torch.allclose(method.prompt.ctx, before)  # both rounds trained (a failed check fails the fit)


def test_the_devices_page_precision_commands_run_on_cpu(tmp_path):
    """docs/howto/devices.md's single-device commands, the page's precision last (after the tiny overlay, which
    pins 32-true): bf16-mixed autocasts on CPU too."""
    from pathlib import Path

    from helpers import docs_commands

    from lightning_prompts.cli import run_cli

    root = Path(__file__).resolve().parents[1]
    commands = [c for c in docs_commands(root / "docs" / "howto" / "devices.md") if "--trainer.precision" in c]
    assert len(commands) == 2
    for index, (subcommand, flag, recipe, *rest) in enumerate(commands):
        cli = run_cli([subcommand, flag, str(root / recipe), "--config", str(overlay_for(root / recipe)), *rest,
                       "--trainer.default_root_dir", str(tmp_path / str(index))])  # fmt: skip
        precision = rest[rest.index("--trainer.precision") + 1]
        assert cli.trainer.precision == precision and torch.isfinite(cli.trainer.callback_metrics["train/loss"])


def test_ddp_pretraining_validates_with_the_first_processs_batchnorm_statistics(tmp_path):
    """Point-MAE pre-training's mini-PointNet holds BatchNorm: under DDP each process updated its statistics from
    its own share of the batch, and validated with them. Every process now validates with the first process's
    (those the checkpoint and the exported encoder keep)."""
    import json

    from lightning_prompts.backbones.point_mae import PointMAE
    from lightning_prompts.data.point_clouds import PointCloudDataModule
    from lightning_prompts.pretraining.point_mae import PointMAEPretraining

    class RecordStatistics(Callback):  # after the epoch-start hooks: what each process validates with
        def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
            if batch_idx == 0:
                norm = module.encoder.encoder.first_conv[1]
                record = {"mean": norm.running_mean.tolist(), "var": norm.running_var.tolist()}
                (tmp_path / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))

    torch.manual_seed(0)
    module = PointMAEPretraining(PointMAE(num_patches=8, patch_size=8, width=16, depth=2, num_heads=2))
    data = PointCloudDataModule("shapes", num_points=64, shapes_per_class=4, shapes_test_per_class=1, batch_size=4)
    trainer = Trainer(strategy="ddp_fork", devices=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, max_epochs=1,
                      limit_train_batches=2, limit_val_batches=1, callbacks=[RecordStatistics()],
                      default_root_dir=str(tmp_path))  # fmt: skip
    trainer.fit(module, data)
    first, second = (json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1))
    assert first["mean"] != [0.0] * len(first["mean"])  # training moved them
    assert first == second


class RanksAgree(Callback):
    """At the end of fit, every process's parameters, trained or frozen, and the method's trainable state (buffers
    such as LAE's offline PET copy included) equal the first process's, compared by three float64 checksums per
    tensor (sum, sum of squares, position-weighted sum); written to ``agree.json`` by the first process."""

    def on_fit_end(self, trainer, module):
        import json

        tensors = dict(module.named_parameters())
        state = module.state_dict()
        trainable = getattr(module, "trainable_state_keys", None)
        tensors |= {key: state[key] for key in (trainable() if callable(trainable) else ())}
        keys = sorted(tensors)
        rows = []
        for key in keys:
            values = tensors[key].detach().double().flatten()
            weights = torch.arange(1, values.numel() + 1, dtype=torch.float64)
            rows.append(torch.stack([values.sum(), (values * values).sum(), (values * weights).sum()]))
        gathered = trainer.strategy.all_gather(torch.stack(rows))
        if trainer.global_rank == 0:
            record = {
                "trained": sum(p.requires_grad for p in module.parameters()),
                "agree": bool(torch.equal(gathered[0], gathered[1])),
                "batches": trainer.fit_loop.epoch_loop.batch_progress.total.completed,
                "epochs": trainer.current_epoch,
            }
            (Path(trainer.default_root_dir) / "agree.json").write_text(json.dumps(record))


#: methods that train in one process only and say so when given more
ONE_PROCESS_ONLY = {"DPPromptTuning": "clips and noises per-example gradients", "RELIEF": "trains its policy"}


def one_recipe_per_method() -> list[Path]:
    """The first of :func:`one_trained_recipe_per_folder_and_method`'s recipes for each method."""
    from lightning_prompts.recipes import model_class

    chosen: dict[str | None, Path] = {}
    for recipe in one_trained_recipe_per_folder_and_method():
        chosen.setdefault(model_class(recipe), recipe)
    return sorted(chosen.values())


@pytest.mark.parametrize("recipe", one_recipe_per_method(), ids=lambda p: str(p.relative_to(RECIPES)))
def test_every_method_trains_under_two_processes_and_the_processes_agree(recipe, tmp_path, monkeypatch):
    """One recipe per method on its tiny overlay, two gloo processes, two epochs of two batches: the run ends, and
    both processes hold the same parameters and trainable state. This found LAE, HeteroFineTuning and
    HeteroContrastive stopping at their first step (parameters a step leaves without gradient), GRAM's meta-training
    stopped by Lightning's sampler injection, and nothing else."""
    import json

    from lightning_prompts.cli import run_cli
    from lightning_prompts.lightning_cli import PromptsCLI
    from lightning_prompts.recipes import model_class

    instantiate = PromptsCLI._instantiate_trainer
    monkeypatch.setattr(
        PromptsCLI, "_instantiate_trainer", lambda self, config, cbs: instantiate(self, config, [*cbs, RanksAgree()])
    )
    short_pseudolabel_rounds(monkeypatch, rounds=2)  # one per epoch
    run_from_scratch_root(tmp_path, monkeypatch)
    options = without_early_stop(recipe)
    args = ["fit", "--config", str(recipe), "--config", str(overlay_for(recipe)), *options,
            "--trainer.fast_dev_run=false", "--trainer.max_epochs=2", "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0", "--trainer.strategy=ddp_fork",
            "--trainer.devices=2", "--trainer.accelerator=cpu", "--trainer.default_root_dir", str(tmp_path),
            "--seed_everything=7"]  # fmt: skip
    refusal = ONE_PROCESS_ONLY.get(model_class(recipe) or "")
    if refusal:
        with pytest.raises(Exception, match=refusal):
            run_cli(args)
        return
    run_cli(args)
    record = json.loads((tmp_path / "agree.json").read_text())
    assert record["agree"] and record["trained"] > 0 and record["epochs"] == 2 and record["batches"] >= 2


def test_a_strategy_that_chose_find_unused_parameters_keeps_its_choice():
    from lightning.pytorch.strategies import DDPStrategy

    from lightning_prompts.utils.distributed import allow_parameters_without_gradient

    chosen = Trainer(strategy=DDPStrategy(find_unused_parameters=False), devices=2, accelerator="cpu", logger=False)
    allow_parameters_without_gradient(chosen, "LAE")
    assert chosen.strategy._ddp_kwargs == {"find_unused_parameters": False}
    default = Trainer(strategy="ddp", devices=2, accelerator="cpu", logger=False)
    allow_parameters_without_gradient(default, "LAE")
    assert default.strategy._ddp_kwargs == {"find_unused_parameters": True}
    one = Trainer(devices=1, accelerator="cpu", logger=False)
    allow_parameters_without_gradient(one, "LAE")  # nothing to do outside DDP
    assert not hasattr(one.strategy, "_ddp_kwargs")


def test_fit_of_a_method_with_nothing_to_train_on_several_processes_is_refused_before_it_starts(tmp_path, monkeypatch):
    from lightning_prompts.cli import run_cli
    from lightning_prompts.errors import ConfigurationError

    run_from_scratch_root(tmp_path, monkeypatch)
    args = ["--config", str(RECIPES / "zero_shot_clip" / "caltech101.yaml"),
            "--config", str(RECIPES / "_tiny" / "clip.yaml"),
            "--trainer.strategy=ddp_fork", "--trainer.devices=2", "--trainer.accelerator=cpu",
            "--trainer.default_root_dir", str(tmp_path / "run")]  # fmt: skip
    with pytest.raises(ConfigurationError, match="nothing to train.*lightning-prompts test"):
        run_cli(["fit", *args])
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("config.yaml"))


@pytest.mark.parametrize("precision", ["bf16-true", "16-true"])
def test_a_true_half_precision_warns_that_the_prompt_has_no_float32_master_copy(precision, trainer_kwargs):
    """A '-true' precision casts the trained tensors too; in float16 Adam's first step already gives NaN or inf."""
    from lightning_prompts.backbones import OpenCLIP

    data = synthetic_fewshot(augmentation="clip")
    method = CoOp(OpenCLIP("tiny", pretrained=None), data.classnames, n_ctx=4)  # not the shared fixture: it is cast
    trainer = Trainer(max_steps=2, precision=precision, **trainer_kwargs)
    with pytest.warns(UserWarning, match="no float32 master copy") as record:
        trainer.fit(method, data)
    assert f"trains 1 tensor(s) in {'bfloat16' if precision == 'bf16-true' else 'float16'} (prompt.ctx" in str(
        next(w.message for w in record if "master copy" in str(w.message))
    )
    assert method.prompt.ctx.dtype == (torch.bfloat16 if precision == "bf16-true" else torch.float16)


@pytest.mark.parametrize("recipe", one_recipe_per_method(), ids=lambda p: str(p.relative_to(RECIPES)))
def test_every_method_trains_in_bf16_true(recipe, tmp_path, monkeypatch, request):
    """'bf16-true' casts the module, and Lightning converts the floating tensors of a batch's tensors, mappings and
    sequences. What it does not reach stopped 16 of 44 methods on mixed dtypes: PyG graphs (every graph method),
    point patches grouped in float32 (the point methods), a teacher read from a float32 file (PANDA), GRAM's cached
    image features, MUPT's float32 projector inputs, and samplers with no bfloat16 kernel under the bfloat16
    default dtype (LAPT's Beta, HetGPT's sparse product, the point methods' ``cdist``). One step of each on its tiny
    overlay: a finite loss (``fit_with_tiny_overlay``) from trained tensors that are all bfloat16."""
    with pytest.warns(UserWarning, match="no float32 master copy"):
        cli = fit_with_tiny_overlay(recipe, tmp_path, monkeypatch, request, ["--trainer.precision", "bf16-true"])
    trained = [p for p in cli.model.parameters() if p.requires_grad]
    assert trained and {p.dtype for p in trained} == {torch.bfloat16}


def test_mixed_precision_keeps_the_prompt_in_float32_without_the_warning(tiny_clip, trainer_kwargs, recwarn):
    data = synthetic_fewshot(augmentation="clip")
    Trainer(max_steps=1, precision="bf16-mixed", **trainer_kwargs).fit(CoOp(tiny_clip, data.classnames, n_ctx=4), data)
    assert not [w for w in recwarn if "master copy" in str(w.message)]


def scalar_metrics(cli) -> dict[str, float]:
    return {key: float(value) for key, value in cli.trainer.callback_metrics.items() if value.numel() == 1}


def one_recipe_per_prompt_method() -> list[Path]:
    """:func:`one_recipe_per_method` without the encoder pre-trainings, whose objectives draw per sample (masks,
    negatives, views): on two processes those draws differ from one process's, and so does their ``val/loss``."""
    from lightning_prompts import registry
    from lightning_prompts.recipes import model_class

    return [recipe for recipe in one_recipe_per_method() if registry.get(model_class(recipe) or "").kind == "method"]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", one_recipe_per_prompt_method(), ids=lambda p: str(p.relative_to(RECIPES)))
def test_two_processes_validate_and_test_a_checkpoint_as_one_process_does(recipe, tmp_path, monkeypatch):
    """One recipe per prompt method: two batches of fit on its tiny overlay, then ``validate`` and ``test`` of the
    checkpoint on one process and on two (gloo) give the same metrics (docs/howto/devices.md; two minutes on two
    workers, hence slow)."""
    from lightning_prompts.cli import run_cli
    from lightning_prompts.recipes import model_class

    method = model_class(recipe) or ""
    short_pseudolabel_rounds(monkeypatch, rounds=1)  # GRIP's 10 rounds of 150 epochs: one round of one epoch
    run_from_scratch_root(tmp_path, monkeypatch)
    configs = ["--config", str(recipe), "--config", str(overlay_for(recipe))]
    limits = ["--trainer.fast_dev_run=false", "--trainer.accelerator=cpu"]
    run_cli(["fit", *configs, *without_early_stop(recipe), *limits, "--trainer.max_epochs=1",
             "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0",
             "--trainer.default_root_dir", str(tmp_path / "fit")])  # fmt: skip
    checkpoints = sorted((tmp_path / "fit").rglob("last*.ckpt")) or sorted((tmp_path / "fit").rglob("*.ckpt"))
    stages = ["validate"] if method == "LAPT" else ["validate", "test"]  # LAPT's overlay has no OOD sets to test
    for stage in stages:
        common = [stage, *configs, *limits, "--ckpt_path", str(checkpoints[-1]), "--seed_everything=3"]
        one = scalar_metrics(
            run_cli([*common, "--trainer.devices=1", "--trainer.default_root_dir", str(tmp_path / "1")])
        )
        two = scalar_metrics(run_cli([*common, "--trainer.devices=2", "--trainer.strategy=ddp_fork",
                                      "--trainer.default_root_dir", str(tmp_path / "2")]))  # fmt: skip
        assert one and one.keys() == two.keys(), (stage, sorted(one), sorted(two))
        assert all(two[key] == pytest.approx(value, rel=1e-5, abs=1e-6) for key, value in one.items()), (one, two)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", one_recipe_per_method(), ids=lambda p: str(p.relative_to(RECIPES)))
def test_every_method_trains_under_float16_autocast_with_the_gradient_scaler(recipe, tmp_path, monkeypatch):
    """``16-mixed`` as on a GPU: float16 autocast with Lightning's gradient scaler, given on the CPU as a plugin
    (Lightning turns ``16-mixed`` into ``bf16-mixed`` there). Three batches of one recipe per method on its tiny
    overlay end with finite metrics (docs/howto/devices.md; slow)."""
    import math

    from lightning.pytorch.plugins.precision import MixedPrecision
    from lightning.pytorch.trainer.connectors.accelerator_connector import _AcceleratorConnector

    from lightning_prompts.cli import run_cli

    original = _AcceleratorConnector._check_and_init_precision

    def float16_with_scaler(self):
        if self._precision_flag == "16-mixed":
            return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
        return original(self)

    monkeypatch.setattr(_AcceleratorConnector, "_check_and_init_precision", float16_with_scaler)
    short_pseudolabel_rounds(monkeypatch, rounds=1)  # GRIP's 10 rounds of 150 epochs: one round of one epoch
    run_from_scratch_root(tmp_path, monkeypatch)
    cli = run_cli(["fit", "--config", str(recipe), "--config", str(overlay_for(recipe)), *without_early_stop(recipe),
                   "--trainer.fast_dev_run=false", "--trainer.max_epochs=1", "--trainer.limit_train_batches=3",
                   "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0", "--trainer.precision=16-mixed",
                   "--trainer.accelerator=cpu", "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    assert isinstance(cli.trainer.precision_plugin.scaler, torch.amp.GradScaler)
    metrics = scalar_metrics(cli)
    assert metrics and all(math.isfinite(value) for value in metrics.values()), metrics
