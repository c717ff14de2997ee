"""A batch of per-graph episodes and the transitions PPO trains on (RELIEF's rollout buffer, official
``graph_level/base.py`` and ``reward.py``).

Graph ``g`` of a batch has one episode of ``n_g`` steps (one per node); the batch is stepped in lock-step for
``max n_g`` steps and graphs whose episode ended keep their prompt. :class:`EpisodeBatch` holds the lock-step
record; :meth:`EpisodeBatch.transitions` keeps each graph's first ``n_g`` steps and computes:

* rewards: the decrease of the graph's task loss, ``ℓ_t − ℓ_{t+1}`` (``ℓ_0``: the unprompted graph), each
  normalised by the running normaliser in graph-then-step order (a fresh normaliser is first warmed with
  every reward of the batch, as the official ``compute_adv_ret`` does);
* next states: the following step's state, the last state repeated at the end; ``done`` is 1 at a graph's
  last step;
* advantages and returns by GAE per episode, with the critic's values of the states and next states.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_prompts.rl.gae import generalized_advantages
from lightning_prompts.rl.running_stats import RewardNormalizer


@dataclass
class Transitions:
    """Flat transitions of a batch of episodes, graph-major (graph 0's steps, then graph 1's, …)."""

    states: Tensor  # (M, max_nodes, d)
    padding: Tensor  # (M, max_nodes): true where the transition's graph has no node
    nodes: Tensor  # (M,) the discrete actions
    increments: Tensor  # (M, d') the continuous actions
    logprob_nodes: Tensor  # (M,)
    logprob_increments: Tensor  # (M,)
    advantages: Tensor  # (M,)
    returns: Tensor  # (M,)
    rewards: Tensor  # (M,) normalised

    def __len__(self) -> int:
        return int(self.nodes.shape[0])


@dataclass
class EpisodeBatch:
    """Lock-step record of ``G`` episodes of at most ``T`` steps (see the module docstring)."""

    nodes_per_graph: Tensor  # (G,)
    padding: Tensor  # (G, max_nodes)
    states: Tensor  # (G, T, max_nodes, d)
    nodes: Tensor  # (G, T)
    increments: Tensor  # (G, T, d')
    logprob_nodes: Tensor  # (G, T)
    logprob_increments: Tensor  # (G, T)
    losses: Tensor  # (G, T + 1): ℓ_0 … ℓ_T

    def transitions(
        self,
        critic: nn.Module,
        normalizer: RewardNormalizer,
        gamma: float = 0.99,
        lam: float = 0.95,
        reward_clip: float | None = None,
    ) -> Transitions:
        """Valid steps with normalised rewards, advantages and returns; ``reward_clip`` bounds each loss decrease
        to ``±reward_clip`` before normalisation (RELIEF's node-level code: 0.1)."""
        counts = self.nodes_per_graph.tolist()
        steps = self.states.shape[1]
        valid = torch.arange(steps, device=self.states.device) < self.nodes_per_graph.unsqueeze(-1)  # (G, T)
        states = self.states[valid]
        next_states = torch.cat([torch.cat([s[1:n], s[n - 1 : n]]) for s, n in zip(self.states, counts)])
        dones = torch.cat([torch.arange(n, device=states.device) == n - 1 for n in counts]).to(states.dtype)
        raw = [(self.losses[g, :n] - self.losses[g, 1 : n + 1]).double().cpu().numpy() for g, n in enumerate(counts)]
        if reward_clip is not None:
            raw = [episode.clip(-reward_clip, reward_clip) for episode in raw]
        if normalizer.stats.count == 0:
            normalizer.warm_up([r for episode in raw for r in episode])
        rewards = torch.tensor(
            [float(normalizer(r)) for episode in raw for r in episode], dtype=states.dtype, device=states.device
        )
        with torch.no_grad():
            values, next_values = critic(states), critic(next_states)
        advantages, returns = [], []
        for part in zip(*(t.split(counts) for t in (rewards, values, next_values, dones))):
            adv, ret = generalized_advantages(*part, gamma=gamma, lam=lam)
            advantages.append(adv)
            returns.append(ret)
        padding = self.padding.unsqueeze(1).expand(-1, steps, -1)[valid]
        return Transitions(
            states=states,
            padding=padding,
            nodes=self.nodes[valid],
            increments=self.increments[valid],
            logprob_nodes=self.logprob_nodes[valid],
            logprob_increments=self.logprob_increments[valid],
            advantages=torch.cat(advantages),
            returns=torch.cat(returns),
            rewards=rewards,
        )
