"""RELIEF's hybrid PPO: a discrete actor choosing a node, a continuous actor choosing the feature increment,
one critic, clipped surrogates and the ensemble's KL penalties (official ``agent.py``).

* :class:`DiscreteNodeActor`: per-node scores ``d → d/2 → d/4 → 1`` with tanh, orthogonal initialisation
  (gain √2, the last layer 0.01), a softmax over the graph's real nodes (padding masked to −inf);
* :class:`ContinuousIncrementActor`: the chosen node's ``tanh(MLP(h)) · max_action`` (``d → d/2 → d/2 → d'``;
  ``d'`` = ``d`` in RELIEF, where the prompt and the state are both 300-wide atom embeddings) is
  the mean of a Gaussian whose log-std is *not* learned but annealed per epoch from ``init_log_std`` to −5
  (:func:`annealed_log_std`);
* :class:`StateCritic`: ``V(s)`` of the flattened, zero-padded node states (widths 5 % and 2.5 % of the
  input, ReLU, Xavier-normal initialisation with ReLU gain);
* :func:`clipped_surrogate_loss`: ``−min(ρ A, clip(ρ, 1 ± ε) A)`` per transition; :func:`approx_kl`:
  ``mean((ρ − 1) − log ρ)``, the early-stopping statistic;
* :func:`discrete_ensemble_penalty` / :func:`continuous_ensemble_penalty`: KL from the trained member to the
  ensemble (the normalised element-wise max of the members' node probabilities; the mean of their Gaussians,
  evaluated at the ensemble's argmax node).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Categorical, Normal


def _orthogonal(layer: nn.Linear, gain: float = math.sqrt(2)) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, gain=gain)
    nn.init.constant_(layer.bias, 0.0)
    return layer


class DiscreteNodeActor(nn.Module):
    """Which node to prompt (see the module docstring)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        half, quarter = int(width * 0.5), int(width * 0.25)
        self.scores = nn.Sequential(
            _orthogonal(nn.Linear(width, half)), nn.Tanh(),
            _orthogonal(nn.Linear(half, quarter)), nn.Tanh(),
            _orthogonal(nn.Linear(quarter, 1), gain=0.01),
        )  # fmt: skip

    def forward(self, states: Tensor, padding: Tensor) -> Tensor:
        """Node probabilities ``(B, N)`` of states ``(B, N, d)``; ``padding`` ``(B, N)`` is true for padding."""
        # in fp32: bf16 probabilities made the ensemble's KL penalty negative and PPO's approx-KL noise exceed its
        # early-stop target under bf16 autocast
        logits = self.scores(states).squeeze(-1).float().masked_fill(padding.bool(), float("-inf"))
        return logits.softmax(dim=-1)

    def distribution(self, states: Tensor, padding: Tensor) -> Categorical:
        return Categorical(self(states, padding))


def annealed_log_std(epoch: int, total_epochs: int, init_log_std: float = 0.0, final: float = -5.0) -> float:
    """The continuous actor's log-std in (1-based) ``epoch``: linear from ``init_log_std`` towards ``final``."""
    return init_log_std + (final - init_log_std) * (epoch - 1) / total_epochs


class ContinuousIncrementActor(nn.Module):
    """What to add to the chosen node's features (see the module docstring)."""

    def __init__(self, width: int, max_action: float, init_log_std: float = 0.0, out_width: int | None = None) -> None:
        super().__init__()
        half, out_width = int(width * 0.5), out_width or width
        self.mean_net = nn.Sequential(
            _orthogonal(nn.Linear(width, half)), nn.Tanh(),
            _orthogonal(nn.Linear(half, half)), nn.Tanh(),
            _orthogonal(nn.Linear(half, out_width), gain=0.01),
        )  # fmt: skip
        self.max_action = max_action
        self.register_buffer("log_std", torch.full((out_width,), float(init_log_std)))

    def forward(self, states: Tensor, nodes: Tensor) -> Tensor:
        """The mean increment ``(B, d)`` for node ``nodes[b]`` of each state ``(B, N, d)``."""
        out = self.mean_net(states)
        chosen = out.gather(1, nodes.view(-1, 1, 1).expand(-1, 1, out.shape[-1])).squeeze(1)
        return torch.tanh(chosen) * self.max_action

    def distribution(self, states: Tensor, nodes: Tensor) -> Normal:
        mean = self(states, nodes)
        return Normal(mean, self.log_std.exp().expand_as(mean))


class StateCritic(nn.Module):
    """``V(s)`` of flattened node states ``(B, N_max, d)`` (see the module docstring)."""

    def __init__(self, width: int, max_nodes: int) -> None:
        super().__init__()
        size = width * max_nodes
        layers = [nn.Linear(size, int(size * 0.05)), nn.Linear(int(size * 0.05), int(size * 0.025))]
        layers.append(nn.Linear(int(size * 0.025), 1))
        for layer in layers:
            nn.init.xavier_normal_(layer.weight, gain=nn.init.calculate_gain("relu"))
            nn.init.constant_(layer.bias, 0.0)
        self.value = nn.Sequential(nn.Flatten(), layers[0], nn.ReLU(), layers[1], nn.ReLU(), layers[2])

    def forward(self, states: Tensor) -> Tensor:
        return self.value(states).squeeze(-1)


def clipped_surrogate_loss(logprob_new: Tensor, logprob_old: Tensor, advantages: Tensor, clip: float = 0.2) -> Tensor:
    """``−min(ρ A, clip(ρ, 1 − ε, 1 + ε) A)`` per transition, ``ρ = exp(log π_new − log π_old)``."""
    ratio = (logprob_new - logprob_old).exp()
    return -torch.min(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)


def approx_kl(logprob_new: Tensor, logprob_old: Tensor) -> Tensor:
    """``mean((ρ − 1) − log ρ)``: the KL estimate PPO stops its update passes on."""
    log_ratio = logprob_new - logprob_old
    return (log_ratio.exp() - 1 - log_ratio).mean()


def discrete_ensemble_penalty(member: Tensor, others: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """``KL(ensemble ‖ member)`` per state, and the ensemble's argmax node.

    ``member`` ``(B, N)`` holds the trained member's probabilities (with gradient), ``others`` every member's
    including it (no gradient needed); the ensemble is the element-wise max, L1-normalised; both sides get
    ``1e-10`` before normalising, as the official code does.
    """
    with torch.no_grad():
        ens_max = torch.stack(list(others), dim=1).max(dim=1).values
        ensemble = F.normalize(F.normalize(ens_max, p=1, dim=-1) + 1e-10, p=1, dim=-1)
    current = F.normalize(member + 1e-10, p=1, dim=-1)
    penalty = F.kl_div(current.log(), ensemble, reduction="none").sum(dim=-1)
    return penalty, ens_max.argmax(dim=-1)


def continuous_ensemble_penalty(member: Normal, others: Sequence[Normal]) -> Tensor:
    """``KL(member ‖ N(mean of means, mean of stds))`` summed over feature dimensions."""
    with torch.no_grad():
        mean = torch.stack([d.mean for d in others], dim=1).mean(dim=1)
        std = torch.stack([d.stddev for d in others], dim=1).mean(dim=1)
    return torch.distributions.kl.kl_divergence(member, Normal(mean, std)).sum(dim=-1)
