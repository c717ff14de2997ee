"""Point-MAE pre-training: Chamfer-L2 and masking against hand computations, the reconstruction loss
against a re-computation of the official ``Point_MAE.forward``, and an exported encoder that loads."""

from __future__ import annotations

import functools

import pytest
import torch
from lightning.pytorch import Trainer

from lightning_prompts.backbones.point_mae import PointMAE
from lightning_prompts.data.point_clouds import PointCloudDataModule
from lightning_prompts.optim import WarmupCosineLR
from lightning_prompts.pretraining.point_mae import PointMAEPretraining, chamfer_l2, random_patch_mask

TINY = {"num_patches": 8, "patch_size": 8, "width": 16, "depth": 2, "num_heads": 2}


def test_chamfer_l2_is_the_mean_squared_nearest_distance_both_ways():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 5, 3, generator=g), torch.randn(3, 7, 3, generator=g)
    forward = [min(float(((p - q) ** 2).sum()) for q in b[s]) for s in range(3) for p in a[s]]
    backward = [min(float(((p - q) ** 2).sum()) for p in a[s]) for s in range(3) for q in b[s]]
    expected = sum(forward) / len(forward) + sum(backward) / len(backward)
    assert chamfer_l2(a, b).item() == pytest.approx(expected, rel=1e-5)


def test_random_mask_hides_exactly_the_ratio_of_patches_per_cloud():
    torch.manual_seed(0)
    mask = random_patch_mask(64, 10, 0.6)
    assert mask.sum(1).eq(6).all()
    assert 0.45 < mask.float().mean(0).min() and mask.float().mean(0).max() < 0.75  # every patch gets hidden


def test_weight_decay_spares_norms_biases_and_the_mask_token_as_point_maes_builder():
    module = PointMAEPretraining(PointMAE(**TINY))
    decayed, spared = module.configure_optimizers().param_groups
    names = {id(p): n for n, p in module.named_parameters()}
    assert decayed["weight_decay"] == 0.05 and spared["weight_decay"] == 0.0
    assert {names[id(p)] for p in spared["params"]} == {
        n for n, p in module.named_parameters() if p.dim() == 1 or n.endswith(".bias") or "token" in n
    }
    assert any("mask_token" in names[id(p)] for p in spared["params"])
    assert all(p.dim() > 1 and "token" not in names[id(p)] for p in decayed["params"])
    assert len(decayed["params"]) + len(spared["params"]) == len(list(module.parameters()))


def test_reconstruction_loss_is_the_official_forward():
    torch.manual_seed(1)
    module = PointMAEPretraining(PointMAE(**TINY)).eval()
    points = torch.randn(2, 64, 3)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, [1, 4, 6, 7]] = True
    mask[1, [0, 2, 3, 5]] = True
    # Point_MAE.forward written out: boolean indexing keeps patch order; visible tokens + mask tokens
    centre, neighborhood = module.encoder.group(points)
    tokens = module.encoder.encoder(neighborhood)
    x_vis = tokens[~mask].reshape(2, 4, -1)
    x_vis = module.encoder.run(x_vis, module.encoder.pos_embed(centre[~mask].reshape(2, 4, 3)))
    pos_vis = module.decoder_pos_embed(centre[~mask]).reshape(2, -1, 16)
    pos_mask = module.decoder_pos_embed(centre[mask]).reshape(2, -1, 16)
    x = torch.cat([x_vis, module.mask_token.expand(2, 4, -1)], dim=1)
    pos = torch.cat([pos_vis, pos_mask], dim=1)
    for block in module.decoder:
        x = block(x + pos)
    x_rec = module.decoder_norm(x[:, -4:])
    rebuilt = module.increase_dim(x_rec.transpose(1, 2)).transpose(1, 2).reshape(8, -1, 3)
    gt = neighborhood[mask].reshape(8, -1, 3)
    distance = ((rebuilt[:, :, None] - gt[:, None]) ** 2).sum(-1)
    expected = distance.min(2).values.mean() + distance.min(1).values.mean()
    torch.testing.assert_close(module.reconstruction_loss(points, mask), expected)
    with pytest.raises(ValueError, match="same, non-zero number"):
        module.reconstruction_loss(points, torch.zeros(2, 8, dtype=torch.bool))


def test_pretraining_writes_an_encoder_the_backbone_loads(tmp_path, trainer_kwargs):
    path = tmp_path / "pretrain.pth"
    schedule = functools.partial(WarmupCosineLR, warmup_epochs=1, cosine_span="from_start")
    module = PointMAEPretraining(PointMAE(**TINY), encoder_path=str(path), lr_scheduler=schedule)
    before = module.encoder.blocks[0].attn.qkv.weight.detach().clone()
    data = PointCloudDataModule("shapes", num_points=64, shapes_per_class=4, shapes_test_per_class=1, batch_size=10)
    trainer = Trainer(max_epochs=2, limit_train_batches=1, limit_val_batches=1, **trainer_kwargs)
    trainer.fit(module, data)
    assert trainer.lr_scheduler_configs[0].scheduler.max_epochs == 2
    assert not torch.equal(module.encoder.blocks[0].attn.qkv.weight, before)
    saved = torch.load(path, weights_only=True)
    assert "MAE_encoder.blocks.blocks.0.attn.qkv.weight" in saved["base_model"]  # Point-MAE's layout
    loaded = PointMAE(str(path), **TINY)
    for key, value in module.encoder.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    with pytest.raises(TypeError, match="needs a PointMAE"):
        from lightning_prompts.backbones.gnn import GNN

        PointMAEPretraining(GNN(in_channels=4, hidden_channels=4, num_layers=2))
