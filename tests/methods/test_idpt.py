"""IDPT and point VPT-deep against a re-computation of the official code (ICCV23-IDPT's ``Point_MAE.py``
and ``dgcnn.py``) on a tiny Point-MAE loaded from a checkpoint in the official key format."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Trainer
from torch.nn import functional as F

from lightning_prompts.backbones.point_mae import PointMAE
from lightning_prompts.backbones.point_ops import group_patches
from lightning_prompts.methods.idpt import IDPT
from lightning_prompts.methods.point_vpt import PointVPT

WIDTH, DEPTH, HEADS, PATCHES, PATCH_SIZE = 16, 3, 2, 8, 8
CLASSES = ["chair", "table", "lamp"]


def randomise(module: torch.nn.Module, seed: int, scale: float = 0.5) -> None:
    """Weights large enough that classes score differently, and BatchNorm statistics that are not identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=g))
            elif name.endswith(".weight") and tensor.dim() == 1:  # norm scales
                tensor.copy_(1 + 0.2 * torch.randn(tensor.shape, generator=g))
            else:
                tensor.copy_(scale * torch.randn(tensor.shape, generator=g))


@pytest.fixture
def checkpoint(tmp_path):
    """A Point-MAE pre-training checkpoint as its runner writes it: ``base_model`` under DataParallel's
    ``module.`` and the ``MAE_encoder.`` / ``MAE_decoder.`` halves, plus optimizer state and metrics."""
    source = PointMAE(num_patches=PATCHES, patch_size=PATCH_SIZE, width=WIDTH, depth=DEPTH, num_heads=HEADS)
    randomise(source, seed=1)
    base_model = {}
    for key, value in source.model.state_dict().items():
        official = key.replace("blocks.", "blocks.blocks.", 1) if key.startswith("blocks.") else key
        base_model[f"module.MAE_encoder.{official}"] = value
    base_model["module.mask_token"] = torch.zeros(1, 1, WIDTH)
    base_model["module.MAE_decoder.blocks.0.norm1.weight"] = torch.ones(WIDTH)
    path = tmp_path / "pretrain.pth"
    torch.save({"base_model": base_model, "optimizer": {"state": {}, "param_groups": []}, "epoch": 300,
                "metrics": {}, "best_metrics": {}}, path)  # fmt: skip
    return path, source.model.state_dict()


# -- the official computation, written out -----------------------------------------------------------------
def conv(weight, bias, x):  # a 1x1 Conv1d/Conv2d on (B, C, ...) inputs
    out = torch.einsum("oc,bc...->bo...", weight.reshape(weight.shape[0], weight.shape[1]), x)
    return out if bias is None else out + bias.view(1, -1, *([1] * (x.dim() - 2)))


def batch_norm(s, prefix, x):  # eval-mode BatchNorm over dim 1
    shape = (1, -1, *([1] * (x.dim() - 2)))
    mean, var = s[f"{prefix}.running_mean"].view(shape), s[f"{prefix}.running_var"].view(shape)
    return (x - mean) / torch.sqrt(var + 1e-5) * s[f"{prefix}.weight"].view(shape) + s[f"{prefix}.bias"].view(shape)


def official_encoder(s, patches):
    bs, g, n, _ = patches.shape
    x = patches.reshape(bs * g, n, 3).transpose(2, 1)
    f = F.relu(
        batch_norm(s, "encoder.first_conv.1", conv(s["encoder.first_conv.0.weight"], s["encoder.first_conv.0.bias"], x))
    )
    f = conv(s["encoder.first_conv.3.weight"], s["encoder.first_conv.3.bias"], f)
    f = torch.cat([f.max(dim=2, keepdim=True)[0].expand(-1, -1, n), f], dim=1)
    f = F.relu(
        batch_norm(
            s, "encoder.second_conv.1", conv(s["encoder.second_conv.0.weight"], s["encoder.second_conv.0.bias"], f)
        )
    )
    f = conv(s["encoder.second_conv.3.weight"], s["encoder.second_conv.3.bias"], f)
    return f.max(dim=2)[0].reshape(bs, g, -1)  # fmt: skip


def official_block(s, i, x):
    p = f"blocks.{i}."
    h = F.layer_norm(x, (WIDTH,), s[p + "norm1.weight"], s[p + "norm1.bias"])
    b, n, c = h.shape
    qkv = (h @ s[p + "attn.qkv.weight"].t()).reshape(b, n, 3, HEADS, c // HEADS).permute(2, 0, 3, 1, 4)
    attn = ((qkv[0] @ qkv[1].transpose(-2, -1)) * (c // HEADS) ** -0.5).softmax(dim=-1)
    x = x + (attn @ qkv[2]).transpose(1, 2).reshape(b, n, c) @ s[p + "attn.proj.weight"].t() + s[p + "attn.proj.bias"]
    h = F.layer_norm(x, (WIDTH,), s[p + "norm2.weight"], s[p + "norm2.bias"])
    h = F.gelu(h @ s[p + "mlp.fc1.weight"].t() + s[p + "mlp.fc1.bias"])
    return x + h @ s[p + "mlp.fc2.weight"].t() + s[p + "mlp.fc2.bias"]


def official_dgcnn(m, x, k):
    """``DGCNNView.forward`` on ``x`` ``(B, C, G)``: kNN by ``-xx - inner - xxᵀ`` (the point itself included)."""

    def graph_feature(x):
        inner = -2 * torch.matmul(x.transpose(2, 1), x)
        xx = torch.sum(x**2, dim=1, keepdim=True)
        idx = (-xx - inner - xx.transpose(2, 1)).topk(k=k, dim=-1)[1]
        xt = x.transpose(2, 1)
        feature = xt[torch.arange(x.shape[0])[:, None, None], idx]
        centre = xt.unsqueeze(2).repeat(1, 1, k, 1)
        return torch.cat((feature - centre, centre), dim=3).permute(0, 3, 1, 2)

    outs = []
    for stage in range(3):
        p = f"generator.edge_convs.{stage}."
        x = F.leaky_relu(batch_norm(m, p + "1", conv(m[p + "0.weight"], None, graph_feature(x))), 0.2).max(dim=-1)[0]
        outs.append(x)
    x = F.leaky_relu(
        batch_norm(m, "generator.fuse.1", conv(m["generator.fuse.0.weight"], None, torch.cat(outs, 1))), 0.2
    )
    return F.adaptive_max_pool1d(x, 1).view(x.shape[0], -1).unsqueeze(1)  # fmt: skip


def official_head(m, f):
    for linear, norm in (("head.0", "head.1"), ("head.4", "head.5")):
        f = F.relu(batch_norm(m, norm, f @ m[f"{linear}.weight"].t() + m[f"{linear}.bias"]))
    return f @ m["head.8.weight"].t() + m["head.8.bias"]


def official_idpt(s, m, points, prompt_layer):
    """``PointTransformer.forward`` (``cls_type: all``) with ``TransformerPromptEncoderLayerI``."""
    center, neighborhood = group_patches(points, PATCHES, PATCH_SIZE)
    tokens = official_encoder(s, neighborhood)
    b = points.shape[0]
    pos_centers = F.gelu(center @ s["pos_embed.0.weight"].t() + s["pos_embed.0.bias"]) @ s["pos_embed.2.weight"].t()
    pos_centers = pos_centers + s["pos_embed.2.bias"]
    x = torch.cat((m["cls_token"].expand(b, -1, -1), tokens), dim=1)
    pos = torch.cat((m["cls_pos"].expand(b, -1, -1), m["prompt_pos"].expand(b, -1, -1), pos_centers), dim=1)
    pos_prompt = pos[:, 1:2, :]
    pos = torch.cat((pos[:, :1, :], pos[:, -PATCHES:, :]), dim=1)
    for i in range(DEPTH):
        if i == prompt_layer:
            prompt = official_dgcnn(m, x[:, -PATCHES:].permute(0, 2, 1), k=min(20, PATCHES))
            x = torch.cat((x[:, :1, :], prompt, x[:, -PATCHES:, :]), dim=1)
            pos = torch.cat((pos[:, :1, :], pos_prompt, pos[:, -PATCHES:, :]), dim=1)
        x = official_block(s, i, x + pos)
    x = F.layer_norm(x, (WIDTH,), s["norm.weight"], s["norm.bias"])
    return official_head(m, torch.cat([x[:, 0], x[:, 1], x[:, 2:].max(1)[0]], dim=-1))


def official_vpt_deep(s, m, points, count):
    """``PointTransformerPromptDeep.forward`` with ``TransformerEncoderDeep``."""
    center, neighborhood = group_patches(points, PATCHES, PATCH_SIZE)
    b = points.shape[0]
    pos_centers = F.gelu(center @ s["pos_embed.0.weight"].t() + s["pos_embed.0.bias"]) @ s["pos_embed.2.weight"].t()
    x = torch.cat((m["cls_token"].expand(b, -1, -1), official_encoder(s, neighborhood)), dim=1)
    pos = torch.cat((m["cls_pos"].expand(b, -1, -1), pos_centers + s["pos_embed.2.bias"]), dim=1)
    for i in range(DEPTH):
        x, pos = x[:, : PATCHES + 1, :], pos[:, : PATCHES + 1, :]
        x = torch.cat((x, m[f"prompts.{i}"].expand(b, -1, -1)), dim=1)
        pos = torch.cat((pos, m[f"prompt_positions.{i}"].expand(b, -1, -1)), dim=1)
        x = official_block(s, i, x + pos)
    x = F.layer_norm(x, (WIDTH,), s["norm.weight"], s["norm.bias"])
    assert x.shape[1] == PATCHES + 1 + count
    return official_head(m, torch.cat([x[:, 0], x[:, 1 : PATCHES + 1, :].max(1)[0]], dim=-1))


# -- tests ---------------------------------------------------------------------------------------------------
def backbone_from(path):
    return PointMAE(str(path), num_patches=PATCHES, patch_size=PATCH_SIZE, width=WIDTH, depth=DEPTH, num_heads=HEADS)


def test_point_mae_checkpoint_loads_and_encodes_as_the_official_encoder(checkpoint):
    path, weights = checkpoint
    backbone = backbone_from(path)
    for key, value in weights.items():
        assert torch.equal(backbone.model.state_dict()[key], value), key
    points = torch.randn(2, 64, 3, generator=torch.Generator().manual_seed(0))
    patches = backbone.embed(points)
    centres, neighbourhoods = group_patches(points, PATCHES, PATCH_SIZE)
    torch.testing.assert_close(patches.tokens, official_encoder(weights, neighbourhoods), rtol=1e-4, atol=1e-4)
    encoded = backbone.encode(patches.tokens, patches.positions)
    expected = patches.tokens
    for i in range(DEPTH):
        expected = official_block(weights, i, expected + patches.positions)
    expected = F.layer_norm(expected, (WIDTH,), weights["norm.weight"], weights["norm.bias"])
    assert expected.std() > 0.5
    torch.testing.assert_close(encoded.tokens, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("data_parallel", [True, False])
def test_a_fine_tuned_checkpoint_loads_its_encoder_and_leaves_the_rest(checkpoint, tmp_path, data_parallel):
    """The layout of a Point-MAE / IDPT fine-tuning checkpoint: ``base_model`` is the whole classifier (no
    ``MAE_encoder.`` prefix; ``module.`` under DataParallel), with the [CLS] token, the head and the prompt
    generator beside the encoder. The backbone takes the encoder's tensors, identical, and nothing else."""
    _, weights = checkpoint
    prefix = "module." if data_parallel else ""
    base_model = {
        f"{prefix}{key.replace('blocks.', 'blocks.blocks.', 1) if key.startswith('blocks.') else key}": value + 1.0
        for key, value in weights.items()
        if value.is_floating_point()
    }
    base_model.update({f"{prefix}{k}": v for k, v in weights.items() if not v.is_floating_point()})
    base_model[f"{prefix}cls_token"] = torch.zeros(1, 1, WIDTH)
    base_model[f"{prefix}cls_pos"] = torch.zeros(1, 1, WIDTH)
    base_model[f"{prefix}cls_head_finetune.0.weight"] = torch.zeros(256, 2 * WIDTH)
    base_model[f"{prefix}prompt_generator.conv1.weight"] = torch.zeros(WIDTH, 2 * WIDTH, 1, 1)
    path = tmp_path / "ckpt-best.pth"
    torch.save({"base_model": base_model, "epoch": 299, "metrics": {"acc": 91.2}}, path)
    loaded = backbone_from(path).model.state_dict()
    assert set(loaded) == set(weights)
    for key, value in weights.items():
        expected = value + 1.0 if value.is_floating_point() else value
        assert torch.equal(loaded[key], expected), key


@pytest.mark.parametrize("prompt_layer", [0, 2])
def test_idpt_forward_is_the_official_forward(checkpoint, prompt_layer):
    path, weights = checkpoint
    method = IDPT(backbone_from(path), CLASSES, prompt_layer=prompt_layer)
    randomise(torch.nn.ModuleDict({"generator": method.generator, "head": method.head}), seed=2)
    with torch.no_grad():
        method.cls_token.normal_()
        method.cls_pos.normal_()
    method.eval()
    points = torch.randn(3, 64, 3, generator=torch.Generator().manual_seed(4))
    logits = method.forward_batch({"points": points}).logits
    expected = official_idpt(weights, method.state_dict(), points, prompt_layer)
    assert expected.std() > 0.1  # classes score differently
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_point_vpt_deep_forward_is_the_official_forward(checkpoint):
    path, weights = checkpoint
    method = PointVPT(backbone_from(path), CLASSES, num_tokens=3)
    randomise(torch.nn.ModuleDict({"head": method.head}), seed=3)
    with torch.no_grad():
        for param in [method.cls_token, method.cls_pos, *method.prompts, *method.prompt_positions]:
            param.normal_()
    method.eval()
    points = torch.randn(3, 64, 3, generator=torch.Generator().manual_seed(5))
    expected = official_vpt_deep(weights, method.state_dict(), points, 3)
    torch.testing.assert_close(method.forward_batch({"points": points}).logits, expected, rtol=1e-4, atol=1e-4)


def test_trained_parameters_and_weight_decay_follow_the_official_optimizer():
    backbone = PointMAE(num_patches=PATCHES, patch_size=PATCH_SIZE, width=WIDTH, depth=DEPTH, num_heads=HEADS)
    method = IDPT(backbone, CLASSES, prompt_layer=1)
    groups = {g["name"]: {id(p) for p in g["params"]} for g in method.param_groups()}
    names = {id(p): n for n, p in method.named_parameters()}
    no_decay = {names[i] for i in groups["prompt_no_decay"] | groups["head_no_decay"]}
    decay = {names[i] for i in groups["prompt"] | groups["head"]}
    # the official only_new split: tokens, 1-D tensors and biases without decay
    assert "cls_token" in no_decay and "cls_pos" in decay and "generator.edge_convs.0.0.weight" in decay
    assert "generator.edge_convs.0.1.weight" in no_decay and "head.0.bias" in no_decay and "head.0.weight" in decay
    assert not any(p.requires_grad for p in method.backbone.parameters())
    # the prompt's position embedding is never trained (the official optimizer skips it), but is seeded
    assert "prompt_pos" not in dict(method.named_parameters())
    again = IDPT(backbone, CLASSES, prompt_layer=1)
    assert torch.equal(method.prompt_pos, again.prompt_pos) and 0 < method.prompt_pos.std() < 0.05


def test_idpt_trains_and_checks_its_inputs(trainer_kwargs):
    backbone = PointMAE(num_patches=PATCHES, patch_size=PATCH_SIZE, width=WIDTH, depth=DEPTH, num_heads=HEADS)
    with pytest.raises(ValueError, match="prompt_layer must be in"):
        IDPT(backbone, CLASSES, prompt_layer=DEPTH)
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        backbone.embed(torch.randn(2, 64, 6))
    with pytest.raises(ValueError, match="cannot make"):
        backbone.embed(torch.randn(2, 4, 3))
    method = IDPT(backbone, CLASSES, prompt_layer=1, feature="prompt")
    assert method.head[0].in_features == WIDTH
    before = method.generator.fuse[0].weight.detach().clone()
    data = [{"points": torch.randn(4, 64, 3), "label": torch.tensor([0, 1, 2, 0])}]
    loader = torch.utils.data.DataLoader(data, batch_size=None)
    Trainer(max_steps=2, **trainer_kwargs).fit(method, loader)
    assert not torch.equal(method.generator.fuse[0].weight, before)
    assert math.isfinite(float(method.forward_batch(data[0]).logits.detach().sum()))


def test_linear_probe_is_a_linear_layer_on_max_and_mean_of_the_frozen_patch_tokens(checkpoint):
    from lightning_prompts.methods.point_linear_probe import PointLinearProbe

    path, weights = checkpoint
    method = PointLinearProbe(backbone_from(path), CLASSES).eval()
    assert {n for n, p in method.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}
    points = torch.randn(2, 64, 3, generator=torch.Generator().manual_seed(6))
    centres, neighbourhoods = group_patches(points, PATCHES, PATCH_SIZE)
    x = official_encoder(weights, neighbourhoods)
    pos = F.gelu(centres @ weights["pos_embed.0.weight"].t() + weights["pos_embed.0.bias"])
    pos = pos @ weights["pos_embed.2.weight"].t() + weights["pos_embed.2.bias"]
    for i in range(DEPTH):
        x = official_block(weights, i, x + pos)
    x = F.layer_norm(x, (WIDTH,), weights["norm.weight"], weights["norm.bias"])
    feature = torch.cat([x.max(1)[0], x.mean(1)], dim=-1)
    output = method.forward_batch({"points": points})
    torch.testing.assert_close(output.pooled_features, feature, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(output.logits, method.head(feature))
