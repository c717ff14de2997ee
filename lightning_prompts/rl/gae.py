"""Generalised advantage estimation of one episode (Schulman et al., 2016), as RELIEF computes it."""

from __future__ import annotations

import torch
from torch import Tensor


def generalized_advantages(
    rewards: Tensor, values: Tensor, next_values: Tensor, dones: Tensor, gamma: float = 0.99, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Advantages and returns ``(T,)`` of an episode of ``T`` steps.

    ``δ_t = r_t + γ (1 − d_t) V(s_{t+1}) − V(s_t)`` and ``A_t = δ_t + γ λ (1 − d_t) A_{t+1}`` from the last
    step back; the return is ``A_t + V(s_t)``. ``next_values`` are the critic's values of the next states
    (RELIEF repeats the last state as its own successor; ``d`` = 1 there stops the bootstrap).
    """
    deltas = rewards + gamma * (1.0 - dones) * next_values - values
    advantages = torch.zeros_like(deltas)
    running = deltas.new_zeros(())
    for step in range(deltas.shape[0] - 1, -1, -1):
        running = deltas[step] + gamma * lam * (1.0 - dones[step]) * running
        advantages[step] = running
    return advantages, advantages + values
