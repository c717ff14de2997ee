"""Tutorial: out-of-distribution detection with CLIP: zero-shot MCM, then a prompt tuned on the ID classes.

    python docs/tutorials/ood_detection.py             # tiny random CLIP, generated images: seconds
    python docs/tutorials/ood_detection.py --testbed   # stand-in CLIP, Fashion-MNIST vs digits: minutes

``--testbed`` needs the testbed data and its OOD sets (``python -m lightning_prompts.testbed prepare
--root data/testbed`` then ``prepare-ood``); the output on the docs page is from that run. The tests run
the tiny version.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import tempfile
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything
from safetensors.torch import load_file

from lightning_prompts import CoOp, FewShotImageDataModule, ZeroShotCLIP
from lightning_prompts.callbacks import FrozenFeatureCache
from lightning_prompts.evaluation import OODEvaluator
from lightning_prompts.metrics import ood_metrics


def build(testbed: bool):
    """The backbone, the data (ID classes + OOD folders) and the number of epochs of either setting."""
    if testbed:
        from lightning_prompts.backbones import StandInCLIP

        ood = {name: f"data/testbed/ood/{name}" for name in ("mnist", "digits", "fashion_novel")}
        data = FewShotImageDataModule(
            root="data/testbed", dataset="fashion_mnist", shots=16, seed=1, subsample_classes="base",
            image_size=224, augmentation="vtab", normalization="inception", batch_size=16, eval_batch_size=50,
            num_workers=0, ood_sets=ood,
        )  # fmt: skip
        return StandInCLIP(), data, 50
    from lightning_prompts.backbones import OpenCLIP

    data = FewShotImageDataModule(
        dataset="eurosat", shots=4, image_size=32, batch_size=4, num_workers=0,
        synthetic={"num_classes": 4, "images_per_class": 4}, ood_sets={"noise": "generated"},
    )  # fmt: skip
    return OpenCLIP("tiny", pretrained=None), data, 3


def test_ood(model, data, folder: Path, label: str) -> dict[str, float]:
    """Test ``model`` on the ID test set and every OOD set; print one line per OOD set."""
    trainer = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(folder))
    trainer.test(model, data, verbose=False)
    results = {k: float(v) for k, v in trainer.callback_metrics.items()}
    print(f"{label}: ID accuracy {results['test/acc']:.3f}")
    for name in data.ood_test_sets:
        print(f"  {name:<14} FPR95 {results[f'test/fpr95_{name}']:.3f}  AUROC {results[f'test/auroc_{name}']:.3f}")
    return results


def main(testbed: bool = False, workdir: str | None = None) -> dict[str, float]:
    seed_everything(1)
    backbone, data, epochs = build(testbed)
    folder = Path(workdir or tempfile.mkdtemp())
    mcm = OODEvaluator(score="mcm", temperature=1.0, convention="mcm")  # the data's default, spelled out

    # 1. Zero-shot MCM: the maximum softmax of the cosines to "a photo of a {class}." at T = 1.
    zero_shot = ZeroShotCLIP(backbone, data.classnames, evaluator=mcm)
    before = test_ood(zero_shot, data, folder / "zero_shot", "zero-shot MCM")

    # 2. CoOp's context trained on the ID classes only (16 shots), then the same test.
    coop = CoOp(
        backbone, data.classnames, n_ctx=None, ctx_init="a photo of a", evaluator=mcm,
        optimizer=functools.partial(torch.optim.SGD, lr=0.002, momentum=0.9, weight_decay=5e-4),
    )  # fmt: skip
    trainer = Trainer(
        max_epochs=epochs, callbacks=[FrozenFeatureCache(passes=1)], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(folder),
    )  # fmt: skip
    trainer.fit(coop, data)
    after = test_ood(coop, data, folder / "coop", "CoOp + MCM")

    # 3. The scores are in the run folder: the histogram (ood_scores.png) and the raw scores. The two
    #    metric conventions of the literature read the same scores differently when scores tie.
    scores = load_file(str(folder / "coop" / "ood_scores.safetensors"))
    first = data.ood_test_sets[0]
    print(f"mean MCM score: ID {float(scores['id'].mean()):.3f}, {first} {float(scores[first].mean()):.3f}")
    for convention in ("mcm", "openood"):
        metrics = ood_metrics(scores["id"], scores[first], convention=convention)
        print(f"  {convention:<8} convention on {first}: FPR95 {float(metrics['fpr95']):.3f}")
    if workdir is None and testbed:  # the page shows the testbed's histogram
        shutil.copyfile(folder / "coop" / "ood_scores.png", Path(__file__).parent / "output" / "ood_scores.png")
    return {"zero_shot_auroc": before["test/auroc"], "coop_auroc": after["test/auroc"]}


def arguments(argv: list[str] | None = None) -> dict:
    """The command line as ``main``'s keyword arguments (the tests parse the page's commands with it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--testbed", action="store_true", help="stand-in CLIP on the Fashion-MNIST OOD testbed")
    return vars(parser.parse_args(argv))


if __name__ == "__main__":
    main(**arguments())
