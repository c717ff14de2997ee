"""LiT-style alignment of the stand-in CLIP's text tower onto its locked image tower.

The EfficientNet's ImageNet classifier holds one vector ``w_c`` per class in the image feature
space. For every name of every ImageNet class (all lemmas of the synset: "jersey", "T-shirt", "tee
shirt" for class 610; 1665 names in all) we encode ``"a photo of a {name}."`` with MiniLM (``t_i``,
class ``c(i)``) and learn a linear map ``P`` and a temperature ``s`` with the text-to-image InfoNCE
loss over the 1000 class vectors,

    logits_ij = exp(s) · cos(P t_i, w_j),    loss = mean_i CE(logits_i, c(i)),

so that any text, not only these names, lands near the classifier vector an ImageNet class of that
meaning would have. Images are then classified zero-shot by ``cos(f(x), P t)``, exactly as
CLIP does. The image tower never changes ("locked image tuning", Zhai et al. 2022); the text tower
stays frozen too and only ``P`` and ``s`` are learned.

The run is deterministic: fixed seed, full-batch Adam for a fixed number of steps, on the CPU.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_prompts.backbones.stand_in_clip import StandInCLIP

TEMPLATE = "a photo of a {}."


def imagenet_class_names() -> list[list[str]]:
    """The names of each of the 1000 ImageNet-1k classes (every lemma of its synset, from timm)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [[name.strip() for name in info.index_to_description(i).split(",")] for i in range(info.num_classes())]


@dataclass
class AlignmentConfig:
    """Settings of an alignment run (stored in the output file's metadata)."""

    steps: int = 300
    lr: float = 1e-3
    seed: int = 0
    template: str = TEMPLATE
    held_out: int = 100


@torch.no_grad()
def text_features(backbone: StandInCLIP, texts: list[str], batch_size: int = 100) -> Tensor:
    """Pooled MiniLM features (before the alignment map) of ``texts``."""
    chunks = []
    for start in range(0, len(texts), batch_size):
        ids = backbone.tokenize(texts[start : start + batch_size])
        chunks.append(backbone.pool_text_embeddings(backbone.embed_tokens(ids), backbone.eot_positions(ids)))
    return torch.cat(chunks)


def fit_map(texts: Tensor, labels: Tensor, targets: Tensor, config: AlignmentConfig) -> tuple[Tensor, Tensor]:
    """Learn ``P`` (``targets.shape[1] × texts.shape[1]``) and ``s``: text ``i`` must pick ``targets[labels[i]]``."""
    generator = torch.Generator().manual_seed(config.seed)
    bound = 1.0 / texts.shape[1] ** 0.5
    projection = torch.empty(targets.shape[1], texts.shape[1]).uniform_(-bound, bound, generator=generator)
    projection = torch.nn.Parameter(projection)
    log_scale = torch.nn.Parameter(torch.tensor(2.6592))  # log(1/0.07), as CLIP starts
    optimizer = torch.optim.Adam([projection, log_scale], lr=config.lr)
    normalized_targets = F.normalize(targets, dim=-1)
    for _ in range(config.steps):
        optimizer.zero_grad()
        logits = log_scale.exp() * F.normalize(texts @ projection.t(), dim=-1) @ normalized_targets.t()
        F.cross_entropy(logits, labels).backward()
        optimizer.step()
        with torch.no_grad():
            log_scale.clamp_(0.0, 4.6052)  # scale at most 100, as CLIP
    return projection.detach(), log_scale.detach()


def retrieval_top1(texts: Tensor, targets: Tensor, projection: Tensor) -> float:
    """Share of texts whose nearest class vector (cosine) is their own."""
    similarity = F.normalize(texts @ projection.t(), dim=-1) @ F.normalize(targets, dim=-1).t()
    return float((similarity.argmax(dim=1) == torch.arange(texts.shape[0])).float().mean())


def align(backbone: StandInCLIP, config: AlignmentConfig) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Train the map on all 1000 classes; also report how a map trained without ``held_out`` random
    classes (all their names) places those classes' first names among them: a check that it
    generalises to names it never saw."""
    torch.manual_seed(config.seed)
    names = imagenet_class_names()
    pairs = [(config.template.format(name), label) for label, synonyms in enumerate(names) for name in synonyms]
    texts = text_features(backbone, [text for text, _ in pairs])
    labels = torch.tensor([label for _, label in pairs])
    targets = backbone.class_embeddings().detach().float()
    first = torch.tensor([labels.tolist().index(c) for c in range(len(names))])  # each class's first name
    report: dict[str, float] = {"names": float(len(pairs))}
    if config.held_out:
        order = list(range(len(names)))
        random.Random(config.seed).shuffle(order)
        held = torch.tensor(sorted(order[: config.held_out]))
        kept_classes = torch.tensor(sorted(order[config.held_out :]))
        kept = torch.isin(labels, kept_classes)
        relabel = torch.searchsorted(kept_classes, labels[kept])
        projection, _ = fit_map(texts[kept], relabel, targets[kept_classes], config)
        report["held_out_top1_among_held_out"] = retrieval_top1(texts[first[held]], targets[held], projection)
        report["held_out_classes"] = float(config.held_out)
    projection, log_scale = fit_map(texts, labels, targets, config)
    report["train_top1_among_1000"] = retrieval_top1(texts[first], targets, projection)
    report["logit_scale"] = float(log_scale.exp())
    return {"projection.weight": projection, "logit_scale": log_scale.reshape(1)}, report


def save_alignment(tensors: dict[str, Tensor], path: str | Path, metadata: dict[str, object]) -> Path:
    """Write the alignment (fp16, about 1 MB) atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(
        {k: v.half().contiguous() for k, v in tensors.items()},
        str(tmp),
        metadata={"lightning_prompts.alignment": json.dumps(metadata, sort_keys=True)},
    )
    tmp.replace(path)
    return path


def run(output: str | Path, config: AlignmentConfig, backbone: StandInCLIP | None = None) -> dict[str, float]:
    """Build the unaligned stand-in (real packaged towers unless ``backbone`` is given), align, save."""
    backbone = backbone if backbone is not None else StandInCLIP(alignment=None)
    tensors, report = align(backbone, config)
    metadata = {
        "config": asdict(config),
        "report": report,
        "image_model": backbone.image_model,
        "text_model": backbone.text_model,
        "torch": torch.__version__,
    }
    save_alignment(tensors, output, metadata)
    return report
