"""A real graph, offline: GPF, GPF-plus, a linear probe and full fine-tuning on Zachary's karate club, through the
recipes as written.

PyG's ``KarateClub`` ships with torch-geometric (34 members, 4 communities, one-hot member features), so, unlike
Cora or the molecule sets, it needs no download. The run is the recipes' own chain, through the command line:

1. ``lightning-prompts fit --config recipes/graphcl/karate.yaml``: GraphCL on every member's 2-hop ego-graph,
   labels unread (seed 0), written to ``outputs/gnn/graphcl_karate_gin.pt``;
2. for each of ``recipes/gpf/karate{,_gpf,_linear_probe,_fine_tuning}.yaml`` and each seed (0, 1, 2: the 1-shot
   split and the initialisation), ``fit`` then ``test --ckpt_path best`` (the best validation accuracy); once on
   the pre-trained encoder and once on a random one (``checkpoint_path: null``), which shows what pre-training
   adds.

Test accuracy over the 26 members neither trained nor validated on; one CPU thread. Writes ``results.json`` and
``results.md`` to ``--out``::

    python benchmarks/karate_testbed.py --out docs/testbed/karate
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import tempfile
from pathlib import Path

import torch

from lightning_prompts.cli import run_cli

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
METHODS = {
    "linear probe": "gpf/karate_linear_probe.yaml",
    "full fine-tuning": "gpf/karate_fine_tuning.yaml",
    "GPF": "gpf/karate_gpf.yaml",
    "GPF-plus": "gpf/karate.yaml",
}
# the same as `--model.init_args.backbone.init_args.checkpoint_path null`, as a config file
RANDOM_ENCODER = "model:\n  init_args:\n    backbone:\n      init_args: {checkpoint_path: null}\n"
ENCODERS = {"GraphCL": [], "random": ["--config", "random_encoder.yaml"]}
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def run(args: list[str]):
    with contextlib.redirect_stdout(io.StringIO()):  # the command's result tables
        return run_cli(args)


def fit_and_test(recipe: str, seed: int, extra: list[str], folder: Path) -> float:
    common = ["--config", str(RECIPES / recipe), *extra, *QUIET, "--seed_everything", str(seed),
              "--data.init_args.seed", str(seed), "--trainer.default_root_dir", str(folder)]  # fmt: skip
    run(["fit", *common])
    tested = run(["test", *common, "--ckpt_path", "best"])
    return float(tested.trainer.callback_metrics["test/acc"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/testbed/karate"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    options = parser.parse_args()
    torch.set_num_threads(1)  # tiny graphs: a second thread only waits (and competes with anything else running)
    out = options.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)  # the recipes' relative outputs/ (the pre-trained encoder) go here
        Path("random_encoder.yaml").write_text(RANDOM_ENCODER)
        run(["fit", "--config", str(RECIPES / "graphcl" / "karate.yaml"), *QUIET])
        for encoder, extra in ENCODERS.items():
            for method, recipe in METHODS.items():
                accuracies = [
                    fit_and_test(recipe, seed, extra, Path(scratch) / encoder / method / str(seed))
                    for seed in options.seeds
                ]
                results.setdefault(encoder, {})[method] = accuracies
                print(f"{encoder:8s} {method:17s} " + " ".join(f"{a:.3f}" for a in accuracies), flush=True)
    (out / "results.json").write_text(json.dumps({"seeds": options.seeds, "test_acc": results}, indent=1) + "\n")
    lines = ["| encoder | " + " | ".join(METHODS) + " |", "|---" * (len(METHODS) + 1) + "|"]
    for encoder, row in results.items():
        cells = [f"{100 * statistics.mean(v):.1f} ± {100 * statistics.stdev(v):.1f}" for v in row.values()]
        lines.append(f"| {encoder} | " + " | ".join(cells) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
