"""RELIEF's prompt-insertion policy: an ensemble of hybrid actors that add feature increments to chosen nodes
(Zhu et al., "RELIEF: Reinforcement Learning Empowered Graph Feature Prompt Tuning"; official code
JasonZhujp/RELIEF, ``graph_level/agent.py``).

A prompt is built by an episode per graph with one step per node: the state is the frozen GNN's node
embeddings of the graph as prompted so far, zero-padded to ``max_nodes``; a discrete actor picks a node,
a continuous actor picks the increment added to that node's input features. Each ensemble member has its
own pair of actors; one critic ``V(s)`` is shared. The *joint* policy that prompts graphs for the head
and for evaluation samples the node from the members' element-wise maximum probability (L1-normalised
after adding ``1e-10``, so padding keeps a ``1e-10`` chance, which the official code skips when drawn:
:meth:`InsertionPolicy.joint_action` returns the draw, the caller skips nodes beyond a graph) and adds the
mean of the members' mean increments.

:class:`NodeIncrements` is the prompt of one forward pass as a block hook: the per-node increments added to
the features entering the GNN's first layer (for :class:`~lightning_prompts.backbones.molecule_gin.MoleculeGIN`
the atom embeddings, where RELIEF adds them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Categorical

from lightning_prompts.backbones.hooks import BlockContext, BlockHook
from lightning_prompts.rl.ppo import ContinuousIncrementActor, DiscreteNodeActor, StateCritic


class NodeIncrements(BlockHook):
    """Adds ``increments`` ``(N, d)`` to the node features entering layer 0."""

    def __init__(self, increments: Tensor) -> None:
        self.increments = increments

    def before_block(self, context: BlockContext, tokens: Tensor) -> Tensor:
        return tokens + self.increments.to(tokens.dtype) if context.index == 0 else tokens


class InsertionPolicy(nn.Module):
    """``ensemble_size`` discrete/continuous actor pairs and one critic (see the module docstring).

    Args:
        state_width: width of the GNN's node embeddings (the state).
        prompt_width: width of the features the increments are added to.
        max_nodes: the largest graph the policy can prompt (the critic reads ``max_nodes × state_width``).
        ensemble_size: members (RELIEF: 3; 1 is plain H-PPO).
        max_increment: the bound ``max_z`` of the mean increment per step.
        init_log_std: the continuous actors' initial log-std (annealed by the method, not learned).
        clamp_increments: clamp each sampled increment to ``±max_increment`` before its log-probability is taken
            (RELIEF's node-level code does; its graph-level code does not).
    """

    def __init__(
        self,
        state_width: int,
        prompt_width: int,
        max_nodes: int,
        ensemble_size: int = 3,
        max_increment: float = 1.0,
        init_log_std: float = 0.0,
        clamp_increments: bool = False,
    ) -> None:
        super().__init__()
        self.clamp_increments, self.max_increment = clamp_increments, max_increment
        if ensemble_size < 1:
            raise ValueError(f"ensemble_size must be >= 1, got {ensemble_size}.")
        if max_nodes < 1:
            raise ValueError(f"max_nodes must be >= 1, got {max_nodes}.")
        self.max_nodes = max_nodes
        # the official construction order: every discrete actor, every continuous actor, then the critic
        self.discrete = nn.ModuleList(DiscreteNodeActor(state_width) for _ in range(ensemble_size))
        self.continuous = nn.ModuleList(
            ContinuousIncrementActor(state_width, max_increment, init_log_std, out_width=prompt_width)
            for _ in range(ensemble_size)
        )
        self.critic = StateCritic(state_width, max_nodes)

    @property
    def ensemble_size(self) -> int:
        return len(self.discrete)

    def set_log_std(self, value: float) -> None:
        for actor in self.continuous:
            actor.log_std.fill_(value)

    def member_parameters(self, member: int) -> list[nn.Parameter]:
        """What member ``member``'s PPO update trains: its two actors and the shared critic."""
        return [*self.discrete[member].parameters(), *self.continuous[member].parameters(), *self.critic.parameters()]

    # -- states ----------------------------------------------------------------------------------------
    def padding(self, nodes_per_graph: Tensor) -> Tensor:
        """``(G, max_nodes)``: true where a graph has no node."""
        return torch.arange(self.max_nodes, device=nodes_per_graph.device) >= nodes_per_graph.unsqueeze(-1)

    def states(self, node_embeddings: Tensor, batch: Tensor, nodes_per_graph: Tensor) -> Tensor:
        """Node embeddings ``(N, d)`` of a batch of graphs as zero-padded states ``(G, max_nodes, d)``."""
        if int(nodes_per_graph.max()) > self.max_nodes:
            raise ValueError(
                f"a graph has {int(nodes_per_graph.max())} nodes but the policy was built for at most "
                f"{self.max_nodes}; set max_nodes to the largest graph of the data (train, val and test)."
            )
        starts = torch.cumsum(nodes_per_graph, 0) - nodes_per_graph
        positions = torch.arange(batch.shape[0], device=batch.device) - starts[batch]
        padded = node_embeddings.new_zeros(nodes_per_graph.shape[0], self.max_nodes, node_embeddings.shape[-1])
        padded[batch, positions] = node_embeddings
        return padded

    # -- acting ----------------------------------------------------------------------------------------
    def member_action(self, member: int, states: Tensor, padding: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Member ``member``'s sampled node, increment and their log-probabilities, drawn as the official
        ``train_prompt`` draws them (node first, then the increment, from the global generator)."""
        node_dist = self.discrete[member].distribution(states, padding)
        nodes = node_dist.sample()
        increment_dist = self.continuous[member].distribution(states, nodes)
        increments = increment_dist.sample()
        if self.clamp_increments:
            increments = increments.clamp(-self.max_increment, self.max_increment)
        return nodes, increments, node_dist.log_prob(nodes), increment_dist.log_prob(increments).sum(dim=-1)

    def joint_action(
        self, states: Tensor, padding: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """The ensemble's node (sampled from the normalised element-wise maximum) and mean increment.

        ``generator`` ``None`` draws from the global generator as the official ``eval_prompt`` does; a
        generator makes evaluation reproducible without touching the training stream.
        """
        probs = torch.stack([actor(states, padding) for actor in self.discrete], dim=1).max(dim=1).values
        node_dist = Categorical(F.normalize(probs.float() + 1e-10, p=1, dim=-1))
        if generator is None:
            nodes = node_dist.sample()
        else:
            nodes = torch.multinomial(node_dist.probs, 1, True, generator=generator).squeeze(-1)
        increments = torch.stack([actor(states, nodes) for actor in self.continuous], dim=1).mean(dim=1)
        return nodes, increments
