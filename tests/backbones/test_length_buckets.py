"""Sub-batches of similar length: the cut points minimise the positions computed, and a bucketed forward gives
the same logits and prompt gradients as the whole batch (a text's output never depends on its batch-mates)."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from lightning_prompts.backbones import HFText
from lightning_prompts.backbones.length_buckets import bucket_indices, length_buckets


def brute_force_positions(lengths: list[int], max_buckets: int, extra: int) -> int:
    """Fewest positions over every way to cut the sorted lengths into at most ``max_buckets`` runs of the
    minimum size."""
    n, smallest = len(lengths), math.ceil(len(lengths) / (2 * max_buckets))
    best = math.inf
    for runs in range(1, max_buckets + 1):
        for cuts in itertools.combinations(range(1, n), runs - 1):
            edges = [0, *cuts, n]
            sizes = [b - a for a, b in zip(edges, edges[1:], strict=False)]
            if runs > 1 and min(sizes) < smallest:
                continue
            best = min(best, sum((b - a) * (lengths[a] + extra) for a, b in zip(edges, edges[1:], strict=False)))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_cuts_minimise_the_positions_computed(seed):
    rng = random.Random(seed)
    n, max_buckets, extra = rng.randint(2, 12), rng.randint(1, 3), rng.choice([0, 10])
    lengths = sorted((rng.randint(3, 80) for _ in range(n)), reverse=True)
    cuts = length_buckets(lengths, max_buckets, extra)
    assert cuts[0][0] == 0 and cuts[-1][1] == n and all(a[1] == b[0] for a, b in zip(cuts, cuts[1:], strict=False))
    assert len(cuts) <= max_buckets
    assert sum((end - start) * (lengths[start] + extra) for start, end in cuts) == brute_force_positions(
        lengths, max_buckets, extra
    )


def test_cuts_by_hand():
    # four long and four short texts: one cut between them; without the prompt's positions the saving is larger
    assert length_buckets([40, 40, 39, 38, 6, 5, 5, 4], 2) == [(0, 4), (4, 8)]
    assert length_buckets([40, 40, 39, 38, 6, 5, 5, 4], 1) == [(0, 8)]
    assert length_buckets([7, 7, 7, 7], 3) == [(0, 4)]  # equal lengths: nothing to save, one run
    # a lone long text is not cut off: each run holds at least ceil(8 / 4) = 2 texts
    assert length_buckets([80, 10, 10, 10, 10, 10, 10, 10], 2) == [(0, 2), (2, 8)]
    assert length_buckets([], 2) == []
    with pytest.raises(ValueError, match="sorted"):
        length_buckets([3, 5], 2)
    with pytest.raises(ValueError, match="at least 1"):
        length_buckets([3], 0)


def test_bucket_indices_cover_the_batch_longest_first():
    mask = torch.zeros(6, 9, dtype=torch.long)
    for row, length in enumerate([3, 9, 2, 8, 3, 9]):
        mask[row, :length] = 1
    buckets = bucket_indices(mask, 2)
    assert [(rows.tolist(), length) for rows, length in buckets] == [([1, 5, 3], 9), ([0, 4, 2], 3)]


def noisy_backbone(name: str, task: str, pooling: str, buckets: int) -> HFText:
    backbone = HFText(name, task=task, pooling=pooling, num_labels=3, length_buckets=buckets)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for parameter in backbone.parameters():  # far from init: texts and classes score differently
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return backbone


@pytest.mark.parametrize(
    ("name", "task", "pooling"),
    [
        ("tiny-bert", "sequence-classification", "mean"),
        ("tiny-bert", "sequence-classification", "model"),
        ("tiny-gpt2", "sequence-classification", "last"),
        ("tiny-gpt2", "causal-lm", "model"),
        ("tiny-gemma3", "causal-lm", "model"),
    ],
)
@pytest.mark.parametrize("per_input_prompt", [False, True])
def test_bucketed_forward_equals_the_whole_batch(name, task, pooling, per_input_prompt):
    whole, bucketed = (noisy_backbone(name, task, pooling, buckets) for buckets in (1, 3))
    texts = ["a b c d e f g h i j k l", "a", "b c", "c d e f g h i j k", "d e", "e", "f g h i j k l m n", "g"]
    tokens = whole.tokenize(texts)
    assert len(bucket_indices(tokens["attention_mask"], 3, 2)) > 1  # the batch is cut
    shape = (len(texts), 2, whole.hidden_size) if per_input_prompt else (2, whole.hidden_size)
    generator = torch.Generator().manual_seed(1)
    start = torch.randn(shape, generator=generator)
    results = []
    for backbone in (whole, bucketed):
        lengths = []
        hook = backbone.model.get_input_embeddings().register_forward_hook(
            lambda module, args, output, lengths=lengths: lengths.append(output.shape[1])
        )
        prompt = start.clone().requires_grad_(True)
        logits = backbone.forward_embeddings(prompt, tokens["input_ids"], tokens["attention_mask"]).logits
        (logits * torch.linspace(-1, 1, logits.shape[-1])).sum().backward()
        hook.remove()
        results.append((logits.detach(), prompt.grad, lengths))
    (logits, grad, lengths), (bucketed_logits, bucketed_grad, bucketed_lengths) = results
    assert lengths == [tokens["input_ids"].shape[1]] and len(bucketed_lengths) > 1  # shorter sub-batches ran
    assert max(bucketed_lengths) == lengths[0] and min(bucketed_lengths) < lengths[0]
    assert logits.std(0).min() > 1e-3  # texts score differently: the order of the rows is tested
    torch.testing.assert_close(bucketed_logits, logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bucketed_grad, grad, rtol=1e-5, atol=1e-6)


def test_hidden_states_and_input_offsets_run_as_one_batch():
    backbone = noisy_backbone("tiny-bert", "sequence-classification", "mean", 3)
    tokens = backbone.tokenize(["a b c d e f g h i j", "a", "b", "c"])
    output = backbone.forward_embeddings(None, tokens["input_ids"], tokens["attention_mask"], output_hidden_states=True)
    assert output.hidden_states[-1].shape[:2] == tokens["input_ids"].shape  # one pass over the padded batch
    # DePT's offset has a row per padded position: the batch cannot be cut, and is not
    offset = torch.randn(tokens["input_ids"].shape[1], backbone.hidden_size, generator=torch.Generator().manual_seed(2))
    bucketed = backbone.forward_embeddings(None, tokens["input_ids"], tokens["attention_mask"], input_offset=offset)
    backbone.length_buckets = 1
    whole = backbone.forward_embeddings(None, tokens["input_ids"], tokens["attention_mask"], input_offset=offset)
    torch.testing.assert_close(bucketed.logits, whole.logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="length_buckets"):
        HFText("tiny-bert", length_buckets=0)
