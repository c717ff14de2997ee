"""Size of a CoOp prompt checkpoint against the frozen CLIP it needs.

Builds CoOp on the ViT-B/16 architecture (random weights; the size does not depend on them),
trains one step on generated images, saves a Lightning checkpoint and a safetensors export, and
prints their sizes next to the size of the CLIP weights that a full-model checkpoint would hold.

    python benchmarks/checkpoint_size.py [--model ViT-B-16] [--n-ctx 16]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from lightning.pytorch import Trainer

from lightning_prompts.backbones import OpenCLIP
from lightning_prompts.data import FewShotImageDataModule, Synthetic
from lightning_prompts.methods import CoOp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--n-ctx", type=int, default=16)
    args = parser.parse_args()
    clip = OpenCLIP(args.model, pretrained=None)
    data = FewShotImageDataModule(
        dataset="caltech101",
        shots=1,
        synthetic=Synthetic(num_classes=10, images_per_class=1, image_size=224),
        batch_size=2,
        num_workers=0,
        image_size=clip.image_size,
    )
    model = CoOp(clip, data.classnames, n_ctx=args.n_ctx)
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(
            max_steps=1,
            accelerator="cpu",
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            default_root_dir=folder,
        )
        trainer.fit(model, data)
        checkpoint = Path(folder) / "coop.ckpt"
        trainer.save_checkpoint(checkpoint)
        exported = model.export_prompt(Path(folder) / "prompt.safetensors")
        backbone_bytes = sum(t.numel() * t.element_size() for t in clip.state_dict().values())
        ckpt_bytes, export_bytes = checkpoint.stat().st_size, exported.stat().st_size
        keys = sorted(torch.load(checkpoint, weights_only=True)["state_dict"])
    print(f"CoOp on {args.model} (n_ctx={args.n_ctx}): checkpoint state_dict keys {keys}")
    print(f"Lightning checkpoint (prompt + SGD state + hparams): {ckpt_bytes / 1024:.1f} KiB")
    print(f"safetensors prompt export: {export_bytes / 1024:.1f} KiB")
    print(f"frozen CLIP weights left out: {backbone_bytes / 2**20:.1f} MiB (fp32)")
    print(f"size ratio checkpoint / full model: {ckpt_bytes / backbone_bytes:.6f}")


if __name__ == "__main__":
    main()
