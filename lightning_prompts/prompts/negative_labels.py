"""Negative labels for zero-shot OOD detection (NegLabel; LAPT mines its negative labels the same way).

From a word list the user gives, keep the words whose text features are *farthest* from the ID class
names: for each candidate, its similarities to the ``n`` ID names are sorted and the one at position
``int(percentile · n)`` (a high percentile, so one close ID name is enough to disqualify a word) is its
closeness; the ``count`` candidates with the smallest closeness become the negative labels. Words that
are an ID name (ignoring case and ``_``) are never chosen.

Both releases mine WordNet's nouns and adjectives as two lists (:func:`mine_nouns_and_adjectives`): each
part of speech is turned into text by its own template (the ID names and nouns "the nice {}", adjectives
"This is a {} photo") and ranked on its own, and each keeps its share of the labels. LAPT's release
(OpenOOD-VLM's ``get_selected_ood_text_list``) gives the adjectives ``int(count · A / (A + N))`` of ``count``
and the nouns the rest, reads closeness at position ``int(0.95 · n)``, and keeps a word that is both a noun
and an adjective as a noun; that is what we do. NegLabel's release keeps ``int(0.15 · size)`` of each list
(the same split up to rounding: give ``count`` as 15 % of both lists) and reads closeness as an interpolated
0.95 quantile (the same ranking, up to words whose closeness ties within the interpolation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from lightning_prompts.errors import DatasetError


def read_word_list(path: str | Path) -> list[str]:
    """One word or phrase per line (UTF-8); blank lines and lines starting with ``#`` are skipped,
    repeats kept once, in order."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"Word list {path} does not exist.")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise DatasetError(f"Word list {path} is not UTF-8 text: {error}") from None
    words = list(dict.fromkeys(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")))
    if not words:
        raise DatasetError(f"Word list {path} holds no words.")
    return words


def closeness_to(id_features: Tensor, candidate_features: Tensor, percentile: float) -> Tensor:
    """``(K,)``: each candidate's ``int(percentile · n)``-th smallest cosine to the ``n`` ID features."""
    similarities = candidate_features @ id_features.t()  # (K, n), both L2-normalised
    position = min(int(percentile * id_features.shape[0]), id_features.shape[0] - 1)
    return similarities.sort(dim=1).values[:, position]


@torch.no_grad()
def mine_negative_labels(
    encode_texts: Callable[[Sequence[str]], Tensor],
    id_names: Sequence[str],
    candidates: Sequence[str],
    count: int,
    percentile: float = 0.95,
    template: str = "a photo of a {}.",
    batch_size: int = 1000,
    at_most: bool = False,
) -> list[str]:
    """The ``count`` candidates farthest from ``id_names`` (see the module docstring), farthest first.

    Args:
        encode_texts: L2-normalised text features of strings (a CLIP method's ``encode_texts``).
        id_names: the in-distribution class names.
        candidates: the word list.
        count: how many negative labels to keep (NegLabel and LAPT: 10,000 at test).
        percentile: where in the sorted similarities to read a candidate's closeness (0.95).
        template: how names are turned into text before encoding.
        batch_size: candidates encoded at once.
        at_most: ``count`` is a cap: keep every candidate when fewer remain (after the ID names are removed).
    """
    nouns, _ = mine_nouns_and_adjectives(  # one list: the two-list mining without adjectives
        encode_texts, id_names, candidates, (), count, percentile, template, template, batch_size, at_most
    )
    return nouns


@torch.no_grad()
def mine_nouns_and_adjectives(
    encode_texts: Callable[[Sequence[str]], Tensor],
    id_names: Sequence[str],
    nouns: Sequence[str],
    adjectives: Sequence[str],
    count: int,
    percentile: float = 0.95,
    noun_template: str = "the nice {}",
    adjective_template: str = "This is a {} photo",
    batch_size: int = 1000,
    at_most: bool = False,
) -> tuple[list[str], list[str]]:
    """``(nouns, adjectives)`` kept as negative labels, each farthest first, ``count`` in all: the releases'
    two-list mining (see the module docstring). The default templates are NegLabel's (LAPT's add a full stop
    and capitalise: ``"The nice {}."``, ``"This is a {} photo."``); the ID names take ``noun_template``.
    ``at_most``: ``count`` is a cap (every word kept when fewer remain after ID names and repeats are removed)."""
    noun_pool = _not_id_names(nouns, id_names)
    known = {word.lower() for word in noun_pool}
    adjective_pool = [word for word in _not_id_names(adjectives, id_names) if word.lower() not in known]
    total = len(noun_pool) + len(adjective_pool)
    count = min(count, total) if at_most else count
    if count < 1 or count > total:
        raise ValueError(
            f"count must be between 1 and the {total} nouns and adjectives that are not ID names, got {count}."
        )
    adjective_count = int(count * len(adjective_pool) / total)
    id_features = encode_texts([noun_template.format(name.replace("_", " ")) for name in id_names])
    kept = [
        _farthest(encode_texts, id_features, pool, template, share, percentile, batch_size) if share else []
        for pool, template, share in (
            (noun_pool, noun_template, count - adjective_count),
            (adjective_pool, adjective_template, adjective_count),
        )
    ]
    return kept[0], kept[1]


def _not_id_names(words: Sequence[str], id_names: Sequence[str]) -> list[str]:
    own = {name.replace("_", " ").lower() for name in id_names}
    return [word for word in words if word.replace("_", " ").lower() not in own]


def _farthest(
    encode_texts: Callable[[Sequence[str]], Tensor],
    id_features: Tensor,
    pool: Sequence[str],
    template: str,
    count: int,
    percentile: float,
    batch_size: int,
) -> list[str]:
    closeness = torch.cat(
        [
            closeness_to(id_features, encode_texts([template.format(w) for w in pool[i : i + batch_size]]), percentile)
            for i in range(0, len(pool), batch_size)
        ]
    )
    order = torch.argsort(closeness, stable=True)[:count]
    return [pool[int(i)] for i in order]
