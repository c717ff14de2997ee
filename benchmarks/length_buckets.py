"""The quickstart's train step with the backbone's ``length_buckets`` at 1 (one padded batch) and at 2 and 3.

The quickstart recipe's model and data as ``lightning-prompts fit --config recipes/quickstart.yaml`` builds
them (MiniLM-L6, 10 soft tokens, mean pooling; Rotten Tomatoes batches of 32 grouped by characters); the
same ``--batches`` training batches, one process, alternating (one warm-up round, then ``--rounds``). A step
is forward, cross-entropy and backward to the prompt and head.

Prints, per setting, the text and soft-token positions computed per real one and the seconds per round;
then ``ratio_2`` and ``ratio_3`` (time at 1 over time at 2 or 3; >1 means faster), and the largest
differences of the logits and of the prompt's gradient from the one-batch step (float rounding: a text's
output does not depend on its batch-mates).

    python benchmarks/length_buckets.py [--batches 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from lightning_prompts.backbones.length_buckets import bucket_indices
from lightning_prompts.lightning_cli import run_cli

SETTINGS = (1, 2, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cli = run_cli(["--config", "recipes/quickstart.yaml"], run=False)
    model, data = cli.model, cli.datamodule
    data.setup("fit")
    torch.manual_seed(0)
    batches = []
    for batch in data.train_dataloader():
        batches.append(model.on_before_batch_transfer(batch, 0))
        if len(batches) == args.batches:
            break
    model.train()
    model.backbone.eval()  # frozen: as in training
    soft = model.reserved_tokens
    threads, load = torch.get_num_threads(), os.getloadavg()[0]
    print(f"{len(batches)} batches of {data.batch_size}, threads {threads}, load {load:.2f}")
    real = sum(int(b["attention_mask"].sum()) + soft * len(b["attention_mask"]) for b in batches)
    for setting in SETTINGS:
        computed = sum(
            len(rows) * (length + soft)
            for b in batches
            for rows, length in bucket_indices(b["attention_mask"], setting, soft)
        )
        print(f"length_buckets {setting}: {computed / real:.3f} positions computed per real position")

    def step(batch: dict, setting: int) -> tuple[torch.Tensor, torch.Tensor]:
        model.backbone.length_buckets = setting
        model.zero_grad(set_to_none=True)
        logits = model(batch["input_ids"], batch["attention_mask"]).logits
        F.cross_entropy(logits, batch["label"]).backward()
        return logits.detach(), model.prompt.embedding.grad.clone()

    for setting in SETTINGS[1:]:
        reference, bucketed = step(batches[0], 1), step(batches[0], setting)
        logits_difference = (reference[0] - bucketed[0]).abs().max().item()
        gradient_difference = ((reference[1] - bucketed[1]).norm() / reference[1].norm()).item()
        print(
            f"length_buckets {setting}: logits difference {logits_difference:.1e}, "
            f"prompt gradient relative difference {gradient_difference:.1e}"
        )
    seconds = {setting: 0.0 for setting in SETTINGS}
    for round_index in range(args.rounds + 1):  # round 0 warms up
        times = {}
        for setting in SETTINGS:
            start = time.perf_counter()
            for batch in batches:
                step(batch, setting)
            times[setting] = time.perf_counter() - start
        label = "warm-up" if round_index == 0 else f"round {round_index}"
        print(f"{label}: " + ", ".join(f"{setting}: {value:.1f} s" for setting, value in times.items()), flush=True)
        if round_index:
            for setting, value in times.items():
                seconds[setting] += value
    for setting in SETTINGS[1:]:
        print(f"ratio_{setting}: {seconds[1] / seconds[setting]:.2f}")


if __name__ == "__main__":
    main()
