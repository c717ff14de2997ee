"""Tutorial: train CoOp on base classes, export the prompt, use it on new classes and new images.

    python docs/tutorials/coop_export_new_classes.py             # tiny random CLIP, generated images: seconds
    python docs/tutorials/coop_export_new_classes.py --testbed   # stand-in CLIP on Fashion-MNIST: minutes

``--testbed`` needs the testbed data (``python -m lightning_prompts.testbed prepare --root data/testbed``);
the output on the docs page is from that run. The tests run the tiny version.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_prompts import CoOp, FewShotImageDataModule, ZeroShotCLIP
from lightning_prompts.callbacks import FrozenFeatureCache


def build(testbed: bool):
    """The backbone, the data and the number of epochs of either setting."""
    if testbed:
        from lightning_prompts.backbones import StandInCLIP

        data = FewShotImageDataModule(
            root="data/testbed", dataset="fashion_mnist", shots=16, seed=1, subsample_classes="base_to_novel",
            image_size=224, augmentation="vtab", normalization="inception", batch_size=16, eval_batch_size=50,
        )  # fmt: skip
        return StandInCLIP(), data, 50
    from lightning_prompts.backbones import OpenCLIP

    data = FewShotImageDataModule(
        dataset="eurosat", shots=4, subsample_classes="base_to_novel", image_size=32, batch_size=4,
        synthetic={"num_classes": 6, "images_per_class": 4}, num_workers=0,
    )  # fmt: skip
    return OpenCLIP("tiny", pretrained=None), data, 3


def main(testbed: bool = False, workdir: str | None = None) -> dict[str, float]:
    seed_everything(1)
    backbone, data, epochs = build(testbed)
    folder = Path(workdir or tempfile.mkdtemp())

    # 1. Train the context on the base classes. The image side of CoOp is frozen, so its features can be
    #    encoded once (FrozenFeatureCache; exact here, the preprocessing is deterministic).
    model = CoOp(
        backbone, data.classnames, n_ctx=None, ctx_init="a photo of a",
        optimizer=functools.partial(torch.optim.SGD, lr=0.002, momentum=0.9, weight_decay=5e-4),
    )  # fmt: skip
    trainer = Trainer(
        max_epochs=epochs, callbacks=[FrozenFeatureCache(passes=1)], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(folder),
    )  # fmt: skip
    trainer.fit(model, data)
    print("trained on the base classes:", ", ".join(model.classnames))

    # 2. Test: base classes, novel classes (never seen in training), harmonic mean.
    trainer.test(model, data, verbose=False)
    results = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    for name in ("test/acc_base", "test/acc_novel", "test/hm"):
        print(f"{name}: {results[name]:.3f}")

    # 3. Export the prompt: a small safetensors file, not the frozen model.
    path = model.export_prompt(folder / "coop_prompt.safetensors")
    print(f"exported {path.name}: {path.stat().st_size / 1024:.1f} KiB")

    # 4. Elsewhere: rebuild the method on the new classes only, load the prompt, classify new images.
    novel = data.test_class_sets["novel"]
    deployed = CoOp(backbone, novel, n_ctx=None, ctx_init="a photo of a").eval()
    deployed.load_prompt(path)
    zero_shot = ZeroShotCLIP(backbone, novel).eval()
    images, labels = _two_per_class(data)
    with torch.no_grad():
        tuned = deployed(images).logits.softmax(-1)
        prior = zero_shot(images).logits.softmax(-1)
    print(f"{'true class':<12} {'CoOp prompt':<24} {'zero-shot':<24}")
    for true, ours, theirs in zip(labels.tolist(), tuned, prior):
        print(
            f"{novel[true]:<12} {novel[int(ours.argmax())]:<12} ({float(ours.max()):.2f})    "
            f"{novel[int(theirs.argmax())]:<12} ({float(theirs.max()):.2f})"
        )
    # the deployed prompt is the trained one: same logits as the trained model switched to the novel classes
    model.set_classnames(novel)
    with torch.no_grad():
        assert torch.allclose(model.eval()(images).logits, deployed(images).logits, atol=1e-5)
    results["prompt_kib"] = path.stat().st_size / 1024
    return results


def _two_per_class(data: FewShotImageDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    """Two test images of each novel class (labels index the novel classes)."""
    images, labels = [], []
    for batch in data.test_dataloader()[1]:  # the novel test set
        for image, label in zip(batch["image"], batch["label"].tolist()):
            if labels.count(label) < 2:
                images.append(image)
                labels.append(label)
    return torch.stack(images), torch.tensor(labels)


def arguments(argv: list[str] | None = None) -> dict:
    """The command line as ``main``'s keyword arguments (the tests parse the page's commands with it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--testbed", action="store_true", help="stand-in CLIP on the Fashion-MNIST testbed")
    return vars(parser.parse_args(argv))


if __name__ == "__main__":
    main(**arguments())
