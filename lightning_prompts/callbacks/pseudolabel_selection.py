"""How GRIP, FPL and IFPL choose pseudolabels and weigh them (Menghini et al., NeurIPS 2023).

Pure functions, pinned in the tests to a re-computation of the official code
(BatsResearch/menghini-enhanceCLIPwithCLIP-code, ``compute_pseudo_labels`` and the training strategies):

* :func:`leaderboard_top_k`: the official *streaming* per-class leaderboard, class-balanced top-K by
  confidence rather than a threshold;
* :func:`pseudolabels_per_class`: K of each round (FPL and IFPL fixed, GRIP growing to all unlabelled data);
* :func:`pseudolabel_loss`: ``γ · CE(labelled) + CE(pseudolabelled)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_prompts.utils.distributed import global_batch_mean

Strategy = Literal["fpl", "ifpl", "grip"]


def leaderboard_top_k(probabilities: Tensor, k: int) -> tuple[list[int], list[int]]:
    """Class-balanced pseudolabels: at most ``k`` images per class, by the official streaming leaderboard.

    ``probabilities`` ``(N, C)`` are read in dataset order. Each image goes to its predicted class's board
    while that board has room, or if it beats the board's last entry (the board is then re-sorted and cut
    to ``k``); an image that does neither is offered to every other class in order of its probability and
    joins each board where it has room or beats the last entry. So an image can hold several classes'
    pseudolabels, and "last entry" is the last *appended* one until a board is first re-sorted: both as in
    the official code, which this reproduces. Ties sort by position instead of file path (the official
    tuples are ``(score, path)``).

    Returns:
        ``(indices, labels)``: positions in the input and their pseudolabels, class by class.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    rows = probabilities.detach().float().cpu().tolist()
    boards: list[list[tuple[float, int]]] = [[] for _ in range(probabilities.shape[1])]

    def offer(label: int, score: float, index: int) -> bool:
        board = boards[label]
        if len(board) < k:
            board.append((score, index))
            return True
        if board[-1][0] < score:
            boards[label] = sorted([*board, (score, index)], reverse=True)[:k]
            return True
        return False

    for index, row in enumerate(rows):
        predicted = max(range(len(row)), key=row.__getitem__)  # first maximum, as torch.argmax
        if offer(predicted, row[predicted], index):
            continue
        others = sorted(((row[label], label) for label in range(len(row)) if label != predicted), reverse=True)
        for score, label in others:
            offer(label, score, index)
    indices = [index for board in boards for _, index in board]
    labels = [label for label, board in enumerate(boards) for _ in board]
    return indices, labels


def pseudolabels_per_class(
    strategy: Strategy, round_index: int, num_unlabelled: int, num_classes: int, rounds: int = 10, k: int = 16
) -> int:
    """K of round ``round_index`` (0-based).

    FPL and IFPL use ``k`` (16) every round. GRIP starts from ``int(int(|U| / rounds) / C)`` and grows by
    the same share each round, ``int((r + 1) · int(|U| / rounds) / C)``, capped at ``floor(|U| / C)``, so
    the last round pseudolabels all unlabelled data (the official ``STEP_QUANTILE`` of 10 % gives 10 rounds).
    K is at least 1: with fewer than ``rounds · C`` unlabelled images the official code's first K is 0 and
    its leaderboard fails on an empty board.
    """
    if strategy in ("fpl", "ifpl"):
        return k
    if strategy != "grip":
        raise ValueError(f"strategy must be 'fpl', 'ifpl' or 'grip', got {strategy!r}.")
    step = num_unlabelled // rounds
    wanted = int((round_index + 1) * step / num_classes)
    k = wanted if wanted * num_classes <= num_unlabelled else num_unlabelled // num_classes
    return max(1, k)


def pseudolabel_loss(logits: Tensor, targets: Tensor, pseudo_labelled: Tensor, gamma: float) -> Tensor:
    """``γ · CE(labelled part) + CE(pseudolabelled part)``: each part is the mean cross-entropy over the
    batch's samples of that kind, and a part absent from the batch adds 0 (the official loss). Under DDP each part
    is the mean over the global batch's samples of that kind
    (:func:`~lightning_prompts.utils.distributed.global_batch_mean`)."""
    pseudo = pseudo_labelled.to(device=logits.device, dtype=torch.bool)
    losses = F.cross_entropy(logits.float(), targets, reduction="none")
    labelled_part = global_batch_mean(losses[~pseudo].sum(), (~pseudo).sum())
    return gamma * labelled_part + global_batch_mean(losses[pseudo].sum(), pseudo.sum())


def balance_weight(strategy: Strategy, num_labelled: int, num_pseudo: int) -> float:
    """γ as the official code sets it: ``|pseudolabelled| / |labelled|`` for FPL, ``|labelled| /
    |pseudolabelled|`` in the rounds of IFPL and GRIP (the paper writes the latter for all three); 0
    without labelled images (then the labelled part never occurs)."""
    if num_labelled == 0 or num_pseudo == 0:
        return 0.0
    return num_pseudo / num_labelled if strategy == "fpl" else num_labelled / num_pseudo


def restrict_to_classes(logits: Tensor, classes: Sequence[int]) -> Tensor:
    """Softmax probabilities over ``classes`` only (TRZSL pseudolabels range over the unseen classes)."""
    return logits[:, list(classes)].float().softmax(dim=-1)
