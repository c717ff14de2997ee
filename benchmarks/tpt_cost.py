"""TPT's cost per test image, and what batching the views saves.

For one test image TPT scores the image and its N views, keeps the most confident, takes ``steps``
AdamW steps on the context and classifies the image. This script times, in one process and on the
same images, for a CLIP with random weights (no download):

* ``batched``: :class:`~lightning_prompts.evaluation.TestTimePromptTuning` as it runs (the N + 1
  inputs in one batch; CoOp's frozen image features computed once per image);
* ``one view at a time``: the same computation with the N + 1 inputs encoded one by one, every step
  (what a straightforward per-view loop costs);

and prints seconds per test image for each, their ratio, and the largest difference of the predicted
logits (the two paths compute the same thing).

    python benchmarks/tpt_cost.py [--model ViT-B-16] [--classes 100] [--views 63] [--steps 1] [--images 2]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from lightning_prompts.backbones import OpenCLIP
from lightning_prompts.evaluation import TestTimePromptTuning
from lightning_prompts.methods import CoOp


def one_view_at_a_time(
    method: CoOp, tpt: TestTimePromptTuning, image: torch.Tensor, views: torch.Tensor
) -> torch.Tensor:
    """TPT's computation with the inputs encoded one by one, at every step (the same tuning loop)."""
    inputs = torch.cat([image.unsqueeze(0), views])

    def encode(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([F.normalize(method.backbone.encode_image(x[None]).features, dim=-1) for x in batch])

    tpt.tune(method, lambda: method.classify_features(encode(inputs)).logits)
    with torch.no_grad():
        return method.classify_features(encode(image[None])).logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--views", type=int, default=63)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    clip = OpenCLIP(args.model, pretrained=None)
    method = CoOp(clip, [f"class {i}" for i in range(args.classes)], n_ctx=None, ctx_init="a photo of a").eval()
    tpt = TestTimePromptTuning(steps=args.steps)
    tpt.start(method, "test")
    size = clip.image_size if hasattr(clip, "image_size") else 224
    images = torch.randn(args.images, 3, size, size)
    views = torch.randn(args.images, args.views, 3, size, size)
    timings: dict[str, list[float]] = {"batched": [], "one view at a time": []}
    outputs: dict[str, list[torch.Tensor]] = {"batched": [], "one view at a time": []}
    for index in range(args.images):  # alternate, so drift in machine speed hits both alike
        for name in timings:
            start = time.perf_counter()
            if name == "batched":
                logits = tpt.tune_and_predict(method, images[index], views[index])
            else:
                logits = one_view_at_a_time(method, tpt, images[index], views[index])
            timings[name].append(time.perf_counter() - start)
            outputs[name].append(logits.detach())
    per_image = {name: sum(values) / len(values) for name, values in timings.items()}
    difference = max(float((a - b).abs().max()) for a, b in zip(outputs["batched"], outputs["one view at a time"]))
    print(f"{args.model}, {args.classes} classes, {args.views} views + the image, {args.steps} step(s), "
          f"{args.threads} threads, {args.images} test images")  # fmt: skip
    for name, seconds in per_image.items():
        print(f"  {name:<20} {seconds:7.2f} s per test image")
    print(f"  one at a time / batched: {per_image['one view at a time'] / per_image['batched']:.2f}x")
    print(f"  largest logits difference: {difference:.1e}")


if __name__ == "__main__":
    main()
