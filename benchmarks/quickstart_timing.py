"""Where the quickstart's time goes: imports, model and data loading, each training epoch, validation.

Also prints how many text positions each epoch computed per real text token (padding is the waste that
length grouping and the backbone's ``length_buckets`` remove; deterministic, unlike the times).

Runs ``lightning-prompts fit --config recipes/quickstart.yaml`` in this process with a callback that
stamps the phases, and prints them with the total wall time, the peak resident memory and the final
``val/acc``.

    python benchmarks/quickstart_timing.py [extra lightning-prompts options]
"""

from __future__ import annotations

import os
import resource
import sys
import time

START = time.perf_counter()

from lightning.pytorch import Callback  # noqa: E402

from lightning_prompts.backbones.length_buckets import bucket_indices  # noqa: E402
from lightning_prompts.lightning_cli import run_cli  # noqa: E402

IMPORTED = time.perf_counter()
STAMPS: list[tuple[str, float]] = []
PADDING: list[float] = []  # per training epoch: text positions fed per real text token


class PhaseTimer(Callback):
    """Records when each phase starts and ends."""

    def on_fit_start(self, trainer, module) -> None:
        STAMPS.append(("model and data built, fit starts", time.perf_counter()))

    def on_train_epoch_start(self, trainer, module) -> None:
        self.epoch_start = time.perf_counter()
        self.positions = self.text_tokens = 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        mask = batch["attention_mask"]  # text positions as computed: padding included, soft tokens not
        # the sub-batches the backbone runs, each to its own length (cut as it cuts them, soft tokens counted)
        buckets = bucket_indices(mask, module.backbone.length_buckets, module.reserved_tokens)
        self.positions += sum(len(rows) * length for rows, length in buckets)
        self.text_tokens += int(mask.sum())

    def on_train_epoch_end(self, trainer, module) -> None:
        STAMPS.append((f"epoch {trainer.current_epoch} training", time.perf_counter() - self.epoch_start))
        PADDING.append(self.positions / self.text_tokens)

    def on_validation_epoch_start(self, trainer, module) -> None:
        self.validation_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer, module) -> None:
        label = "sanity validation" if trainer.sanity_checking else f"epoch {trainer.current_epoch} validation"
        STAMPS.append((label, time.perf_counter() - self.validation_start))


def main() -> None:
    load = os.getloadavg()[0]
    cli = run_cli(
        ["fit", "--config", "recipes/quickstart.yaml", "--trainer.callbacks+=__main__.PhaseTimer", *sys.argv[1:]]
    )
    end = time.perf_counter()
    print(f"load average at start {load:.2f}, {os.cpu_count()} cores")
    print(f"imports: {IMPORTED - START:.1f} s")
    built = next(value for name, value in STAMPS if name.startswith("model and data"))
    print(f"model and data loading (config parsing included): {built - IMPORTED:.1f} s")
    for name, value in STAMPS:
        if not name.startswith("model and data"):
            print(f"{name}: {value:.1f} s")
    print("text positions computed per text token, per epoch: " + ", ".join(f"{ratio:.2f}" for ratio in PADDING))
    print(f"total wall time: {end - START:.1f} s")
    print(f"peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    print(f"val/acc: {float(cli.trainer.callback_metrics['val/acc']):.3f}")


if __name__ == "__main__":
    main()
