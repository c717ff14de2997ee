"""OODEvaluator: the logged metrics are ood_metrics of the MCM scores re-computed from the module's
logits, on the ID test set against each OOD folder; the ID-mass score; the checks before a run."""

from __future__ import annotations

import pytest
import torch
from helpers import synthetic_fewshot
from lightning.pytorch import Trainer
from safetensors.torch import load_file

from lightning_prompts.errors import ConfigurationError, DatasetError
from lightning_prompts.evaluation import ClassificationEvaluator, OODEvaluator
from lightning_prompts.evaluation.ood_scores import id_mass
from lightning_prompts.methods import VPT, CoOp
from lightning_prompts.metrics.ood import ood_metrics


def coop_with_distinct_classes(clip, classnames):
    torch.manual_seed(0)
    method = CoOp(clip, classnames, n_ctx=4, init_std=1.0)  # a large context: classes score differently
    return method.eval()


def logits_of(method, loader) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([method.forward_batch(batch).logits for batch in loader])


def test_logged_metrics_are_those_of_the_mcm_scores_of_each_set(tiny_clip, trainer_kwargs, tmp_path):
    data = synthetic_fewshot(ood_sets={"noise": "unused", "more_noise": "unused"})  # synthetic: noise folders
    method = coop_with_distinct_classes(tiny_clip, data.classnames)
    trainer = Trainer(**trainer_kwargs)
    results = trainer.test(method, data)[0]
    assert isinstance(method.evaluator, OODEvaluator)  # the data module's default with ood_sets

    loaders = data.test_dataloader()
    assert len(loaders) == 3 and data.ood_test_sets == ["noise", "more_noise"]
    scale = float(tiny_clip.logit_scale)
    id_logits = logits_of(method, loaders[0])
    # MCM by hand: the cosines are logits / logit_scale; max softmax at T = 1
    id_scores = (id_logits / scale).softmax(-1).max(-1).values
    targets = torch.cat([batch["label"] for batch in loaders[0]])
    assert results["test/acc"] == pytest.approx(float((id_logits.argmax(-1) == targets).float().mean()))
    means = {"fpr95": [], "auroc": [], "aupr": []}
    for name, loader in zip(data.ood_test_sets, loaders[1:]):
        ood_scores = (logits_of(method, loader) / scale).softmax(-1).max(-1).values
        expected = ood_metrics(id_scores, ood_scores)
        for metric, value in expected.items():
            assert results[f"test/{metric}_{name}"] == pytest.approx(float(value), abs=1e-6)
            means[metric].append(float(value))
    for metric, values in means.items():
        assert results[f"test/{metric}"] == pytest.approx(sum(values) / len(values), abs=1e-6)

    written = load_file(str(tmp_path / "ood_scores.safetensors"))
    assert set(written) == {"id", "noise", "more_noise"}
    assert torch.allclose(written["id"], id_scores, atol=1e-6)
    assert (tmp_path / "ood_scores.png").stat().st_size > 10_000
    assert oct((tmp_path / "ood_scores.safetensors").stat().st_mode & 0o777) == "0o644"


def test_id_mass_averages_the_id_probability_over_groups_of_negative_labels():
    torch.manual_seed(0)
    logits = torch.randn(5, 3 + 8) * 3  # 3 ID classes, 8 negative labels
    order = torch.randperm(8, generator=torch.Generator().manual_seed(7))
    expected = torch.zeros(5)
    for group in (order[:4], order[4:]):
        probabilities = torch.cat([logits[:, :3], logits[:, 3:][:, group]], dim=1).softmax(dim=1)
        expected += probabilities[:, :3].sum(dim=1) / 2
    assert torch.allclose(id_mass(logits, num_id=3, groups=2, seed=7), expected, atol=1e-6)
    assert torch.allclose(id_mass(logits, num_id=3), logits.softmax(dim=1)[:, :3].sum(dim=1), atol=1e-6)
    with pytest.raises(ValueError, match="needs negative labels"):
        id_mass(logits[:, :3], num_id=3)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_logit_scores_are_their_formulas_at_any_temperature(temperature):
    """MSP (max softmax(z / T)), max-logit (max z) and energy (T · log Σ exp(z / T)), written out with math on
    plain floats, through the evaluator's ``id_scores``; and MCM's cosines (logits / logit_scale) at T."""
    import math
    from types import SimpleNamespace

    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]])
    rows = logits.tolist()
    expected = {
        "msp": [max(math.exp(v / temperature) for v in r) / sum(math.exp(v / temperature) for v in r) for r in rows],
        "max_logit": [max(r) for r in rows],
        "energy": [temperature * math.log(sum(math.exp(v / temperature) for v in r)) for r in rows],
    }
    for name, values in expected.items():
        scores = OODEvaluator(score=name, temperature=temperature).id_scores(None, logits)
        torch.testing.assert_close(scores, torch.tensor(values))
    clip_like = SimpleNamespace(logit_scale=torch.tensor(4.0))
    cosines = [[v / 4.0 for v in r] for r in rows]
    mcm = [max(math.exp(c / temperature) for c in r) / sum(math.exp(c / temperature) for c in r) for r in cosines]
    torch.testing.assert_close(OODEvaluator(score="mcm", temperature=temperature).id_scores(clip_like, logits),
                               torch.tensor(mcm))  # fmt: skip


def test_ood_folders_are_read_at_any_depth_and_a_missing_or_empty_one_is_named(tmp_path):
    from lightning_prompts.data import ImageFolderDataModule
    from lightning_prompts.data.synthetic import write_image_folder_layout, write_unlabelled_images

    write_image_folder_layout(tmp_path / "id", num_classes=3, per_class=2, size=16, seed=0)
    write_unlabelled_images(tmp_path / "textures" / "banded", count=3, size=16, seed=0)  # dtd/images/<class>/
    write_unlabelled_images(tmp_path / "textures" / "dotted", count=2, size=16, seed=1)
    options = {"root": str(tmp_path / "id"), "image_size": 16, "num_workers": 0}
    data = ImageFolderDataModule(**options, ood_sets={"textures": str(tmp_path / "textures")})
    data.setup("test")
    assert [len(loader.dataset) for loader in data.test_dataloader()][1:] == [5]
    assert {int(item.label) for item in data.test_dataloader()[1].dataset.items} == {-1}

    missing = ImageFolderDataModule(**options, ood_sets={"inaturalist": str(tmp_path / "missing")})
    with pytest.raises(DatasetError, match="OOD set 'inaturalist': folder .*missing does not exist"):
        missing.setup("test")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    empty = ImageFolderDataModule(**options, ood_sets={"sun": str(tmp_path / "empty")})
    with pytest.raises(DatasetError, match="OOD set 'sun': folder .*empty holds no images"):
        empty.setup("test")


def test_evaluators_refuse_what_they_cannot_score(tiny_clip, tiny_vit):
    with_ood = synthetic_fewshot(ood_sets={"noise": "unused"})
    coop = CoOp(tiny_clip, with_ood.classnames, n_ctx=4)
    with pytest.raises(ConfigurationError, match="ClassificationEvaluator cannot score: use OODEvaluator"):
        ClassificationEvaluator().check_ready(coop, with_ood, "test")
    with pytest.raises(ConfigurationError, match="needs OOD test sets"):
        OODEvaluator().check_ready(coop, synthetic_fewshot(), "test")
    vpt = VPT(tiny_vit, with_ood.classnames, num_tokens=2)
    with pytest.raises(ConfigurationError, match="score 'mcm' divides by the logit scale .* VPT has none"):
        OODEvaluator().check_ready(vpt, with_ood, "test")
    OODEvaluator(score="msp").check_ready(vpt, with_ood, "test")  # a ViT head scores with MSP
    with pytest.raises(ConfigurationError, match="unknown score 'mahalanobis'"):
        OODEvaluator(score="mahalanobis")


def test_the_imagenet_ood_recipe_tests_every_ood_set_from_the_command_line(tmp_path, capsys):
    from pathlib import Path

    from lightning_prompts.cli import run_cli

    recipes = Path(__file__).resolve().parents[2] / "recipes"
    cli = run_cli(
        [
            "test",
            "--config",
            str(recipes / "zero_shot_clip" / "ood_imagenet.yaml"),
            "--config",
            str(recipes / "_tiny" / "clip.yaml"),  # synthetic ID data and a noise folder per OOD set
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    evaluator = cli.model.evaluator
    assert isinstance(evaluator, OODEvaluator) and (evaluator.score_name, evaluator.convention) == ("mcm", "mcm")
    metrics = cli.trainer.callback_metrics
    for name in ("inaturalist", "sun", "places", "textures"):
        assert 0.0 <= float(metrics[f"test/auroc_{name}"]) <= 1.0 and f"test/fpr95_{name}" in metrics
    assert "fpr95_textures" in capsys.readouterr().out  # the results table the command prints
    assert (tmp_path / "ood_scores.png").is_file()
