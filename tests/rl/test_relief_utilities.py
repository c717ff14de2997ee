"""RELIEF's RL pieces (JasonZhujp/RELIEF, graph_level/reward.py and agent.py) against hand computations and
transcriptions of the official code."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.distributions import Normal

from lightning_prompts.rl.gae import generalized_advantages
from lightning_prompts.rl.ppo import (
    ContinuousIncrementActor,
    DiscreteNodeActor,
    StateCritic,
    annealed_log_std,
    approx_kl,
    clipped_surrogate_loss,
    continuous_ensemble_penalty,
    discrete_ensemble_penalty,
)
from lightning_prompts.rl.running_stats import RewardNormalizer


class OfficialRunningMeanStd:  # reward.py, transcribed
    def __init__(self, shape):
        self.n, self.mean, self.S = 0, np.zeros(shape), np.zeros(shape)
        self.std = np.sqrt(self.S)

    def update(self, x):
        x = np.array(x)
        self.n += 1
        if self.n == 1:
            self.mean = x
            self.std = x
        else:
            old_mean = self.mean.copy()
            self.mean = old_mean + (x - old_mean) / self.n
            self.S = self.S + (x - old_mean) * (x - self.mean)
            self.std = np.sqrt(self.S / self.n)


def test_reward_normalisation_equals_the_official_including_its_first_step():
    rewards = [0.3, -0.1, 0.05, 0.2, -0.4]
    official = OfficialRunningMeanStd(1)
    ours = RewardNormalizer(1)
    for reward in rewards:
        official.update(reward)
        expected = (reward - official.mean) / (official.std + 1e-8)
        assert np.allclose(ours(reward), expected)
    assert np.isclose(RewardNormalizer(1)(0.7), 0.0)  # first step: std is the value itself, so 0
    warmed, official = RewardNormalizer(1), OfficialRunningMeanStd(1)
    warmed.warm_up(rewards)
    for reward in rewards:
        official.update(reward)
    official.update(0.1)
    assert np.allclose(warmed(0.1), (0.1 - official.mean) / (official.std + 1e-8))


def test_gae_on_a_fixed_trajectory_by_hand():
    rewards = torch.tensor([1.0, 0.0, 2.0])
    values = torch.tensor([0.5, 0.4, 0.3])
    next_values = torch.tensor([0.4, 0.3, 0.3])  # the last state is its own successor
    dones = torch.tensor([0.0, 0.0, 1.0])
    gamma, lam = 0.9, 0.8
    d2 = 2.0 - 0.3  # done: no bootstrap
    d1 = 0.0 + 0.9 * 0.3 - 0.4
    d0 = 1.0 + 0.9 * 0.4 - 0.5
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    advantages, returns = generalized_advantages(rewards, values, next_values, dones, gamma, lam)
    torch.testing.assert_close(advantages, torch.tensor([a0, a1, a2]))
    torch.testing.assert_close(returns, torch.tensor([a0 + 0.5, a1 + 0.4, a2 + 0.3]))


def test_clipped_surrogate_and_approximate_kl_by_hand():
    new = torch.log(torch.tensor([1.5, 0.5, 1.1, 0.7]))
    old = torch.zeros(4)
    advantages = torch.tensor([1.0, 1.0, -2.0, -1.0])
    # ratios 1.5, 0.5, 1.1, 0.7 with ε = 0.2: min(ρA, clip(ρ)A) = 1.2, 0.5, -2.2, -0.8
    torch.testing.assert_close(clipped_surrogate_loss(new, old, advantages, 0.2), -torch.tensor([1.2, 0.5, -2.2, -0.8]))
    ratios = torch.tensor([1.5, 0.5, 1.1, 0.7])
    torch.testing.assert_close(approx_kl(new, old), ((ratios - 1) - ratios.log()).mean())


def test_the_actors_distributions_and_initialisation():
    torch.manual_seed(0)
    states = torch.randn(2, 5, 8)
    padding = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 0, 0, 0]])
    actor = DiscreteNodeActor(8)
    probs = actor(states, padding)
    assert torch.allclose(probs.sum(-1), torch.ones(2)) and torch.all(probs[0, 3:] == 0)
    assert float(actor.scores[4].weight.detach().norm()) < 0.05  # the last layer's orthogonal gain 0.01
    continuous = ContinuousIncrementActor(8, max_action=0.5, init_log_std=0.0)
    nodes = torch.tensor([2, 4])
    mean = continuous(states, nodes)
    torch.testing.assert_close(mean, torch.tanh(continuous.mean_net(states)[torch.arange(2), nodes]) * 0.5)
    action = torch.randn(2, 8)
    log_prob = continuous.distribution(states, nodes).log_prob(action).sum(-1)
    by_hand = (-0.5 * (action - mean) ** 2 - 0.5 * math.log(2 * math.pi)).sum(-1)  # std 1
    torch.testing.assert_close(log_prob, by_hand)
    assert annealed_log_std(1, 50) == 0.0 and annealed_log_std(51, 50) == -5.0 and annealed_log_std(26, 50) == -2.5
    assert not any(p.requires_grad for p in continuous.buffers())  # the log-std is scheduled, not learned
    assert StateCritic(8, 5)(states).shape == (2,)


def test_ensemble_penalties_equal_the_official_formulas():
    torch.manual_seed(1)
    pis = [torch.softmax(torch.randn(3, 4), -1) for _ in range(3)]
    member = pis[1].clone().requires_grad_(True)
    penalty, argmax = discrete_ensemble_penalty(member, pis)
    # agent.py _ensemble_penalty_d, transcribed
    ens_max = torch.stack(pis, dim=1).max(dim=1)[0]
    ens_pi = F.normalize(F.normalize(ens_max, p=1, dim=-1) + 1e-10, p=1, dim=-1)
    cur_pi = F.normalize(pis[1] + 1e-10, p=1, dim=-1)
    expected = F.kl_div(torch.log(cur_pi), ens_pi, log_target=False, reduction="none").sum(dim=-1)
    torch.testing.assert_close(penalty.detach(), expected)
    assert torch.equal(argmax, ens_max.argmax(-1)) and penalty.sum().requires_grad
    means = [torch.randn(3, 4) for _ in range(3)]
    stds = [torch.rand(3, 4) + 0.5 for _ in range(3)]
    dists = [Normal(m, s) for m, s in zip(means, stds, strict=True)]
    ours = continuous_ensemble_penalty(dists[0], dists)
    ensemble = Normal(torch.stack(means, 1).mean(1), torch.stack(stds, 1).mean(1))
    torch.testing.assert_close(ours, torch.distributions.kl.kl_divergence(dists[0], ensemble).sum(-1))
