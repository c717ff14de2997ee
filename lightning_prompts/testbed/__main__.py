"""Commands of the offline testbed.

    python -m lightning_prompts.testbed align \
        --output lightning_prompts/backbones/assets/stand_in_clip_alignment.safetensors
    python -m lightning_prompts.testbed prepare --root data/testbed [--source /usr/share/datasets/fashion-mnist]
    python -m lightning_prompts.testbed prepare-ood --root data/testbed
    python -m lightning_prompts.testbed prepare-digits --root data/testbed
    python -m lightning_prompts.testbed prepare-lapt --root data/testbed
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_prompts.testbed", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    align = commands.add_parser("align", help="train the stand-in CLIP's text-to-image alignment map")
    align.add_argument("--output", required=True, help="safetensors file to write")
    align.add_argument("--steps", type=int, default=300)
    align.add_argument("--lr", type=float, default=1e-3)
    align.add_argument("--seed", type=int, default=0)
    align.add_argument("--held-out", type=int, default=100, help="classes held out for the generalisation check")
    prepare = commands.add_parser("prepare", help="write Fashion-MNIST in the Dassl layout, with masks")
    prepare.add_argument("--root", default="data/testbed")
    prepare.add_argument("--source", default=None, help="folder of the IDX files (default: the Debian package's)")
    prepare.add_argument("--train-per-class", type=int, default=100)
    prepare.add_argument("--val-per-class", type=int, default=20)
    prepare.add_argument("--test-per-class", type=int, default=200)
    prepare.add_argument("--seed", type=int, default=0)
    ood = commands.add_parser("prepare-ood", help="write the OOD sets (MNIST, sklearn digits, novel Fashion-MNIST)")
    ood.add_argument("--root", default="data/testbed")
    ood.add_argument("--per-class", type=int, default=100, help="images per digit of the MNIST and digits sets")
    ood.add_argument("--seed", type=int, default=0)
    digits = commands.add_parser("prepare-digits", help="write MNIST and sklearn's digits in the Dassl layout (MVLPT)")
    digits.add_argument("--root", default="data/testbed")
    digits.add_argument("--train-per-class", type=int, default=100)
    digits.add_argument("--val-per-class", type=int, default=20)
    digits.add_argument("--test-per-class", type=int, default=50)
    digits.add_argument("--seed", type=int, default=0)
    lapt = commands.add_parser(
        "prepare-lapt", help="write LAPT's training folders: ID classes and negative labels with retrieved crops"
    )
    lapt.add_argument("--root", default="data/testbed")
    lapt.add_argument("--negative-labels", type=int, default=25, help="the first N of NegLabel's 500 mined labels")
    lapt.add_argument("--per-label", type=int, default=16, help="retrieved crops per negative label")
    lapt.add_argument("--crops-per-photo", type=int, default=64)
    lapt.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.command == "align":
        import torch

        from lightning_prompts.testbed.alignment import AlignmentConfig, run

        torch.set_num_threads(1)  # one thread: the same floating-point sums on every machine
        report = run(args.output, AlignmentConfig(steps=args.steps, lr=args.lr, seed=args.seed, held_out=args.held_out))
        print(json.dumps(report, indent=1))
    elif args.command == "prepare-digits":
        from lightning_prompts.testbed.digit_datasets import write_digit_datasets

        written = write_digit_datasets(
            args.root, args.train_per_class, args.val_per_class, args.test_per_class, args.seed
        )
        for name, parts in written.items():
            print(f"wrote {args.root}/{name}/: " + ", ".join(f"{part} {count}" for part, count in parts.items()))
    elif args.command == "prepare-lapt":
        written = prepare_lapt(args)
        print(
            f"wrote {args.root}/lapt/train/: {written['id']} ID images, {written['negative']} crops for "
            f"{args.negative_labels} negative labels (retrieved from {written['pool']} crops)"
        )
    elif args.command == "prepare-ood":
        from lightning_prompts.testbed.ood_sets import write_ood_sets

        counts = write_ood_sets(args.root, args.per_class, args.seed)
        words = counts.pop("words")
        sets = ", ".join(f"{name} {count} images" for name, count in counts.items())
        print(f"wrote {args.root}/ood/: {sets}; words.txt with {words} words")
    else:
        from lightning_prompts.testbed.fashion_mnist import DEBIAN_SOURCE, write_fashion_mnist

        path = write_fashion_mnist(
            args.source or DEBIAN_SOURCE,
            args.root,
            args.train_per_class,
            args.val_per_class,
            args.test_per_class,
            args.seed,
        )
        print(f"wrote {path}")
    return 0


def prepare_lapt(args: argparse.Namespace) -> dict[str, int]:
    """LAPT's folders, its negative labels mined as ``recipes/testbed/ood_neglabel.yaml`` mines them."""
    import torch

    from lightning_prompts.backbones import StandInCLIP
    from lightning_prompts.methods import NegLabel
    from lightning_prompts.testbed.lapt_sets import ID_CLASSES, LAPT_FOLDER, write_lapt_training_set
    from lightning_prompts.testbed.ood_sets import OOD_FOLDER

    torch.manual_seed(args.seed)
    words = f"{args.root}/{OOD_FOLDER}/words.txt"
    neglabel = NegLabel(StandInCLIP(), ID_CLASSES, word_list=words, num_negative_labels=500, negative_groups=10)
    neglabel.eval()
    negatives = neglabel.negative_labels[: args.negative_labels]
    folder = Path(args.root) / LAPT_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    # training: the labels with image folders; test: all 500, as recipes/testbed/ood_neglabel.yaml scores them
    (folder / "negative_labels_train.txt").write_text("\n".join(negatives) + "\n")
    (folder / "negative_labels_test.txt").write_text("\n".join(neglabel.negative_labels) + "\n")
    return write_lapt_training_set(
        args.root, negatives, neglabel.image_features, neglabel.encode_texts, args.per_label, args.crops_per_photo,
        args.seed,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
