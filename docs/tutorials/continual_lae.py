"""Tutorial: class-incremental learning with LAE, and the accuracy matrix of the whole stream.

    python docs/tutorials/continual_lae.py [--plot accuracy_matrix.png]

LAE (Gao et al., ICCV 2023) trains a parameter-efficient module (here an adapter in two blocks of a ViT)
on each task in turn, keeps a slowly moving copy of it (the offline expert) and predicts with both. The
stream below has 3 tasks of 2 classes each; after every task the model is evaluated on every task seen
so far, which fills one row of the accuracy matrix ``A[t, j]`` (accuracy on task ``j`` after training on
task ``t``). From it: the final accuracy ``A_t``, the average incremental accuracy and the forgetting.
A tiny random ViT on generated images, in seconds; the recipes in ``recipes/lae/`` run CIFAR-100 and
ImageNet-R with ViT-B/16.
"""

from __future__ import annotations

import argparse
import functools

import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_prompts import LAE, ClassIncrementalDataModule
from lightning_prompts.backbones import TimmViT


def main(plot: str | None = None) -> dict[str, float]:
    seed_everything(1)
    tasks, epochs_per_task = 3, 4
    data = ClassIncrementalDataModule(
        num_tasks=tasks, epochs_per_task=epochs_per_task, image_size=32, batch_size=4, eval_batch_size=8,
        synthetic={"num_classes": 6, "images_per_class": 12},
    )  # fmt: skip
    model = LAE(
        TimmViT("tiny", pretrained=False), data.classnames, num_tasks=tasks, pet="adapter", pet_blocks=[0, 1],
        freeze_epochs=1, ema_decay=0.9, optimizer=functools.partial(torch.optim.Adam, lr=0.02),
    )  # fmt: skip
    trainer = Trainer(
        max_epochs=tasks * epochs_per_task, reload_dataloaders_every_n_epochs=1,
        check_val_every_n_epoch=epochs_per_task, num_sanity_val_steps=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, data)

    matrix = model.evaluator.history.matrix.cpu()
    print("accuracy matrix (row: after training task t; column: accuracy on task j)")
    print("        " + "  ".join(f"task {j}" for j in range(tasks)))
    for t, row in enumerate(matrix.tolist()):  # tasks not trained yet are not evaluated: "—"
        print(f"task {t} " + "  ".join("     —" if j > t else f"{value:6.3f}" for j, value in enumerate(row)))
    metrics = {k: float(trainer.callback_metrics[f"val/{k}"]) for k in ("acc", "avg_incremental_acc", "forgetting")}
    for name, value in metrics.items():
        print(f"val/{name}: {value:.3f}")
    seen = torch.ones(tasks, tasks).tril().bool()
    assert not torch.isnan(matrix[seen]).any()  # after each task, every task seen so far was evaluated
    # A_t is the accuracy on all classes seen after the last task (tasks have equal sizes here)
    assert abs(metrics["acc"] - float(matrix[-1].mean())) < 1e-6

    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(3.6, 3.0))
        image = axis.imshow(matrix.numpy(), vmin=0, vmax=1, cmap="viridis")
        axis.set_xlabel("evaluated on task j")
        axis.set_ylabel("after training task t")
        axis.set_xticks(range(tasks))
        axis.set_yticks(range(tasks))
        figure.colorbar(image, ax=axis, label="accuracy")
        figure.tight_layout()
        figure.savefig(plot, dpi=110)
        print("wrote", plot)
    return metrics


def arguments(argv: list[str] | None = None) -> dict:
    """The command line as ``main``'s keyword arguments (the tests parse the page's commands with it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plot", default=None, help="write the matrix as an image")
    return vars(parser.parse_args(argv))


if __name__ == "__main__":
    main(**arguments())
