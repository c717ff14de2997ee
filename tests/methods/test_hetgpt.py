"""HetGPT (no official code): its equations against hand computations, the frozen heterogeneous GNN's checkpoints,
HGB's raw format through PyG, and a fit on the heterogeneous SBM."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import docs_python, official_graphcl_loss, widened
from lightning.pytorch import Trainer
from torch_geometric.datasets import HGBDataset

from lightning_prompts.backbones.hetero_gnn import HeteroGNN, save_hetero_gnn
from lightning_prompts.data.hetero_graph import HeteroGraphDataModule, HeteroSBM
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods.hetgpt import HetGPT, metapath_edges
from lightning_prompts.outputs import PromptOutput
from lightning_prompts.prompts.hetero import HeteroFeaturePrompt, NeighbourAttention, SemanticAttention
from lightning_prompts.recipes import merged_section

SCHEMA = {"in_channels": {"paper": 16, "author": 16, "subject": 16},
          "edge_types": [["paper", "to", "author"], ["author", "to", "paper"], ["paper", "to", "subject"],
                         ["subject", "to", "paper"]]}  # fmt: skip
METAPATHS = [
    [["paper", "to", "author"], ["author", "to", "paper"]],
    [["paper", "to", "subject"], ["subject", "to", "paper"]],
]


def test_feature_prompt_adds_a_softmax_mix_of_the_types_bases():
    prompt = HeteroFeaturePrompt({"paper": 4, "author": 3}, num_bases=2)
    x = torch.randn(5, 4)
    bases = prompt.bases["paper"]
    expected = torch.stack(
        [x[i] + sum(torch.softmax(bases @ x[i], 0)[k] * bases[k] for k in range(2)) for i in range(5)]
    )
    torch.testing.assert_close(prompt.prompt("paper", x), expected)
    assert prompt.callables()["author"](torch.zeros(1, 3)).shape == (1, 3)


def test_neighbour_attention_is_gats_softmax_over_each_nodes_neighbours():
    torch.manual_seed(0)
    attention = NeighbourAttention(4)
    sources, targets = torch.randn(3, 4), torch.randn(2, 4)
    edges = torch.tensor([[0, 1, 2], [0, 0, 1]])  # target 0 <- sources 0, 1; target 1 <- source 2
    out = attention(sources, targets, edges)
    W, a_s, a_d = attention.project.weight, attention.source_score[0], attention.target_score[0]
    e = [F.leaky_relu(a_s @ (W @ sources[j]) + a_d @ (W @ targets[0]), 0.2) for j in (0, 1)]
    alpha = torch.softmax(torch.stack(e), 0)
    torch.testing.assert_close(out[0], F.elu(alpha[0] * W @ sources[0] + alpha[1] * W @ sources[1]))
    torch.testing.assert_close(out[1], F.elu(W @ sources[2]))  # one neighbour: weight 1
    lonely = attention(sources, torch.randn(3, 4), edges)[2]
    assert torch.equal(lonely, torch.zeros(4))  # no neighbour: 0


def test_semantic_attention_weighs_views_by_their_mean_score():
    torch.manual_seed(0)
    attention = SemanticAttention(4, attention_width=3)
    views = [torch.randn(5, 4), torch.randn(5, 4)]
    scores = torch.stack([(torch.tanh(attention.transform(v)) @ attention.query[0]).mean() for v in views])
    beta = torch.softmax(scores, 0)
    torch.testing.assert_close(attention(views), beta[0] * views[0] + beta[1] * views[1])


def test_metapath_edges_are_the_pairs_joined_by_the_path():
    graph = HeteroSBM(papers=12, authors=5, subjects=3, seed=1)[0]
    pairs = set(map(tuple, metapath_edges(graph, [("paper", "to", "author"), ("author", "to", "paper")]).T.tolist()))
    writes = graph["paper", "to", "author"].edge_index
    expected = {(int(p), int(q)) for p, a in writes.T for q, b in writes.T if int(a) == int(b)}
    assert pairs == expected


def hetgpt(**kwargs) -> HetGPT:
    torch.manual_seed(0)
    return HetGPT(
        HeteroGNN(**SCHEMA, hidden_channels=8), ["a", "b", "c"], target="paper", metapaths=METAPATHS, **kwargs
    )


def test_logits_loss_and_class_tokens_follow_the_equations():
    module = hetgpt(temperature=0.5, prompt_l2=0.01, num_bases=2)
    data = HeteroGraphDataModule(synthetic={"papers": 30, "authors": 10, "subjects": 3}, shots=2)
    data.setup("fit")
    batch = data.train_dataloader().dataset[0]
    module.train()
    output = module.compute_output(batch)  # the first training step sets the class tokens
    z, labels = output.pooled_features, module.batch_targets(batch)
    for label in range(3):
        torch.testing.assert_close(module.class_tokens[label], z[labels == label].mean(0))
    expected = F.normalize(z, dim=-1) @ F.normalize(module.class_tokens, dim=-1).T / 0.5
    torch.testing.assert_close(output.logits, expected)
    penalty = sum(b.pow(2).sum() for b in module.feature_prompt.bases.values())
    loss = module.task_loss(PromptOutput(logits=output.logits), labels)
    torch.testing.assert_close(loss, F.cross_entropy(output.logits, labels) + 0.01 * penalty)
    # z is the mean of the type view (own embedding + relation summaries) and the metapath view
    hidden = module.backbone.encode_nodes(batch.x_dict, batch.edge_index_dict, module.feature_prompt.callables())
    own = hidden["paper"]
    relations = [
        att(hidden[e[0]], own, batch[e].edge_index) for att, e in zip(module.relation_attention, module.relations)
    ]
    paths = [att(own, own, metapath_edges(batch, p)) for att, p in zip(module.metapath_attention, module.metapaths)]
    full = (module.type_attention([own, *relations]) + module.metapath_semantic(paths)) / 2
    torch.testing.assert_close(z, full[batch["paper"].target_mask])


def test_fit_on_the_heterogeneous_sbm_trains_prompts_not_the_gnn(tmp_path):
    data = HeteroGraphDataModule(synthetic={"papers": 60, "authors": 20, "subjects": 6}, shots=3, val_shots=3,
                                 classnames=["a", "b", "c"])  # fmt: skip
    module = hetgpt()
    frozen = {k: v.clone() for k, v in module.backbone.state_dict().items()}
    bases = module.feature_prompt.bases["paper"].detach().clone()
    trainer = Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(module, data)
    assert bool(module.class_tokens_ready) and not torch.equal(module.feature_prompt.bases["paper"], bases)
    assert all(torch.equal(v, module.backbone.state_dict()[k]) for k, v in frozen.items())
    (metrics,) = trainer.test(module, data, verbose=False)
    assert 0.0 <= metrics["test/acc"] <= 1.0
    wrong = HetGPT(HeteroGNN(**SCHEMA, hidden_channels=8), ["a", "b", "c"], target="author")
    with pytest.raises(ConfigurationError, match="data module's target is 'paper'"):
        Trainer(max_epochs=1, logger=False, accelerator="cpu").fit(wrong, data)
    with pytest.raises(ValueError, match="must chain edge types"):
        HetGPT(HeteroGNN(**SCHEMA), ["a"], target="paper", metapaths=[[["paper", "to", "author"]]])


def test_a_saved_encoder_loads_with_identical_outputs_and_a_schema_mismatch_is_refused(tmp_path):
    graph = HeteroSBM(papers=20, authors=8, subjects=4)[0]
    trained = HeteroGNN(**SCHEMA, hidden_channels=8, seed=5)
    path = save_hetero_gnn(trained.encoder, tmp_path / "hgnn.pt", trained.arch_config)
    loaded = HeteroGNN(**SCHEMA, hidden_channels=8, checkpoint_path=str(path))
    for node, value in trained.encode_nodes(graph.x_dict, graph.edge_index_dict).items():
        torch.testing.assert_close(loaded.encode_nodes(graph.x_dict, graph.edge_index_dict)[node], value)
    with pytest.raises(ValueError, match="another architecture or schema"):
        HeteroGNN(**SCHEMA, hidden_channels=16, checkpoint_path=str(path))


def write_hgb_acm(root):
    raw = root / "acm" / "raw" / "ACM"
    raw.mkdir(parents=True)
    info = {"node.dat": {"node type": {"0": "paper", "1": "author"}},
            "link.dat": {"link type": {"0": {"start": "0", "end": "1", "meaning": "paper-author"},
                                       "1": {"start": "1", "end": "0", "meaning": "author-paper"}}},
            "label.dat": {"node type": {"0": {"0": "database", "1": "mining"}}}}  # fmt: skip
    (raw / "info.dat").write_text(json.dumps(info))
    nodes = [f"{i}\tp{i}\t0\t{i % 2},{1 - i % 2},0.5" for i in range(8)] + [f"{8 + j}\ta{j}\t1" for j in range(3)]
    (raw / "node.dat").write_text("\n".join(nodes) + "\n")
    links = [f"{i}\t{8 + i % 3}\t0\t1.0" for i in range(8)] + [f"{8 + i % 3}\t{i}\t1\t1.0" for i in range(8)]
    (raw / "link.dat").write_text("\n".join(links) + "\n")
    (raw / "label.dat").write_text("".join(f"{i}\tp{i}\t0\t{i % 2}\n" for i in range(6)))
    (raw / "label.dat.test").write_text("6\tp6\t0\t1\n7\tp7\t0\t1\n")  # HGB's placeholders: never used


def test_hgb_raw_files_load_through_pyg_and_only_label_dat_is_labelled(tmp_path):
    write_hgb_acm(tmp_path)
    dataset = {"class_path": "HGBDataset", "init_args": {"root": str(tmp_path), "name": "acm"}}
    data = HeteroGraphDataModule(dataset, target="paper", shots=1, val_shots=1, classnames=["database", "mining"])
    assert data.labelled().tolist() == [0, 1, 2, 3, 4, 5]  # label.dat, not label.dat.test
    assert data.graph["author"].x.shape == (3, 1)  # featureless authors: one constant feature
    splits = data.split_indices()
    assert len(splits["train"]) == 2 and len(splits["val"]) == 2 and set(splits["test"].tolist()) <= set(range(6))
    backbone = HeteroGNN({"paper": 3, "author": 1}, [["paper", "to", "author"], ["author", "to", "paper"]], 8)
    module = HetGPT(backbone, data.classnames, target="paper")
    trainer = Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(module, data)
    assert "val/acc" in trainer.callback_metrics


def test_contrastive_pretraining_writes_an_encoder_hetgpt_loads(tmp_path):
    from lightning_prompts.pretraining.hetero_contrastive import HeteroContrastive, hetero_view

    graph = HeteroSBM(papers=30, authors=10, subjects=3)[0]
    x_dict, edges = hetero_view(graph, 0.5, torch.Generator().manual_seed(0))
    kept = edges["paper", "to", "author"].shape[1] / graph["paper", "to", "author"].edge_index.shape[1]
    assert 0.2 < kept < 0.8 and x_dict["paper"].shape == graph["paper"].x.shape
    data = HeteroGraphDataModule(synthetic={"papers": 30, "authors": 10, "subjects": 3}, shots=2)
    backbone = HeteroGNN(**SCHEMA, hidden_channels=8)
    path = tmp_path / "hgnn.pt"
    module = HeteroContrastive(backbone, target="paper", sample_nodes=16, encoder_path=str(path))
    before = {k: v.clone() for k, v in module.encoder.state_dict().items()}
    Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path).fit(module, data)  # fmt: skip
    loaded = HeteroGNN(**SCHEMA, hidden_channels=8, checkpoint_path=str(path))
    assert any(not torch.equal(before[k], v) for k, v in loaded.encoder.state_dict().items())
    HetGPT(loaded, ["a", "b", "c"], target="paper")  # the prompt method takes it as its backbone


def test_contrastive_pretraining_step_follows_its_equations():
    """The documented step written out: in each of two views, a share of every type's nodes gets N(0.5, 0.5) features
    and a share of every edge type's edges is dropped; the target type's sampled nodes are projected, and the loss is
    GraphCL's ``loss_cal`` between the two views (τ = 0.2)."""
    from lightning_prompts.pretraining.hetero_contrastive import HeteroContrastive, hetero_view

    graph = HeteroSBM(papers=30, authors=10, subjects=3)[0]
    x_dict, edges = hetero_view(graph, 0.3, torch.Generator().manual_seed(0))
    for node, x in graph.x_dict.items():  # rows are either kept or replaced by noise around 0.5
        changed = (x_dict[node] != x.float()).any(dim=1)
        assert int(changed.sum()) < x.shape[0] and (int(changed.sum()) > 0 or x.shape[0] < 5)  # 3 subjects: maybe none
    for edge_type, edge_index in graph.edge_index_dict.items():  # the kept edges are some of the graph's
        kept = Counter(map(tuple, edges[edge_type].t().tolist()))
        assert 0 < kept.total() < edge_index.shape[1] and not kept - Counter(map(tuple, edge_index.t().tolist()))
    torch.manual_seed(0)
    module = HeteroContrastive(HeteroGNN(**SCHEMA, hidden_channels=8), target="paper", sample_nodes=12)
    widened(module).eval()
    torch.manual_seed(3)
    loss = module.contrastive_loss(graph)
    torch.manual_seed(3)  # the same draws, in the module's order: both views, then the sampled nodes
    views = [hetero_view(graph, 0.2) for _ in range(2)]
    chosen = torch.randperm(graph["paper"].num_nodes)[:12]
    z1, z2 = (module.projection(module.encoder(x, e)["paper"][chosen]) for x, e in views)
    expected = official_graphcl_loss(z1, z2, 0.2)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    assert abs(expected.item() - torch.log(torch.tensor(11.0)).item()) > 0.05  # the papers score apart


def test_the_docs_use_snippet_builds_the_method():
    page = Path(__file__).resolve().parents[2] / "docs" / "methods" / "hetgpt.md"
    namespace: dict = {}
    exec(docs_python(page)[0], namespace)
    model, data = namespace["model"], namespace["data"]
    assert type(model).__name__ == "HetGPT" and len(model.metapaths) == 2
    data.setup("fit")
    with torch.no_grad():
        assert model.eval()(data.val_dataloader().dataset[0]).logits.shape == (15, 3)


# HGB's link meanings as its preprocessing writes info.dat (THUDM/HGB, NC/benchmark/raw/preprocess.py): PyG names a
# relation after the text that follows the '-', or 'to' when that text is the destination type, so IMDB's misspelt
# "movie->actorh" becomes the relation '>actorh'
HGB_LINK_MEANINGS = {
    "acm": [("paper", "paper", "paper-cite-paper"), ("paper", "paper", "paper-ref-paper"),
            ("paper", "author", "paper-author"), ("author", "paper", "author-paper"),
            ("paper", "subject", "paper-subject"), ("subject", "paper", "subject-paper"),
            ("paper", "term", "paper-term"), ("term", "paper", "term-paper")],
    "dblp": [("author", "paper", "author-paper"), ("paper", "term", "paper-term"), ("paper", "venue", "paper-venue"),
             ("paper", "author", "paper-author"), ("term", "paper", "term-paper"), ("venue", "paper", "venue-paper")],
    "imdb": [("movie", "director", "movie->director"), ("director", "movie", "director->movie"),
             ("movie", "actor", "movie->actorh"), ("actor", "movie", "actor->movie"),
             ("movie", "keyword", "movie->keyword"), ("keyword", "movie", "keyword->movie")],
}  # fmt: skip


def write_hgb_schema(root, name: str) -> None:
    """A two-node-per-type HGB folder with the real link meanings: what PyG's naming makes of the real files."""
    links = HGB_LINK_MEANINGS[name]
    types = list(dict.fromkeys(t for src, dst, _ in links for t in (src, dst)))
    raw = root / name / "raw" / name.upper()
    raw.mkdir(parents=True)
    info = {"node.dat": {"node type": {str(i): t for i, t in enumerate(types)}},
            "link.dat": {"link type": {str(k): {"start": str(types.index(s)), "end": str(types.index(d)), "meaning": m}
                                       for k, (s, d, m) in enumerate(links)}},
            "label.dat": {"node type": {"0": {"0": "a", "1": "b"}}}}  # fmt: skip
    (raw / "info.dat").write_text(json.dumps(info))
    (raw / "node.dat").write_text("".join(f"{2 * i + j}\tn\t{i}\t1.0,0.0\n" for i in range(len(types)) for j in (0, 1)))
    edges = [f"{2 * types.index(s) + j}\t{2 * types.index(d) + j}\t{k}\t1.0\n" for k, (s, d, _) in enumerate(links)
             for j in (0, 1)]  # fmt: skip
    (raw / "link.dat").write_text("".join(edges))
    (raw / "label.dat").write_text("0\tn\t0\t0\n1\tn\t0\t1\n")
    (raw / "label.dat.test").write_text("")


@pytest.mark.parametrize("name", ["acm", "dblp", "imdb"])
def test_the_hgb_recipes_name_the_edge_types_pyg_makes_of_the_real_files(tmp_path, name):
    write_hgb_schema(tmp_path, name)
    made = set(HGBDataset(str(tmp_path), name)[0].edge_types)
    recipes = Path(__file__).resolve().parents[2] / "recipes" / "hetgpt"
    model = merged_section(recipes / f"_{name}.yaml", "model")["init_args"]
    assert {tuple(edge) for edge in model["backbone"]["init_args"]["edge_types"]} <= made
    if name == "imdb":
        assert ("movie", ">actorh", "actor") in made
        metapaths = merged_section(recipes / "imdb_5shot.yaml", "model")["init_args"]["metapaths"]
        assert {tuple(edge) for path in metapaths for edge in path} <= made
