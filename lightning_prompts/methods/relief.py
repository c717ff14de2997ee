"""RELIEF: feature-prompt insertion as reinforcement learning (Zhu, Zhou, Zhang, Jiang, Cheng, Zhong —
"RELIEF: Reinforcement Learning Empowered Graph Feature Prompt Tuning"; official code JasonZhujp/RELIEF,
also ported in ProG).

Instead of adding one learned vector to every node (GPF), RELIEF learns *where* to add *what*: a policy
(:class:`~lightning_prompts.prompts.insertion_policy.InsertionPolicy`) walks each graph for as many steps
as it has nodes, each step choosing a node (discrete action) and an increment for its features (continuous
action); the reward is the decrease of the graph's task loss under the current head. The GNN stays frozen;
the policy and a small head train in alternation, one RELIEF epoch per Lightning epoch:

1. **policy phase**, for each ensemble member in turn: the member's share of the training graphs (an equal
   part plus the last 20 % of every other part, the official overlap), shuffled, in groups of
   ``episodes_per_update`` graphs: roll out the member's stochastic policy on the group
   (:class:`~lightning_prompts.rl.episodes.EpisodeBatch`), normalise the rewards (a running normaliser
   fresh each epoch and shared by the members), GAE, then a hybrid-PPO update of that member's actors and
   the shared critic when the group gave more than ``ppo_minibatch_size`` transitions: up to ``ppo_epochs``
   passes over shuffled minibatches, loss = clipped surrogates of both actors − entropy bonus (discrete) +
   the ensemble KL penalties + ``critic_coef`` · MSE(return, V), gradients clipped to ``max_grad_norm``,
   Adam (ε 1e-5) per member, early stop when a pass's mean approximate KL passes its target;
2. **head phase**, ``head_epochs`` passes over the training graphs in groups of ``head_batch_size``: the
   joint policy prompts the graphs (no gradient), the head takes one optimizer step on the task loss.

Per epoch ``e`` of ``E``: the continuous actors' log-std is ``init_log_std + (−5 − init_log_std)(e − 1)/E``,
the entropy coefficient is ``entropy_coef · (1 − (e − 1)/E)``, and with ``*_lr_decay: down`` the policy's
(head's) learning rates are scaled by the same factor. Evaluation prompts every graph with the joint policy
(node sampled, mean increment).

Faithful to the official code (pinned in ``tests/methods/test_relief.py`` against a transcription of its
``train_policy``) with these decisions:

* **One training batch is one RELIEF epoch's pool of graphs.** The official epoch runs over the whole few-shot
  training set; set the data module's ``batch_size`` to at least the number of training graphs to get exactly
  that (the recipes do; a smaller batch runs the same schedule on each batch). The ensemble's subsets are
  drawn from the pool in the order the loader shuffled it, so they change between epochs (the official code
  fixes them once per run); how many graphs each member sees is the same. The official overlap quirk is kept:
  when ``int(0.2 · part)`` is 0, ``part[-0:]`` adds the *whole* other part.
* **The reward of a multi-task molecule** is the official one: the binary cross-entropy summed over *all* tasks
  (a missing label counts as target 0.5) divided by the number of labelled tasks; a graph without labels
  divides by 1 instead of 0. The head's loss masks missing labels properly, as the official one does.
* **Evaluation is reproducible**: the joint policy's node draws at validation/test/predict come from a private
  generator seeded with ``eval_seed`` on every forward pass (the official code draws from the global
  generator, so its scores change from run to run); the head phase draws from the global generator as the
  official code does.
* **Float32** (the official scripts set float64 as the default dtype) and **the GNN in eval mode** throughout
  (the official head update runs the frozen GNN with dropout on, ``tasknet_train_mode 1``).
* One GNN pass per step: the embeddings that give a step's reward are the next step's state (the official
  code computes them twice; the values are the same).
* Single process: the policy's episodes and updates are per process, so multi-process training is refused.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lightning_prompts.backbones.gnn import GraphBackbone, Pooling
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods.base import GraphPromptModule
from lightning_prompts.methods.base.optimization import warn_on_half_precision_parameters
from lightning_prompts.outputs import PromptOutput
from lightning_prompts.prompts.insertion_policy import InsertionPolicy, NodeIncrements
from lightning_prompts.registry import register_method
from lightning_prompts.rl.episodes import EpisodeBatch, Transitions
from lightning_prompts.rl.ppo import (
    annealed_log_std,
    approx_kl,
    clipped_surrogate_loss,
    continuous_ensemble_penalty,
    discrete_ensemble_penalty,
)
from lightning_prompts.rl.running_stats import RewardNormalizer


def member_subsets(count: int, members: int, overlap: float = 0.2) -> list[Tensor]:
    """Positions of the graphs each ensemble member trains on: part ``i`` of ``members`` equal parts (the last
    takes the remainder) plus the last ``int(overlap · part)`` of every other part (official
    ``train_loaders_process``, its ``[-0:]`` quirk included: see the module docstring)."""
    if members == 1:
        return [torch.arange(count)]
    part = count // members
    parts = [torch.arange(i * part, (i + 1) * part if i < members - 1 else count) for i in range(members)]
    tail = int(part * overlap)
    return [torch.cat([parts[i], *(parts[j][-tail:] for j in range(members) if j != i)]) for i in range(members)]


@register_method(
    family="graph",
    title="RELIEF",
    paper="Zhu et al., KDD 2025 — RELIEF: Reinforcement Learning Empowered Graph Feature Prompt Tuning",
    code="JasonZhujp/RELIEF",
    overlay="relief",
    example={"max_nodes": 8, "ensemble_size": 2, "episodes_per_update": 2, "ppo_minibatch_size": 4},
)
class RELIEF(GraphPromptModule):
    """RELIEF's policy-inserted feature prompts on a frozen GNN (see the module docstring).

    Args:
        backbone: the frozen GNN (:class:`~lightning_prompts.backbones.molecule_gin.MoleculeGIN` for the paper's
            molecules, or :class:`~lightning_prompts.backbones.gnn.GNN`).
        classnames, task, pooling, head_layers, head_hidden, objective: as :class:`GraphPromptModule`
            (RELIEF's head: ``head_layers`` of 1–3, hidden width = embedding width).
        max_nodes: the critic's width (its input is ``max_nodes`` padded node states). ``None`` (the default):
            the data module's ``max_nodes`` at ``fit``, the largest graph of the run's splits (the few-shot
            training draw, validation and test), as the official ``main.py`` sets ``max_node_num``; the resolved
            width is stored in the hyperparameters, so a checkpoint rebuilds the same critic.
        ensemble_size: policy members (3; 1 disables the ensemble and its penalties).
        max_increment: ``max_z``, the bound of an increment's mean (0.1–1.0 in the official scripts).
        init_log_std: the continuous actors' initial log-std (annealed to −5).
        episodes_per_update: graphs rolled out before each PPO update (``batch_size`` 8).
        ppo_minibatch_size, ppo_epochs: PPO minibatch (128; the scripts use 64) and passes (10).
        clip_discrete, clip_continuous: surrogate clipping (0.2, 0.2).
        critic_coef, entropy_coef: 0.5 and 0.01 (the latter decays linearly per epoch).
        target_kl_discrete, target_kl_continuous: PPO early stopping (0.001, 0.1).
        max_grad_norm: gradient clipping of a member's update (0.5).
        gamma, gae_lambda: 0.99, 0.95.
        penalty_discrete, penalty_continuous: the ensemble KL penalty weights (1e5 — 1e0 in most scripts — and 0.1).
        actor_lr, critic_lr: the policy's Adam learning rates (5e-4).
        policy_lr_decay, head_lr_decay: ``"static"`` or ``"down"`` (linear per epoch).
        head_epochs: head passes per epoch (``tasknet_epochs`` 1–3).
        head_batch_size: graphs per head step (128).
        subset_overlap: the ensemble's data overlap (0.2).
        eval_seed: seed of the joint policy's node draws when evaluating.
        clamp_increments, reward_clip: the two differences of the official node-level code from its graph-level
            code: sampled increments clamped to ``±max_increment``, and each step's loss decrease clipped to
            ``±reward_clip`` (0.1) before normalisation; off by default (graph level), on in the node-level recipes.
        warmup_epochs: epochs of head-only training on the unprompted graphs (shuffled minibatches of 32) before the
            policy starts (the node-level ``--warmup_epochs``: Amazon Photo 50 or 100); ``trainer.max_epochs``
            counts them, and the annealing and learning-rate decays run over the epochs after them.
        **kwargs: ``optimizer`` (the head's; default Adam, lr 1e-3 = ``tasknet_lr``) and the other
            :class:`~lightning_prompts.methods.PromptModule` options. RELIEF decays its learning rates itself, so
            it takes no ``lr_scheduler``.
    """

    default_optimizer: ClassVar[dict[str, Any]] = {"class_path": "torch.optim.Adam", "init_args": {"lr": 1e-3}}
    accepts_loss_terms: ClassVar[bool] = False  # the prompt is not differentiable; the head's loss is fixed
    manual_steps: ClassVar[str] = "PPO updates of each policy member clipped to max_grad_norm, then the head's steps"
    data_resolved_hparams: ClassVar[frozenset[str]] = frozenset({"max_nodes"})

    def __init__(
        self,
        backbone: GraphBackbone,
        classnames: Sequence[str] | None = None,
        max_nodes: int | None = None,
        task: Literal["node", "graph"] = "graph",
        pooling: Pooling = "mean",
        head_layers: int = 1,
        head_hidden: int | None = None,
        objective: Literal["cross_entropy", "masked_bce"] = "cross_entropy",
        ensemble_size: int = 3,
        max_increment: float = 1.0,
        init_log_std: float = 0.0,
        episodes_per_update: int = 8,
        ppo_minibatch_size: int = 128,
        ppo_epochs: int = 10,
        clip_discrete: float = 0.2,
        clip_continuous: float = 0.2,
        critic_coef: float = 0.5,
        entropy_coef: float = 0.01,
        target_kl_discrete: float | None = 0.001,
        target_kl_continuous: float | None = 0.1,
        max_grad_norm: float = 0.5,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        penalty_discrete: float = 1e5,
        penalty_continuous: float = 0.1,
        actor_lr: float = 5e-4,
        critic_lr: float = 5e-4,
        policy_lr_decay: Literal["static", "down"] = "static",
        head_lr_decay: Literal["static", "down"] = "static",
        head_epochs: int = 1,
        head_batch_size: int = 128,
        subset_overlap: float = 0.2,
        eval_seed: int = 0,
        clamp_increments: bool = False,
        reward_clip: float | None = None,
        warmup_epochs: int = 0,
        **kwargs: Any,
    ) -> None:
        for name, value in (("policy_lr_decay", policy_lr_decay), ("head_lr_decay", head_lr_decay)):
            if value not in ("static", "down"):
                raise ValueError(f"{name} must be 'static' or 'down', got {value!r}.")
        for name, value in (("episodes_per_update", episodes_per_update), ("ppo_minibatch_size", ppo_minibatch_size),
                            ("ppo_epochs", ppo_epochs), ("head_epochs", head_epochs),
                            ("head_batch_size", head_batch_size)):  # fmt: skip
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}.")
        if kwargs.get("lr_scheduler") is not None:
            raise ConfigurationError(
                "RELIEF decays its learning rates itself (policy_lr_decay, head_lr_decay); remove lr_scheduler."
            )
        if task != "graph":
            raise ConfigurationError(
                "RELIEF prompts graphs episode by episode: classify nodes through their k-hop ego-graphs "
                "(GraphDataModule(task='node', ego_hops=k)) with task='graph', as the official node-level code does."
            )
        super().__init__(backbone, classnames, task, pooling, head_layers, head_hidden, objective, **kwargs)
        self.automatic_optimization = False  # several policy updates and head steps per training batch
        self.entropy_weight = entropy_coef
        self.phase_seconds = {"rollout": 0.0, "ppo": 0.0, "head": 0.0}

    def build_prompt(self) -> nn.Module | None:
        h = self.hparams
        if h["max_nodes"] is None:  # built at fit, once the data module gives the width
            return None
        return InsertionPolicy(
            self.backbone.hidden_channels, self.backbone.in_channels, h["max_nodes"], h["ensemble_size"],
            h["max_increment"], h["init_log_std"], h["clamp_increments"],
        )  # fmt: skip

    @property
    def policy(self) -> InsertionPolicy:
        if self.prompt is None:
            raise ConfigurationError(
                "RELIEF's critic width (max_nodes) comes from the data module when it fits; give max_nodes to use "
                "the policy without one (the largest graph it will see)."
            )
        return self.prompt

    def size_by_data(self, datamodule: Any | None) -> None:
        """Build the policy as wide as ``datamodule.max_nodes`` when ``max_nodes`` was left out (idempotent). Its
        weights are drawn after the head's, as the official code builds them, so a width left out and the same
        width given are two different initialisations."""
        if self.prompt is not None:
            return
        largest = getattr(datamodule, "max_nodes", None)
        if not isinstance(largest, int):
            source = type(datamodule).__name__ if datamodule is not None else "a fit without a data module"
            raise ConfigurationError(
                f"RELIEF sizes its critic by the data's largest graph, but {source} gives no max_nodes; set "
                f"model.init_args.max_nodes."
            )
        self.hparams["max_nodes"] = largest  # stored in checkpoints: a reload builds this critic
        self.prompt = self.build_prompt()

    def configure_model(self) -> None:
        # Lightning calls it after setup, and weight-averaging callbacks call it before they copy the module
        if self._trainer is not None:
            self.size_by_data(self.trainer.datamodule)

    # -- checks ---------------------------------------------------------------------------------------
    def check_ready(self, stage: str, callbacks: Any, datamodule: Any | None) -> None:
        self.size_by_data(datamodule)  # first: the base's checks read the prompt's tensors
        super().check_ready(stage, callbacks, datamodule)
        largest = getattr(datamodule, "max_nodes", None)
        if isinstance(largest, int) and largest > self.policy.max_nodes:
            raise ConfigurationError(
                f"the data's largest graph has {largest} nodes but RELIEF was built with max_nodes="
                f"{self.policy.max_nodes}; set model.init_args.max_nodes: {largest} (or leave it out: the data's)."
            )
        if isinstance(largest, int) and largest != self.policy.max_nodes:
            rank_zero_warn(
                f"RELIEF's critic is {self.policy.max_nodes} nodes wide, the run's largest graph {largest}; the "
                f"official code sizes it by the run's splits (leave max_nodes out to do so)."
            )

    def check_trainer(self, stage: str, trainer: Any) -> None:
        super().check_trainer(stage, trainer)
        if stage != "fit":
            return
        if trainer.world_size > 1:
            raise ConfigurationError("RELIEF trains its policy in one process; run it on one device.")
        epochs = trainer.max_epochs
        if not trainer.fast_dev_run and (epochs is None or epochs <= self.hparams["warmup_epochs"]):
            raise ConfigurationError(
                "RELIEF anneals its policy over the epochs after its warm-up, so it needs their number: set "
                f"trainer.max_epochs above warmup_epochs ({self.hparams['warmup_epochs']}), got {epochs}."
            )

    # -- optimisation ---------------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        return [
            {"name": "policy", "params": list(self.policy.parameters())},
            {"name": "head", "params": list(self.head.parameters())},
        ]

    def configure_optimizers(self) -> Any:
        """One Adam (ε 1e-5) per ensemble member over its actors and the shared critic, then the head's."""
        warn_on_half_precision_parameters(self)
        h = self.hparams
        policy = [
            torch.optim.Adam(
                [
                    {"name": "actor_d", "params": list(self.policy.discrete[m].parameters()), "lr": h["actor_lr"]},
                    {"name": "actor_c", "params": list(self.policy.continuous[m].parameters()), "lr": h["actor_lr"]},
                    {"name": "critic", "params": list(self.policy.critic.parameters()), "lr": h["critic_lr"]},
                ],
                eps=1e-5,
            )
            for m in range(self.policy.ensemble_size)
        ]
        head_lr = self._param_group_lr.get("head")
        head = self._optimizer_factory(
            [{"name": "head", "params": list(self.head.parameters()), **({"lr": head_lr} if head_lr else {})}]
        )
        for group in head.param_groups:
            group["base_lr"] = group["lr"]
        return [*policy, head]

    def on_train_epoch_start(self) -> None:
        h = self.hparams
        self.phase_seconds = dict.fromkeys(self.phase_seconds, 0.0)
        if self.current_epoch < h["warmup_epochs"]:
            return  # the head alone, at its initial learning rate
        epoch, total = self.current_epoch + 1 - h["warmup_epochs"], int(self.trainer.max_epochs) - h["warmup_epochs"]
        decay = 1.0 - (epoch - 1) / total
        *policy, head = self.optimizers()
        for optimizer in policy:
            for group in optimizer.param_groups:
                base = h["critic_lr"] if group["name"] == "critic" else h["actor_lr"]
                group["lr"] = base * (decay if h["policy_lr_decay"] == "down" else 1.0)
        for group in head.param_groups:
            group["lr"] = group["base_lr"] * (decay if h["head_lr_decay"] == "down" else 1.0)
        self.entropy_weight = h["entropy_coef"] * decay
        self.policy.set_log_std(annealed_log_std(epoch, total, h["init_log_std"]))

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        for phase, seconds in self.phase_seconds.items():
            self.log(f"time/{phase}_s", seconds)

    # -- the graphs' losses under a prompt ------------------------------------------------------------
    def node_embeddings(self, data: Any, increments: Tensor | None = None) -> Tensor:
        hooks = NodeIncrements(increments) if increments is not None else None
        edge_attr = getattr(data, "edge_attr", None)
        return self.backbone.encode_nodes(data.x, data.edge_index, hooks=hooks, edge_attr=edge_attr)

    def graph_losses(self, data: Any, nodes: Tensor) -> Tensor:
        """``(G,)``: each graph's task loss under the current head, the reward's ``ℓ`` (module docstring)."""
        logits = self.head(self.graph_features(data, nodes))
        targets = self.batch_targets(data)
        if self.objective == "masked_bce":
            labelled = ~torch.isnan(targets)
            soft = torch.where(labelled, targets, torch.full_like(targets, 0.5))  # the official reward's targets
            losses = F.binary_cross_entropy_with_logits(logits.float(), soft, reduction="none")
            per_example = losses.sum(dim=-1) / labelled.sum(dim=-1).clamp(min=1)
        else:
            per_example = F.cross_entropy(logits.float(), targets, reduction="none")
        return per_example

    def _empty_prompt(self, data: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Nodes per graph, each graph's first node, the padding mask and the all-zero increments of a batch."""
        counts = torch.bincount(data.batch, minlength=data.num_graphs)
        increments = data.x.new_zeros(data.num_nodes, self.backbone.in_channels, dtype=torch.float32)
        return counts, torch.cumsum(counts, 0) - counts, self.policy.padding(counts), increments

    # -- prompting ------------------------------------------------------------------------------------
    @torch.no_grad()
    def joint_increments(self, data: Any, generator: torch.Generator | None = None) -> Tensor:
        """The joint policy's prompt of a batch of graphs: ``n_g`` steps per graph (official ``attach_prompt``)."""
        counts, starts, padding, increments = self._empty_prompt(data)
        for step in range(int(counts.max())):
            states = self.policy.states(self.node_embeddings(data, increments), data.batch, counts)
            nodes, added = self.policy.joint_action(states, padding, generator)
            active = (step < counts) & (nodes < counts)
            increments.index_add_(0, (starts + nodes)[active], added[active].to(increments.dtype))
        return increments

    @torch.no_grad()
    def rollout(self, member: int, data: Any) -> EpisodeBatch:
        """Member ``member``'s stochastic episodes on a batch of graphs (official ``train_prompt`` loop), in fp32
        whatever the run's precision: a reward is a difference of two task losses, smaller than bf16's rounding of
        them (under bf16 autocast the rewards' signs agreed with fp32's for 60 % of the steps)."""
        with torch.autocast(data.x.device.type, enabled=False):
            return self._rollout(member, data)

    def _rollout(self, member: int, data: Any) -> EpisodeBatch:
        counts, starts, padding, increments = self._empty_prompt(data)
        steps = int(counts.max())
        embeddings = self.node_embeddings(data, increments)
        record: dict[str, list[Tensor]] = {k: [] for k in ("states", "nodes", "increments", "lp_nodes", "lp_inc")}
        losses = [self.graph_losses(data, embeddings)]
        for step in range(steps):
            states = self.policy.states(embeddings, data.batch, counts)
            nodes, added, lp_nodes, lp_inc = self.policy.member_action(member, states, padding)
            active = step < counts
            increments.index_add_(0, (starts + nodes)[active], added[active].to(increments.dtype))
            embeddings = self.node_embeddings(data, increments)
            losses.append(self.graph_losses(data, embeddings))
            for key, value in zip(record, (states, nodes, added, lp_nodes, lp_inc)):
                record[key].append(value)
        return EpisodeBatch(
            nodes_per_graph=counts,
            padding=padding,
            states=torch.stack(record["states"], dim=1),
            nodes=torch.stack(record["nodes"], dim=1),
            increments=torch.stack(record["increments"], dim=1),
            logprob_nodes=torch.stack(record["lp_nodes"], dim=1),
            logprob_increments=torch.stack(record["lp_inc"], dim=1),
            losses=torch.stack(losses, dim=1),
        )

    def forward(self, data: Any, fields: frozenset[str] = frozenset()) -> PromptOutput:
        """Logits of graphs prompted by the joint policy, its node draws seeded with ``eval_seed``."""
        generator = torch.Generator(data.x.device).manual_seed(int(self.hparams["eval_seed"]))
        increments = self.joint_increments(data, generator)
        nodes = self.node_embeddings(data, increments)
        features = self.graph_features(data, nodes)
        return PromptOutput(logits=self.head(features), pooled_features=features, node_embeddings=nodes)

    # -- training -------------------------------------------------------------------------------------
    def warmup_step(self, graphs: list[Any], head_optimizer: Any) -> Tensor:
        """One warm-up epoch (official ``tasknet_warmup``): head steps on shuffled minibatches of 32 unprompted
        graphs."""
        started = time.perf_counter()
        groups = torch.randperm(len(graphs)).split(32)
        losses = [self.head_step(graphs, group, head_optimizer, prompted=False) for group in groups]
        self.phase_seconds["head"] += time.perf_counter() - started
        loss = torch.stack(losses).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=len(graphs))
        return loss

    def head_step(self, graphs: list[Any], group: Tensor, head_optimizer: Any, prompted: bool) -> Tensor:
        """One step of the head on the graphs ``group`` indexes, prompted by the joint policy or not."""
        data = _batch_of([graphs[i] for i in group.tolist()]).to(self.device)
        with torch.no_grad():
            nodes = self.node_embeddings(data, self.joint_increments(data) if prompted else None)
        logits = self.head(self.graph_features(data, nodes))
        loss = self.task_loss(PromptOutput(logits=logits), self.batch_targets(data))
        head_optimizer.zero_grad()
        self.manual_backward(loss)
        head_optimizer.step()
        return loss.detach()

    def ppo_update(self, member: int, experience: Transitions, optimizer: Any) -> dict[str, float]:
        """Member ``member``'s hybrid-PPO passes over ``experience`` (official ``train_policy``/``_actor_loss``)."""
        h, policy = self.hparams, self.policy
        advantages = (experience.advantages - experience.advantages.mean()) / (experience.advantages.std() + 1e-8)
        size, minibatches = h["ppo_minibatch_size"], len(experience) // h["ppo_minibatch_size"]
        ensemble = policy.ensemble_size > 1
        stats = {"policy_passes": 0.0, "kl_discrete": 0.0, "kl_continuous": 0.0}
        for _ in range(h["ppo_epochs"]):
            order = torch.randperm(len(experience), device=advantages.device)
            kl_d = kl_c = 0.0
            for k in range(minibatches):
                idx = order[k * size : (k + 1) * size]
                states, padding, nodes = experience.states[idx], experience.padding[idx], experience.nodes[idx]
                adv = advantages[idx]
                probs = policy.discrete[member](states, padding)
                node_dist = torch.distributions.Categorical(probs)
                lp_d = node_dist.log_prob(nodes)
                loss_d = clipped_surrogate_loss(lp_d, experience.logprob_nodes[idx], adv, h["clip_discrete"])
                loss_d = loss_d - self.entropy_weight * node_dist.entropy()
                if ensemble and (h["penalty_discrete"] > 0 or h["penalty_continuous"] > 0):
                    with torch.no_grad():
                        others = [probs.detach() if i == member else actor(states, padding)
                                  for i, actor in enumerate(policy.discrete)]  # fmt: skip
                    penalty_d, ensemble_nodes = discrete_ensemble_penalty(probs, others)
                    if h["penalty_discrete"] > 0:
                        loss_d = loss_d + h["penalty_discrete"] * penalty_d
                increment_dist = policy.continuous[member].distribution(states, nodes)
                lp_c = increment_dist.log_prob(experience.increments[idx]).sum(dim=-1)
                loss_c = clipped_surrogate_loss(lp_c, experience.logprob_increments[idx], adv, h["clip_continuous"])
                if ensemble and h["penalty_continuous"] > 0:
                    member_dist = policy.continuous[member].distribution(states, ensemble_nodes)
                    with torch.no_grad():
                        member_dists = [actor.distribution(states, ensemble_nodes) for actor in policy.continuous]
                    penalty_c = continuous_ensemble_penalty(member_dist, member_dists)
                    loss_c = loss_c + h["penalty_continuous"] * penalty_c
                critic_loss = h["critic_coef"] * F.mse_loss(experience.returns[idx], policy.critic(states))
                loss = loss_d.mean() + loss_c.mean() + critic_loss
                optimizer.zero_grad()
                self.manual_backward(loss)
                # the gradients are still multiplied by a float16 scaler's factor here (its step divides them)
                max_norm = h["max_grad_norm"] * self.gradient_scale()
                torch.nn.utils.clip_grad_norm_(policy.member_parameters(member), max_norm)
                optimizer.step()
                kl_d += float(approx_kl(lp_d.detach(), experience.logprob_nodes[idx]))
                kl_c += float(approx_kl(lp_c.detach(), experience.logprob_increments[idx]))
            stats["policy_passes"] += 1
            stats["kl_discrete"], stats["kl_continuous"] = kl_d / minibatches, kl_c / minibatches
            target_d, target_c = h["target_kl_discrete"], h["target_kl_continuous"]
            if (target_d is not None and kl_d / minibatches > target_d) or (
                target_c is not None and kl_c / minibatches > target_c
            ):
                break
        return stats

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        h = self.hparams
        *policy_optimizers, head_optimizer = self.optimizers()
        graphs = batch.to_data_list()
        if self.current_epoch < h["warmup_epochs"]:
            return self.warmup_step(graphs, head_optimizer)
        normalizer = RewardNormalizer()  # fresh each epoch's pool, shared by the members (official)
        self.backbone.eval()
        for member, subset in enumerate(member_subsets(len(graphs), self.policy.ensemble_size, h["subset_overlap"])):
            order = subset[torch.randperm(len(subset))]
            for group in order.split(h["episodes_per_update"]):
                data = _batch_of([graphs[i] for i in group.tolist()]).to(self.device)
                started = time.perf_counter()
                episodes = self.rollout(member, data)
                experience = episodes.transitions(
                    self.policy.critic, normalizer, h["gamma"], h["gae_lambda"], h["reward_clip"]
                )
                self.phase_seconds["rollout"] += time.perf_counter() - started
                if len(experience) > h["ppo_minibatch_size"]:  # the official code skips smaller groups
                    started = time.perf_counter()
                    stats = self.ppo_update(member, experience, policy_optimizers[member])
                    self.phase_seconds["ppo"] += time.perf_counter() - started
                    self.log_dict({f"train/{k}": v for k, v in stats.items()}, batch_size=len(group))
                self.log("train/reward", experience.rewards.mean(), batch_size=len(group))
        started = time.perf_counter()
        head_losses = []
        for _ in range(h["head_epochs"]):
            for group in torch.arange(len(graphs)).split(h["head_batch_size"]):
                head_losses.append(self.head_step(graphs, group, head_optimizer, prompted=True))
        self.phase_seconds["head"] += time.perf_counter() - started
        loss = torch.stack(head_losses).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=len(graphs))
        return loss


def _batch_of(graphs: Sequence[Any]) -> Any:
    """PyG's ``Batch`` of the graphs; PyG imported here, on first use, not when the command line starts (it
    imports every registered method: 2 s of every run's start-up went to PyG)."""
    from torch_geometric.data import Batch

    return Batch.from_data_list(list(graphs))
