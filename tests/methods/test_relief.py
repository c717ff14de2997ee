"""RELIEF against a transcription of the official training epoch (JasonZhujp/RELIEF, graph_level/base.py
``train_policy`` / ``attach_prompt`` / ``generate_reward``, agent.py ``H_PPO``, reward.py), plus its checks."""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import docs_python, precision_options
from lightning import Callback, Trainer
from torch.distributions import Categorical, Normal
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader

from lightning_prompts.backbones import GNN
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods.relief import RELIEF, member_subsets

SETTINGS = {
    "max_nodes": 10,
    "ensemble_size": 2,
    "max_increment": 0.5,
    "init_log_std": -1.0,
    "episodes_per_update": 3,
    "ppo_minibatch_size": 4,
    "ppo_epochs": 3,
    "penalty_discrete": 1.0,
    "penalty_continuous": 0.1,
    "policy_lr_decay": "down",
    "head_lr_decay": "down",
    "head_layers": 2,
    "head_epochs": 2,
    "head_batch_size": 4,
    "target_kl_discrete": 0.05,
}


def graphs(count: int = 10, seed: int = 0) -> list[Data]:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for index in range(count):
        n = 3 + index % 4
        ring = torch.arange(n)
        edges = torch.stack([torch.cat([ring, (ring + 1) % n]), torch.cat([(ring + 1) % n, ring])])
        x = 2 * torch.randn(n, 6, generator=generator)
        out.append(Data(x=x, edge_index=edges, y=torch.tensor([index % 3])))
    return out


def relief(**overrides) -> RELIEF:
    torch.manual_seed(0)
    gnn = GNN("gin", in_channels=6, hidden_channels=16, num_layers=2, seed=3)
    return RELIEF(gnn, ["a", "b", "c"], **{**SETTINGS, **overrides})


# --- the official epoch, transcribed ---------------------------------------------------------------------
class OfficialNormalization:
    def __init__(self):
        self.n, self.mean, self.S, self.std = 0, np.zeros(1), np.zeros(1), np.zeros(1)

    def update(self, x):
        x = np.array(x)
        self.n += 1
        if self.n == 1:
            self.mean, self.std = x, x
        else:
            old = self.mean.copy()
            self.mean = old + (x - old) / self.n
            self.S = self.S + (x - old) * (x - self.mean)
            self.std = np.sqrt(self.S / self.n)

    def __call__(self, x):
        self.update(x)
        return (x - self.mean) / (self.std + 1e-8)


class Official:
    """The official H_PPO + tasknet loop over copies of our modules' weights."""

    def __init__(self, module: RELIEF):
        self.s = dict(module.hparams)
        self.clamped = self.clipped = 0  # node-level clamps of sampled increments and clips of rewards
        self.gnn = module.backbone.encoder
        self.actor_ds = [copy.deepcopy(a.scores) for a in module.policy.discrete]
        self.actor_cs = [copy.deepcopy(a.mean_net) for a in module.policy.continuous]
        self.critic = copy.deepcopy(module.policy.critic.value)
        self.tasknet = copy.deepcopy(module.head)
        s = self.s
        self.optims = [
            torch.optim.Adam(
                [
                    {"name": "actor_d", "params": self.actor_ds[i].parameters(), "lr": s["actor_lr"]},
                    {"name": "actor_c", "params": self.actor_cs[i].parameters(), "lr": s["actor_lr"]},
                    {"name": "critic", "params": self.critic.parameters(), "lr": s["critic_lr"]},
                ],
                eps=1e-5,
            )
            for i in range(s["ensemble_size"])
        ]
        self.tasknet_optim = torch.optim.Adam(self.tasknet.parameters(), lr=1e-3)
        self.log_std = 0.0

    # agent.py
    def pi(self, i, state, mask):
        out = self.actor_ds[i](state).squeeze(-1)
        return F.softmax(torch.where(mask == 0, out, torch.full_like(out, float("-inf"))), dim=-1)

    def mean(self, i, state, action_d):
        out = self.actor_cs[i](state)
        index = action_d.view(-1, 1, 1).expand(-1, 1, out.size(-1))
        return torch.tanh(torch.gather(out, 1, index).squeeze(1)) * self.s["max_increment"]

    def embed(self, data, prompt):
        return self.gnn(data.x + prompt, data.edge_index)

    def reward(self, data, prompt):  # generate_reward, cross-entropy objective
        with torch.no_grad():
            logit = self.tasknet(torch.zeros(data.num_graphs, 16).index_add_(0, data.batch, self.embed(data, prompt))
                                 / torch.bincount(data.batch).unsqueeze(-1))  # fmt: skip
        return F.cross_entropy(logit, data.y, reduction="none")

    def node_to_state(self, data, prompt_slices, npg, step_state):
        with torch.no_grad():
            emb = self.embed(data, torch.cat(prompt_slices))
        for i, ss in enumerate(torch.split(emb, npg.tolist())):
            step_state[i, : ss.size(0)] = ss
        return step_state

    def epoch(self, pool, epoch, total):
        s = self.s
        frac = 1.0 - (epoch - 1) / total
        for optim in self.optims:
            for group in optim.param_groups:
                group["lr"] = frac * (s["critic_lr"] if group["name"] == "critic" else s["actor_lr"])
        for group in self.tasknet_optim.param_groups:
            group["lr"] = frac * 1e-3
        self.coeff_ent = s["entropy_coef"] * frac
        self.log_std = s["init_log_std"] + (-5 - s["init_log_std"]) * (epoch - 1) / total
        norm = OfficialNormalization()
        E, maxn = s["ensemble_size"], s["max_nodes"]
        part = len(pool) // E
        idx_list = [torch.arange(i * part, (i + 1) * part if i < E - 1 else len(pool)) for i in range(E)]
        for a in range(E):
            idx = idx_list[a]
            for j in range(E):
                if j != a:
                    idx = torch.cat([idx, idx_list[j][-int(part * 0.2) :]])
            order = idx[torch.randperm(len(idx))]  # the member loader's shuffle
            for chunk in order.split(s["episodes_per_update"]):
                data = Batch.from_data_list([pool[k] for k in chunk.tolist()])
                npg = torch.bincount(data.batch)
                G, T = data.num_graphs, int(npg.max())
                state = torch.zeros(G, T, maxn, 16)
                action_d, action_c = torch.zeros(G, T).long(), torch.zeros(G, T, 6)
                logprob_d, logprob_c = torch.zeros(G, T), torch.zeros(G, T)
                reward, done = torch.zeros(G, T + 1), torch.zeros(G, T)
                prompt_slices = [torch.zeros(n, 6) for n in npg]
                reward[:, 0] = self.reward(data, torch.cat(prompt_slices))
                step_state = torch.zeros(G, maxn, 16)
                mask = torch.where(torch.arange(maxn) < npg.unsqueeze(-1), torch.zeros(G, maxn), torch.ones(G, maxn))
                for step in range(T):
                    done[npg == step + 1, step] = 1.0
                    with torch.no_grad():
                        st = self.node_to_state(data, prompt_slices, npg, step_state)
                        dist = Categorical(self.pi(a, st, mask))
                        a_d = dist.sample()
                        lp_d = dist.log_prob(a_d)
                        mean = self.mean(a, st, a_d)
                        dist_c = Normal(mean, torch.exp(torch.full_like(mean, self.log_std)))
                        a_c = dist_c.sample()
                        if self.s["clamp_increments"]:  # node_level/agent.py get_action_logprob
                            bound = self.s["max_increment"]
                            self.clamped += int((a_c.abs() > bound).sum())
                            a_c = torch.clamp(a_c, -bound, bound)
                        lp_c = dist_c.log_prob(a_c).sum(-1)
                    for i in range(G):
                        if step < npg[i]:
                            prompt_slices[i][a_d[i]] += a_c[i]
                    state[:, step], action_d[:, step], action_c[:, step] = st, a_d, a_c
                    logprob_d[:, step], logprob_c[:, step] = lp_d, lp_c
                    reward[:, step + 1] = self.reward(data, torch.cat(prompt_slices))
                valid = torch.arange(T).expand(G, -1) < npg.unsqueeze(1)
                next_state = torch.zeros_like(state)
                for i in range(G):
                    n = int(npg[i])
                    next_state[i, : n - 1] = state[i, 1:n]
                    next_state[i, n - 1] = state[i, n - 1]
                rewards = [(reward[i][: n + 1][:-1] - reward[i][: n + 1][1:]) for i, n in enumerate(npg)]
                if self.s["reward_clip"] is not None:  # node_level/reward.py reshape_reward
                    clip = self.s["reward_clip"]
                    self.clipped += sum(int((r.abs() > clip).sum()) for r in rewards)
                    rewards = [torch.clamp(r, min=-clip, max=clip) for r in rewards]
                rewards = [r.numpy() for r in rewards]
                state, next_state, done = state[valid], next_state[valid], done[valid]
                # compute_adv_ret
                if norm.n == 0:
                    for r in rewards:
                        for x in r:
                            norm.update(x)
                scaled = [torch.tensor(np.stack([norm(x) for x in r])).squeeze(-1).float() for r in rewards]
                counts = npg.tolist()
                advs, rets = [], []
                with torch.no_grad():
                    for i, (si, nsi, di) in enumerate(
                        zip(state.split(counts), next_state.split(counts), done.split(counts))
                    ):
                        v, nv = self.critic(si).squeeze(-1), self.critic(nsi).squeeze(-1)
                        gae, adv = torch.tensor(0.0), []
                        deltas = scaled[i] + s["gamma"] * (1.0 - di) * nv - v
                        for delta, d in zip(reversed(deltas), reversed(di)):
                            gae = delta + s["gamma"] * s["gae_lambda"] * gae * (1.0 - d)
                            adv.insert(0, gae)
                        adv = torch.stack(adv)
                        advs.append(adv)
                        rets.append(adv + v)
                adv, ret = torch.cat(advs), torch.cat(rets)
                if state.size(0) > s["ppo_minibatch_size"]:
                    self.train_policy(a, state, action_d[valid], logprob_d[valid], action_c[valid],
                                      logprob_c[valid], adv, ret, npg)  # fmt: skip
        # the tasknet phase with the joint policy
        for _ in range(s["head_epochs"]):
            for chunk in torch.arange(len(pool)).split(s["head_batch_size"]):
                data = Batch.from_data_list([pool[k] for k in chunk.tolist()])
                prompt = self.attach_prompt(data)
                with torch.no_grad():
                    emb = self.embed(data, prompt)
                pooled = torch.zeros(data.num_graphs, 16).index_add_(0, data.batch, emb) / torch.bincount(
                    data.batch
                ).unsqueeze(-1)
                loss = F.cross_entropy(self.tasknet(pooled), data.y)
                self.tasknet_optim.zero_grad()
                loss.backward()
                self.tasknet_optim.step()

    def attach_prompt(self, data):
        npg = torch.bincount(data.batch)
        G, maxn = data.num_graphs, self.s["max_nodes"]
        prompt_slices = [torch.zeros(n, 6) for n in npg]
        step_state = torch.zeros(G, maxn, 16)
        mask = torch.where(torch.arange(maxn) < npg.unsqueeze(-1), torch.zeros(G, maxn), torch.ones(G, maxn))
        for step in range(int(npg.max())):
            with torch.no_grad():
                st = self.node_to_state(data, prompt_slices, npg, step_state)
                pis = [self.pi(i, st, mask) for i in range(self.s["ensemble_size"])]
                ens = F.normalize(torch.stack(pis, 1).max(1)[0] + 1e-10, p=1, dim=-1)
                a_d = Categorical(ens).sample()
                a_c = torch.stack([self.mean(i, st, a_d) for i in range(self.s["ensemble_size"])], 1).mean(1)
            for i in range(G):
                if step < npg[i] and a_d[i] < prompt_slices[i].size(0):
                    prompt_slices[i][a_d[i]] += a_c[i]
        return torch.cat(prompt_slices)

    def train_policy(self, a, state, action_d, logprob_old_d, action_c, logprob_old_c, adv, ret, npg):
        s = self.s
        node_num = torch.stack([x for x in npg for _ in range(x)])
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        mb = s["ppo_minibatch_size"]
        minibatch_num = len(state) // mb
        params = [*self.actor_ds[a].parameters(), *self.actor_cs[a].parameters(), *self.critic.parameters()]
        for _ in range(s["ppo_epochs"]):
            index = torch.randperm(len(state))
            kl_d_sum = kl_c_sum = 0.0
            for k in range(minibatch_num):
                i = index[k * mb : (k + 1) * mb]
                st = state[i]
                mask = torch.where(torch.arange(s["max_nodes"]) < node_num[i].unsqueeze(-1),
                                   torch.zeros(len(i), s["max_nodes"]), torch.ones(len(i), s["max_nodes"]))  # fmt: skip
                dist = Categorical(self.pi(a, st, mask))
                lp_d, ent_d = dist.log_prob(action_d[i]), dist.entropy()
                ratio_d = torch.exp(lp_d - logprob_old_d[i])
                surr_d = torch.min(ratio_d * adv[i], torch.clamp(ratio_d, 0.8, 1.2) * adv[i])
                pis = [
                    self.pi(j, st, mask) if j == a else self.pi(j, st, mask).detach() for j in range(len(self.actor_ds))
                ]
                with torch.no_grad():
                    ens_max = torch.stack(pis, 1).max(1)[0]
                    ens_pi = F.normalize(F.normalize(ens_max, p=1, dim=-1) + 1e-10, p=1, dim=-1)
                cur = F.normalize(pis[a] + 1e-10, p=1, dim=-1)
                pen_d = F.kl_div(torch.log(cur), ens_pi, reduction="none").sum(-1) * s["penalty_discrete"]
                ens_action = ens_max.argmax(-1)
                loss_d = -surr_d - self.coeff_ent * ent_d + pen_d
                mean = self.mean(a, st, action_d[i])
                std = torch.exp(torch.full_like(mean, self.log_std))
                lp_c = Normal(mean, std).log_prob(action_c[i]).sum(-1)
                ratio_c = torch.exp(lp_c - logprob_old_c[i])
                surr_c = torch.min(ratio_c * adv[i], torch.clamp(ratio_c, 0.8, 1.2) * adv[i])
                means = [self.mean(j, st, ens_action) if j == a else self.mean(j, st, ens_action).detach()
                         for j in range(len(self.actor_cs))]  # fmt: skip
                with torch.no_grad():
                    ens_mean = torch.stack(means, 1).mean(1)
                pen_c = torch.distributions.kl.kl_divergence(Normal(means[a], std), Normal(ens_mean, std)).sum(-1)
                loss_c = -surr_c + pen_c * s["penalty_continuous"]
                critic_loss = F.mse_loss(ret[i], self.critic(st).squeeze(-1)) * s["critic_coef"]
                self.optims[a].zero_grad()
                (loss_d.mean() + loss_c.mean() + critic_loss).backward()
                torch.nn.utils.clip_grad_norm_(params, max_norm=s["max_grad_norm"])
                self.optims[a].step()
                with torch.no_grad():
                    kl_d_sum += ((ratio_d - 1) - (lp_d - logprob_old_d[i])).mean().item()
                    kl_c_sum += ((ratio_c - 1) - (lp_c - logprob_old_c[i])).mean().item()
            if (
                kl_d_sum / minibatch_num > s["target_kl_discrete"]
                or kl_c_sum / minibatch_num > s["target_kl_continuous"]
            ):
                break


@pytest.mark.parametrize(
    "level", [{}, {"clamp_increments": True, "reward_clip": 0.001, "max_increment": 0.3}], ids=["graph", "node"]
)
def test_two_epochs_equal_the_official_training_loop(level):
    """graph_level's loop, and node_level's (sampled increments clamped to ±max_z, rewards clipped)."""
    module = relief(**level)
    pool = graphs(10)
    captured = {}
    original = module.training_step

    def capture(batch, batch_idx):
        if not captured:
            captured["official"] = Official(module)
        # each epoch's loader iterator draws a base seed before the step: start each official epoch where ours did
        captured.setdefault("rng", []).append(torch.get_rng_state())
        return original(batch, batch_idx)

    module.training_step = capture
    trainer = Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, accelerator="cpu")  # fmt: skip
    trainer.fit(module, train_dataloaders=DataLoader(pool, batch_size=len(pool), shuffle=False))
    official = captured["official"]
    for epoch, state in zip((1, 2), captured["rng"], strict=True):
        torch.set_rng_state(state)
        official.epoch(pool, epoch, 2)
    assert module.policy.continuous[0].log_std[0].item() == pytest.approx(official.log_std)
    pairs = [(module.head, official.tasknet), (module.policy.critic.value, official.critic)]
    pairs += [(ours.scores, theirs) for ours, theirs in zip(module.policy.discrete, official.actor_ds)]
    pairs += [(ours.mean_net, theirs) for ours, theirs in zip(module.policy.continuous, official.actor_cs)]
    if level:  # both node-level differences acted in these two epochs
        assert official.clamped > 0 and official.clipped > 0
    initial = relief(**level)
    moved = 0
    for (ours, _), start in zip(pairs, [initial.head, initial.policy.critic.value]):
        moved += sum(float((a - b).detach().abs().max()) > 1e-4 for a, b in zip(ours.parameters(), start.parameters()))
    assert moved > 0  # the head and critic trained
    for ours, theirs in pairs:
        for a, b in zip(ours.parameters(), theirs.parameters()):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    seconds = trainer.callback_metrics
    assert {"time/rollout_s", "time/ppo_s", "time/head_s"} <= set(seconds)
    assert float(seconds["time/ppo_s"]) > 0  # the groups were big enough to update


def test_member_subsets_are_the_official_parts_with_their_overlap():
    first, second, third = member_subsets(10, 3)  # part 3, tail int(0.6) = 0: the [-0:] quirk adds whole parts
    assert first.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert third.tolist() == [6, 7, 8, 9, 0, 1, 2, 3, 4, 5]
    first, second = member_subsets(11, 2)  # part 5, tail 1
    assert first.tolist() == [0, 1, 2, 3, 4, 10] and second.tolist() == [5, 6, 7, 8, 9, 10, 4]
    assert member_subsets(4, 1)[0].tolist() == [0, 1, 2, 3]


def test_the_multitask_reward_is_the_official_unmasked_sum_over_labelled_count():
    module = relief(objective="masked_bce")
    module.classnames = ["t1", "t2", "t3"]
    data = Batch.from_data_list(graphs(2))
    data.y = torch.tensor([[1.0, float("nan"), 0.0], [float("nan"), float("nan"), float("nan")]])
    with torch.no_grad():
        nodes = module.node_embeddings(data)
        logits = module.head(module.graph_features(data, nodes))
        ours = module.graph_losses(data, nodes)
    official_y = torch.tensor([[1.0, 0.0, -1.0], [0.0, 0.0, 0.0]])  # {-1, 0 missing, 1}
    losses = F.binary_cross_entropy_with_logits(logits, (official_y + 1) / 2, reduction="none")
    assert ours[0].item() == pytest.approx(float(losses[0].sum() / 2), rel=1e-6)  # missing entry included
    assert ours[1].item() == pytest.approx(float(losses[1].sum()), rel=1e-6)  # no label: / 1, not / 0


def test_evaluation_prompts_are_reproducible_and_touch_at_most_each_graph_once_per_node():
    module = relief().eval()
    data = Batch.from_data_list(graphs(4))
    with torch.no_grad():
        first, second = module(data).logits, module(data).logits
    torch.testing.assert_close(first, second)
    increments = module.joint_increments(data, torch.Generator().manual_seed(0))
    counts = torch.bincount(data.batch)
    touched = torch.bincount(data.batch[increments.abs().sum(-1) > 0], minlength=4)
    assert (touched >= 1).all() and (touched <= counts).all()
    assert increments.abs().max() <= module.hparams["max_increment"] * counts.max()


def test_bad_configurations_are_refused():
    with pytest.raises(ConfigurationError, match="lr_scheduler"):
        relief(lr_scheduler={"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 1}})
    with pytest.raises(ValueError, match="policy_lr_decay"):
        relief(policy_lr_decay="cosine")
    module = relief(max_nodes=4)
    with pytest.raises(ValueError, match="a graph has 6 nodes .* at most 4; set max_nodes"):
        module(Batch.from_data_list(graphs(4)))


def test_critic_width_follows_max_nodes():
    module = relief(max_nodes=20)
    assert module.policy.critic.value[1].in_features == 16 * 20
    assert math.isclose(module.policy.continuous[0].log_std[0].item(), -1.0)


def test_node_classification_through_ego_graphs(trainer_kwargs):
    from torch_geometric.datasets import KarateClub

    from lightning_prompts.data import GraphDataModule

    data = GraphDataModule(KarateClub(), task="node", shots=2, val_shots=1, ego_hops=1, batch_size=8)
    gnn = GNN("gin", in_channels=34, hidden_channels=8, num_layers=2)
    method = RELIEF(gnn, data.classnames, max_nodes=data.max_nodes, ensemble_size=2, ppo_minibatch_size=8)
    assert data.max_nodes == 18  # node 33's 1-hop ego-graph, the largest among the split's centres
    trainer = Trainer(max_epochs=1, **trainer_kwargs)
    trainer.fit(method, data)
    (metrics,) = trainer.validate(method, data)
    assert 0.0 <= metrics["val/acc"] <= 1.0


def test_left_out_max_nodes_sizes_the_critic_by_the_runs_splits_and_checkpoints_keep_it(tmp_path, trainer_kwargs):
    """The official main.py: ``max_node_num`` is the largest graph of the train, validation and test splits."""
    from torch_geometric.datasets import KarateClub

    from lightning_prompts.data import GraphDataModule

    data = GraphDataModule(KarateClub(), task="node", shots=2, val_shots=1, ego_hops=1, batch_size=8)
    gnn = GNN("gin", in_channels=34, hidden_channels=8, num_layers=2)
    method = RELIEF(gnn, data.classnames, ensemble_size=2, ppo_minibatch_size=8)
    with pytest.raises(ConfigurationError, match="comes from the data module"):
        method.policy
    trainer = Trainer(max_epochs=1, **trainer_kwargs)
    trainer.fit(method, data)
    data.setup("fit")
    largest = max(int(graph.num_nodes) for split in data._splits.values() for graph in split)
    assert method.policy.max_nodes == largest == 18 and method.hparams["max_nodes"] == 18
    assert method.policy.critic.value[1].in_features == 18 * 8
    trainer.save_checkpoint(tmp_path / "relief.ckpt")
    reloaded = RELIEF.load_from_checkpoint(tmp_path / "relief.ckpt", backbone=gnn)
    assert reloaded.policy.max_nodes == 18
    assert torch.equal(reloaded.policy.critic.value[1].weight, method.policy.critic.value[1].weight)
    with pytest.warns(UserWarning, match="critic is 30 nodes wide, the run's largest graph 18"):
        Trainer(max_epochs=1, **trainer_kwargs).fit(RELIEF(gnn, data.classnames, max_nodes=30, ensemble_size=2), data)


def test_a_width_from_the_data_takes_prompt_init_and_weight_averaging(tmp_path, trainer_kwargs):
    """With max_nodes left out the policy is built before the base's checks (a prompt_init file names its tensors)
    and in configure_model (a weight-averaging callback copies the module before the module's own setup)."""
    from lightning.pytorch.callbacks import WeightAveraging
    from torch_geometric.datasets import KarateClub

    from lightning_prompts.data import GraphDataModule

    data = GraphDataModule(KarateClub(), task="node", shots=2, val_shots=1, ego_hops=1, batch_size=8)
    gnn = GNN("gin", in_channels=34, hidden_channels=8, num_layers=2)
    first = RELIEF(gnn, data.classnames, ensemble_size=2, ppo_minibatch_size=8)
    Trainer(max_epochs=1, **trainer_kwargs).fit(first, data)
    first.export_prompt(tmp_path / "relief.safetensors")
    second = RELIEF(
        gnn, data.classnames, ensemble_size=2, ppo_minibatch_size=8, prompt_init=tmp_path / "relief.safetensors"
    )
    trainer = Trainer(max_epochs=1, callbacks=[WeightAveraging()], **trainer_kwargs)
    trainer.fit(second, data)
    assert second.policy.max_nodes == 18 and trainer.global_step > 0


def test_the_docs_use_snippet_builds_the_method():
    block = docs_python(Path(__file__).resolve().parents[2] / "docs" / "methods" / "relief.md")[0]
    block = block.replace('"data/moleculenet/bbbp/raw/BBBP.csv", dataset="bbbp"', '"recipes/_tiny/molecules.csv"')
    block = block.replace('MoleculeGIN("checkpoints/relief/contextpred.pth")', "MoleculeGIN(num_layers=2, emb_dim=8)")
    pytest.importorskip("rdkit")
    namespace: dict = {}
    cwd = os.getcwd()
    os.chdir(Path(__file__).resolve().parents[2])
    try:
        exec(block, namespace)
    finally:
        os.chdir(cwd)
    model = namespace["model"]
    assert type(model).__name__ == "RELIEF" and model.policy.max_nodes == 13
    assert model.policy.critic.value[1].in_features == 13 * 8


def test_node_level_is_through_ego_graphs_only():
    with pytest.raises(ConfigurationError, match="ego-graphs"):
        relief(task="node")


def test_warmup_epochs_train_the_head_alone_on_unprompted_graphs_then_the_schedules_start(trainer_kwargs):
    """node_level/base.py tasknet_warmup: head steps on shuffled minibatches of 32 unprompted graphs; the annealing
    and the decays then count the epochs after the warm-up."""
    module = relief(warmup_epochs=2, ensemble_size=1)
    pool = graphs(40)
    policy = {k: v.clone() for k, v in module.policy.state_dict().items()}
    reference_head = copy.deepcopy(module.head)
    optimizer = torch.optim.Adam(reference_head.parameters(), lr=1e-3)

    class Record(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 1:  # the end of the warm-up: only the head moved
                assert all(torch.equal(v, pl_module.policy.state_dict()[k]) for k, v in policy.items())
                for a, b in zip(pl_module.head.parameters(), reference_head.parameters()):
                    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)

    def reference_epoch():
        for group in torch.randperm(len(pool)).split(32):
            data = Batch.from_data_list([pool[i] for i in group.tolist()])
            with torch.no_grad():
                nodes = module.backbone.encode_nodes(data.x, data.edge_index)
            features = module.backbone.pool(nodes, data.batch, "mean")
            loss = F.cross_entropy(reference_head(features), data.y.view(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    original = module.training_step

    def with_reference(batch, batch_idx):
        if module.current_epoch < 2:  # replay the warm-up from the same random state, before ours runs
            state = torch.get_rng_state()
            reference_epoch()
            torch.set_rng_state(state)
        return original(batch, batch_idx)

    module.training_step = with_reference
    Trainer(max_epochs=3, callbacks=[Record()], limit_val_batches=0, **trainer_kwargs).fit(
        module, train_dataloaders=DataLoader(pool, batch_size=len(pool), shuffle=False)
    )
    assert module.policy.continuous[0].log_std[0].item() == pytest.approx(SETTINGS["init_log_std"])  # epoch 1 of 1
    assert any(not torch.equal(v, module.policy.state_dict()[k]) for k, v in policy.items())  # the policy trained
    with pytest.raises(ConfigurationError, match="above warmup_epochs"):
        Trainer(max_epochs=2, **trainer_kwargs).fit(relief(warmup_epochs=2), train_dataloaders=DataLoader(pool))


def test_the_amazon_node_recipe_samples_ego_graphs_and_warms_up(tmp_path):
    from lightning_prompts.cli import run_cli

    recipes = Path(__file__).resolve().parents[2] / "recipes"
    configs = ["--config", str(recipes / "relief" / "node" / "photo_gppt.yaml")]
    configs += ["--config", str(recipes / "_tiny" / "relief_node.yaml")]
    cli = run_cli(["fit", *configs, "--trainer.default_root_dir", str(tmp_path)])  # the recipe's hops and fan-out
    assert cli.datamodule.ego_hops == 2 and cli.datamodule.ego_fanout == [20, 10]
    assert cli.model.hparams["warmup_epochs"] == 100
    assert max(g.num_nodes for g in cli.datamodule._splits["train"]) <= 1 + 20 + 200
    assert cli.trainer.callback_metrics["time/rollout_s"] == 0  # the one fast_dev_run step was a warm-up step


@pytest.mark.parametrize("precision", ["32-true", "16-mixed"])
def test_each_policy_update_is_clipped_to_max_grad_norm_in_true_gradient_units(precision, trainer_kwargs):
    """Under 16-mixed the policy's gradients are still multiplied by the float16 scaler's factor (2**16) when RELIEF
    clips them; clipped at max_grad_norm there, the scaler's step then divided them to 2**16 times less. What the
    optimizer sees (after the scaler, in on_before_optimizer_step) is at most max_grad_norm, and reaches it."""
    module = relief(max_grad_norm=0.01)  # small, so every update is clipped
    norms = []

    class Record(Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if optimizer is not trainer.optimizers[-1]:  # a policy member's optimizer, not the head's
                grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
                norms.append(torch.sqrt(sum(g.float().pow(2).sum() for g in grads)).item())

    options = precision_options(precision)
    trainer = Trainer(max_epochs=1, callbacks=[Record()], limit_val_batches=0, **options, **trainer_kwargs)
    trainer.fit(module, train_dataloaders=DataLoader(graphs(12), batch_size=12))
    finite = [norm for norm in norms if math.isfinite(norm)]  # the scaler skips a step that overflowed, and backs off
    assert finite and max(finite) == pytest.approx(0.01, rel=1e-3)
