"""The heterogeneous linear probe and full fine-tuning (HetGPT's baselines): their logits against a re-computation
on the encoder's embeddings, what trains, and a fit on the heterogeneous SBM."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer

from lightning_prompts.backbones.hetero_gnn import HeteroGNN
from lightning_prompts.data.hetero_graph import HeteroGraphDataModule, HeteroSBM
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods.hetero_fine_tuning import HeteroFineTuning
from lightning_prompts.methods.hetero_linear_probe import HeteroLinearProbe

SCHEMA = {"in_channels": {"paper": 16, "author": 16, "subject": 16},
          "edge_types": [["paper", "to", "author"], ["author", "to", "paper"], ["paper", "to", "subject"],
                         ["subject", "to", "paper"]], "hidden_channels": 8}  # fmt: skip


def fit(module, data, tmp_path, epochs=3):
    trainer = Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(module, data)
    return trainer


def test_probe_logits_and_loss_are_a_linear_layer_on_the_target_embeddings():
    graph = HeteroSBM(papers=20, authors=8, subjects=4, seed=1)[0]
    graph["paper"].target_mask = torch.arange(20) % 3 == 0
    torch.manual_seed(0)
    probe = HeteroLinearProbe(HeteroGNN(**SCHEMA, seed=3), ["a", "b", "c"], target="paper")
    with torch.no_grad():
        probe.head[0].weight.mul_(10)  # classes must score differently
    output = probe(graph)
    embeddings = probe.backbone.encoder(graph.x_dict, graph.edge_index_dict)["paper"][graph["paper"].target_mask]
    expected = embeddings @ probe.head[0].weight.T + probe.head[0].bias
    torch.testing.assert_close(output.logits, expected)
    labels = probe.batch_targets(graph)
    assert torch.equal(labels, graph["paper"].y[graph["paper"].target_mask])
    torch.testing.assert_close(probe.task_loss(output, labels), F.cross_entropy(expected, labels))
    assert output.logits.std(dim=-1).min() > 0.1


def test_probe_trains_the_head_only_and_fine_tuning_the_encoder_too(tmp_path):
    data = HeteroGraphDataModule(synthetic={"papers": 60, "authors": 20, "subjects": 6}, shots=3, val_shots=3,
                                 classnames=["a", "b", "c"])  # fmt: skip
    for method, encoder_changes in ((HeteroLinearProbe, False), (HeteroFineTuning, True)):
        torch.manual_seed(0)
        module = method(HeteroGNN(**SCHEMA), data.classnames, target="paper")
        encoder = {k: v.clone() for k, v in module.backbone.state_dict().items()}
        head = module.head[0].weight.detach().clone()
        trainer = fit(module, data, tmp_path)
        assert not torch.equal(module.head[0].weight, head)
        changed = any(not torch.equal(v, module.backbone.state_dict()[k]) for k, v in encoder.items())
        assert changed == encoder_changes, method.__name__
        saved = {k for k in module.state_dict() if k.startswith("backbone.")} & module.trainable_state_keys()
        assert bool(saved) == encoder_changes  # fine-tuning checkpoints carry the encoder, a probe's do not
        (metrics,) = trainer.test(module, data, verbose=False)
        assert 0.0 <= metrics["test/acc"] <= 1.0
    wrong = HeteroLinearProbe(HeteroGNN(**SCHEMA), ["a", "b", "c"], target="author")
    with pytest.raises(ConfigurationError, match="HeteroLinearProbe classifies 'author' nodes"):
        fit(wrong, data, tmp_path, epochs=1)
    with pytest.raises(ValueError, match="not a node type of the encoder"):
        HeteroFineTuning(HeteroGNN(**SCHEMA), ["a", "b"], target="movie")
