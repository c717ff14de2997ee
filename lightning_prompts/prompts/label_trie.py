"""Trie-constrained generation of label sets (the label-generating baseline PTEC compares with).

A prompt-tuned language model can classify by *generating* the names of the classes a text belongs to,
``"finance, insurance<eos>"``. Unconstrained, it may generate names that are no class; constrained
by a prefix tree over the class names' tokens, every step may only continue a class name, end it with
the separator or end the sequence, and a class already generated is taken out of the tree (no repeats).

:class:`TrieConstrainedLogitsProcessor` is a ``transformers`` logits processor:
``model.generate(..., logits_processor=[processor])``; :func:`parse_label_sets` turns the generated ids
back into class indices.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import LogitsProcessor

_END = -1  # a trie node's key marking that the path so far spells a whole label (its value: the label index)


class LabelTrie:
    """A prefix tree over token-id sequences (one per label)."""

    def __init__(self, sequences: Sequence[Sequence[int]]) -> None:
        if not sequences or any(len(seq) == 0 for seq in sequences):
            raise ValueError("every label needs at least one token.")
        self.root: dict[int, dict] = {}
        for index, sequence in enumerate(sequences):
            node = self.root
            for token in sequence:
                node = node.setdefault(int(token), {})
            if _END in node:
                raise ValueError(f"labels {node[_END]} and {index} have the same tokens {list(sequence)}.")
            node[_END] = index  # type: ignore[assignment]
        self.sequences = [list(map(int, seq)) for seq in sequences]

    def _node(self, prefix: Sequence[int]) -> dict | None:
        node: dict | None = self.root
        for token in prefix:
            node = node.get(int(token)) if node is not None else None
        return node

    def _labels_below(self, node: dict) -> set[int]:
        found = {node[_END]} if _END in node else set()
        for key, child in node.items():
            if key != _END:
                found |= self._labels_below(child)
        return found

    def continuations(self, prefix: Sequence[int], exclude: set[int] = frozenset()) -> set[int]:
        """Tokens that extend ``prefix`` towards a label not in ``exclude``."""
        node = self._node(prefix)
        if node is None:
            return set()
        return {key for key, child in node.items() if key != _END and self._labels_below(child) - exclude}

    def completed(self, prefix: Sequence[int]) -> int | None:
        """The label ``prefix`` spells, or ``None``."""
        node = self._node(prefix)
        return node.get(_END) if node is not None else None


def split_generated(ids: Sequence[int], separator: int, eos: int) -> list[list[int]]:
    """Generated ids cut at the separator, up to the first end-of-sequence token."""
    segments: list[list[int]] = [[]]
    for token in ids:
        if token == eos:
            break
        if token == separator:
            segments.append([])
        else:
            segments[-1].append(int(token))
    return segments


def parse_label_sets(generated: Tensor, trie: LabelTrie, separator_token_id: int, eos_token_id: int) -> list[list[int]]:
    """The label indices each row of generated ids ``(B, T)`` (the new tokens only) spells, in order, without
    repeats; segments that are no label are skipped."""
    results = []
    for row in generated.tolist():
        labels: list[int] = []
        for segment in split_generated(row, separator_token_id, eos_token_id):
            label = trie.completed(segment) if segment else None
            if label is not None and label not in labels:
                labels.append(label)
        results.append(labels)
    return results


class TrieConstrainedLogitsProcessor(LogitsProcessor):
    """Only class names, the separator and end-of-sequence may be generated (see the module docstring).

    Args:
        label_token_ids: each class name's token ids, as the model generates them (e.g. after a space).
        separator_token_id: the token between two class names (``","``).
        eos_token_id: the token that ends the set.
        prompt_length: where generation starts in ``input_ids`` (the padded prompt's length).
    """

    def __init__(
        self, label_token_ids: Sequence[Sequence[int]], separator_token_id: int, eos_token_id: int, prompt_length: int
    ) -> None:
        self.trie = LabelTrie(label_token_ids)
        self.separator, self.eos, self.prompt_length = int(separator_token_id), int(eos_token_id), int(prompt_length)
        if self.separator in self.trie.root or self.eos in self.trie.root:
            raise ValueError("the separator and end-of-sequence tokens must not start a class name.")

    def allowed(self, generated: Sequence[int]) -> set[int]:
        """The tokens that may follow ``generated`` (the new tokens so far)."""
        segments = split_generated(generated, self.separator, self.eos)
        if self.eos in generated:
            return {self.eos}  # finished: keep padding with end-of-sequence
        done = {label for segment in segments[:-1] if (label := self.trie.completed(segment)) is not None}
        partial = segments[-1]
        tokens = self.trie.continuations(partial, done)
        label = self.trie.completed(partial) if partial else None
        if label is not None and label not in done:
            tokens.add(self.eos)
            if set(range(len(self.trie.sequences))) - done - {label}:
                tokens.add(self.separator)
        return tokens or {self.eos}

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        mask = torch.full_like(scores, float("-inf"))
        for row, ids in enumerate(input_ids[:, self.prompt_length :].tolist()):
            mask[row, sorted(self.allowed(ids))] = 0.0
        return scores + mask
