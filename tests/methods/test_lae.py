"""LAE, its PET modules, the class-incremental stream and the continual metrics."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer

from lightning_prompts.backbones import TimmViT
from lightning_prompts.backbones.hooks import BlockContext, attached
from lightning_prompts.callbacks import MomentumAccumulation
from lightning_prompts.data import ClassIncrementalDataModule
from lightning_prompts.data.synthetic import write_image
from lightning_prompts.errors import ConfigurationError, DatasetError
from lightning_prompts.methods import LAE
from lightning_prompts.metrics import ContinualAccuracy, TaskAccuracy, average_incremental_accuracy, forgetting
from lightning_prompts.prompts.pet import BlockPET, PETHooks


def block_with_pet(vit: TimmViT, x: torch.Tensor, pet: BlockPET) -> torch.Tensor:
    """Block 0 of ``vit`` (timm's own block) with ``pet`` plugged in through the block-hook seam."""
    context = BlockContext(0, vit.depth, vit.num_prefix_tokens, "vision")
    with attached(PETHooks({0: pet}), vit.block_sites()[:1], [context], vit.name):
        return vit.model.blocks[0](x)


def randomised(pet: BlockPET, seed: int = 0) -> BlockPET:
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in pet.parameters():
            param.copy_(torch.randn_like(param) * 0.3 + (1.0 if param.dim() == 0 else 0.0))
    return pet


def reference_block(block, x: torch.Tensor, pet: BlockPET) -> torch.Tensor:
    """LAE's block written out: adapter beside the attention on LN1's output, LoRA on K and V of the
    qkv projection, prefix keys/values after CLS with the prefix slice of the attention renormalised."""
    attn = block.attn
    heads, dim = attn.num_heads, x.shape[-1]
    head_dim = dim // heads
    h = block.norm1(x)
    qkv = h @ attn.qkv.weight.t() + attn.qkv.bias
    if pet.lora is not None:
        lora = pet.lora
        zeros = torch.zeros_like(h)
        k_delta = lora.scale_k * (h @ lora.a_k.t() @ lora.b_k.t())
        v_delta = lora.scale_v * (h @ lora.a_v.t() @ lora.b_v.t())
        qkv = qkv + torch.cat([zeros, k_delta, v_delta], dim=-1)
    q, k, v = qkv.split(dim, dim=-1)
    length = 0
    if pet.prefix is not None:  # LAE inserts at position 1, after the class token
        pk, pv = pet.prefix.scale_k * pet.prefix.keys, pet.prefix.scale_v * pet.prefix.values
        length = pk.shape[0]
        k = torch.cat([k[:, :1], pk.expand(len(x), -1, -1), k[:, 1:]], dim=1)
        v = torch.cat([v[:, :1], pv.expand(len(x), -1, -1), v[:, 1:]], dim=1)

    def split(t):
        return t.reshape(len(x), t.shape[1], heads, head_dim).transpose(1, 2)

    q, k, v = split(q), split(k), split(v)
    weights = ((q @ k.transpose(-2, -1)) * head_dim**-0.5).softmax(dim=-1)
    if length:
        lamb = weights[..., 1 : 1 + length].sum(-1, keepdim=True)
        weights = torch.cat([weights[..., :1], weights[..., 1 : 1 + length] / lamb, weights[..., 1 + length :]], -1)
    out = (weights @ v).transpose(1, 2).reshape(len(x), -1, dim)
    out = out @ attn.proj.weight.t() + attn.proj.bias
    if pet.adapter is not None:
        adapter = pet.adapter
        out = out + adapter.scale * adapter.up(F.gelu(adapter.down(h)))
    x = x + out
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize("kind", ["adapter", "lora", "prefix"])
def test_pet_blocks_follow_lae(kind, tiny_vit):
    block = tiny_vit.model.blocks[0]
    x = torch.randn(2, 17, tiny_vit.width)
    fresh = BlockPET(kind, tiny_vit.width, prefix_length=3)
    if kind != "prefix":  # adapters and LoRA start at zero: the block is unchanged
        assert torch.allclose(block_with_pet(tiny_vit, x, fresh), block(x), atol=1e-6)
    pet = randomised(BlockPET(kind, tiny_vit.width, prefix_length=3))
    with torch.no_grad():
        assert torch.allclose(block_with_pet(tiny_vit, x, pet), reference_block(block, x, pet), atol=1e-5)
        assert not torch.allclose(block_with_pet(tiny_vit, x, pet), block(x), atol=1e-3)


def test_pet_initialisation_is_lae(tiny_vit):
    adapter = BlockPET("adapter", 32).adapter
    assert adapter.down.weight.shape == (5, 32) and torch.equal(adapter.up.weight, torch.zeros(32, 5))
    lora = BlockPET("lora", 32).lora
    assert lora.a_k.shape == (5, 32) and torch.equal(lora.b_v, torch.zeros(32, 5))
    prefix = BlockPET("prefix", 32).prefix
    assert prefix.keys.shape == (10, 32) and 0 <= prefix.keys.min() and prefix.values.max() <= 0.01
    scales = (adapter.scale, lora.scale_k, lora.scale_v, prefix.scale_k, prefix.scale_v)
    assert all(float(s.detach()) == 1.0 for s in scales)


def tiny_stream(num_tasks: int = 3, epochs_per_task: int = 2, **kwargs) -> ClassIncrementalDataModule:
    spec = {"num_classes": 2 * num_tasks, "images_per_class": 4, "image_size": 32}
    return ClassIncrementalDataModule(
        num_tasks=num_tasks, epochs_per_task=epochs_per_task, synthetic=spec, image_size=32, batch_size=4, **kwargs
    )


class StreamSpy(Callback):
    def __init__(self) -> None:
        self.trainable, self.online, self.offline_started, self.heads = [], [], [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:  # after the module's own epoch-start hook
            self.trainable.append(all(p.requires_grad for p in pl_module.pets.parameters()))
            self.heads.append([h.weight.detach().clone() for h in pl_module.heads])

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.online.append([p.detach().clone() for p in pl_module.pets.parameters()])
        accumulation = next(c for c in trainer.callbacks if isinstance(c, MomentumAccumulation))
        self.offline_started.append(accumulation.offline is not None)


def test_three_task_stream_freezes_accumulates_and_keeps_old_heads(trainer_kwargs):
    data = tiny_stream()
    model = LAE(TimmViT("tiny"), data.classnames, num_tasks=3, pet_blocks=[0, 1], freeze_epochs=1, ema_decay=0.5)
    spy = StreamSpy()
    trainer = Trainer(max_epochs=6, reload_dataloaders_every_n_epochs=1, callbacks=[spy], **trainer_kwargs)
    trainer.fit(model, data)
    steps_per_epoch = len(spy.online) // 6
    # freeze schedule: the first epoch of every task but the first
    assert spy.trainable == [True, True, False, True, False, True]
    frozen_epoch = spy.online[2 * steps_per_epoch : 3 * steps_per_epoch]
    assert all(torch.equal(a, b) for step in frozen_epoch for a, b in zip(step, frozen_epoch[0]))
    # the offline copy is taken at the start of the second task's first step, before its update (what the
    # first task left, as LAE copies at the task switch), and is the EMA from there
    assert spy.offline_started == [False] * (2 * steps_per_epoch) + [True] * (4 * steps_per_epoch)
    expected = spy.online[2 * steps_per_epoch - 1]
    for online in spy.online[2 * steps_per_epoch :]:
        expected = [0.5 * e + 0.5 * o for e, o in zip(expected, online)]
    accumulation = next(c for c in trainer.callbacks if isinstance(c, MomentumAccumulation))
    for offline, reference in zip(accumulation.offline, expected):
        assert torch.allclose(offline, reference, atol=1e-6)
    # current-task-only loss: a head moves only during its own task
    head_at = spy.heads + [[h.weight.detach() for h in model.heads]]
    assert torch.equal(head_at[2][0], head_at[6][0])  # task 0's head after task 0
    assert torch.equal(head_at[0][2], head_at[4][2])  # task 2's head before task 2
    assert not torch.equal(head_at[4][2], head_at[6][2])
    # validation after each task: R[t, j] recorded for seen tasks, metrics logged
    history = model.evaluator.history
    assert torch.isnan(history.matrix[0, 1:]).all() and not torch.isnan(history.matrix[2]).any()
    metrics = trainer.callback_metrics
    assert torch.isclose(metrics["val/acc"], history.task_end[2])
    assert torch.isclose(metrics["val/avg_incremental_acc"], history.task_end.mean())
    assert torch.isclose(metrics["val/forgetting"], forgetting(history.matrix, 2))
    checkpoint = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)  # the history is checkpointed
    assert torch.allclose(checkpoint["lightning_prompts"]["evaluator"]["matrix"], history.matrix.cpu(), equal_nan=True)
    assert all(p.requires_grad for p in model.pets.parameters())
    # evaluation ensembles the online and offline PET by the per-class max of their probabilities
    model.eval()
    images = torch.randn(3, 3, 32, 32)
    online = model(images).logits
    saved = [p.detach().clone() for p in model.pets.parameters()]
    with torch.no_grad():
        for param, offline in zip(model.pets.parameters(), accumulation.offline):
            param.copy_(offline)
        offline_logits = model(images).logits
        for param, value in zip(model.pets.parameters(), saved):
            param.copy_(value)
    expected = torch.maximum(F.softmax(online, -1), F.softmax(offline_logits, -1))
    assert torch.allclose(model.evaluation_scores({"image": images}, online), expected, atol=1e-6)


def test_lae_scores_only_seen_tasks_and_checks_the_stream(trainer_kwargs):
    data = tiny_stream()
    model = LAE(TimmViT("tiny"), data.classnames, num_tasks=3, pet="lora", pet_blocks=[0])
    images = torch.randn(2, 3, 32, 32)
    assert model(images).logits.shape == (2, 2)
    model.current_task = 2
    assert model(images).logits.shape == (2, 6)
    wrong = LAE(TimmViT("tiny"), data.classnames, num_tasks=2, pet_blocks=[0])
    trainer = Trainer(max_epochs=1, **trainer_kwargs)
    with pytest.raises(ConfigurationError, match="num_tasks=2 but the data stream has 3"):
        trainer.fit(wrong, data)
    with pytest.raises(ValueError, match="pet_blocks"):
        LAE(TimmViT("tiny"), data.classnames, num_tasks=3, pet_blocks=[7])


def test_continual_metrics_match_their_definitions():
    metric = TaskAccuracy(3)
    scores = torch.eye(4)[[0, 1, 2, 3, 3, 0]]
    metric.update(scores, torch.tensor([0, 1, 2, 0, 3, 0]), torch.tensor([0, 0, 1, 0, 1, 0]))
    overall, per_task = metric.compute()
    assert overall == pytest.approx(5 / 6)
    assert per_task[0] == pytest.approx(3 / 4) and per_task[1] == 1.0 and torch.isnan(per_task[2])
    matrix = torch.tensor([[0.9, float("nan"), float("nan")], [0.7, 0.8, float("nan")], [0.6, 0.5, 0.9]])
    # task 0: best 0.9 -> 0.6; task 1: best 0.8 -> 0.5
    assert forgetting(matrix, 2) == pytest.approx(0.3)
    assert forgetting(matrix, 0) == 0
    assert average_incremental_accuracy(torch.tensor([0.9, 0.7, float("nan")])) == pytest.approx(0.8)
    history = ContinualAccuracy(3)
    for task in range(3):
        history.update(task, torch.tensor([0.9, 0.7, 0.6][task]), matrix[task])
    assert history.compute()["acc"] == pytest.approx(0.6)
    assert history.compute()["avg_incremental_acc"] == pytest.approx(0.7333, abs=1e-4)
    assert history.compute()["forgetting"] == pytest.approx(0.3)


def write_cifar100(root, per_class: int = 2) -> None:
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        labels = [label for label in range(100) for _ in range(per_class)]
        data = rng.integers(0, 255, size=(len(labels), 3072), dtype=np.uint8)
        (base / split).write_bytes(pickle.dumps({"data": data, "fine_labels": labels}))
    names = [f"class_{i}" for i in range(100)]
    (base / "meta").write_bytes(pickle.dumps({"fine_label_names": names}))


def test_cifar100_stream_follows_the_class_order(tmp_path):
    write_cifar100(tmp_path)
    order = list(range(99, -1, -1))
    data = ClassIncrementalDataModule("cifar100", tmp_path, num_tasks=10, class_order=order, image_size=32)
    assert data.classnames[:2] == ["class 99", "class 98"]
    first = data._subset("train", [0], train=True)
    assert sorted(set(first.labels)) == list(range(10)) and set(first.tasks) == {0}
    assert first[0]["image"].shape == (3, 32, 32) and 0 <= float(first[0]["image"].min())  # no normalisation
    seen = data._subset("test", [0, 1], train=False)
    assert sorted(set(seen.tasks)) == [0, 1] and len(seen) == 20 * 2
    # each image is its pickled row (3072 values: the red, green and blue 32×32 planes), under its reordered label
    stored = pickle.loads((tmp_path / "cifar-100-python" / "train").read_bytes())
    images, labels = data.data()["train"]
    for index in (0, 57, 199):
        planes = stored["data"][index].reshape(3, 32, 32).transpose(1, 2, 0)
        assert np.array_equal(images[index], planes) and labels[index] == stored["fine_labels"][index]
    kept = next(i for i, label in enumerate(labels) if label in order[:10])  # task 0: classes 99..90, relabelled
    assert np.array_equal(first.images[0], images[kept]) and first.labels[0] == order.index(labels[kept])
    with pytest.raises(DatasetError, match="permutation"):
        ClassIncrementalDataModule("cifar100", tmp_path, class_order=[0, 1]).data()
    with pytest.raises(DatasetError, match="cannot be cut into 7 equal tasks"):
        ClassIncrementalDataModule("cifar100", tmp_path, num_tasks=7).data()
    with pytest.raises(DatasetError, match="cifar-100-python/train does not exist"):
        ClassIncrementalDataModule("cifar100", tmp_path / "none").data()


def test_imagenet_r_lists_are_read_and_bad_lines_named(tmp_path):
    base = tmp_path / "imagenet-r"
    lines = []
    for label, wnid in enumerate(["n01443537", "n01484850"]):
        for index in range(2):
            write_image(base / "imagenet-r" / wnid / f"{index}.jpg", label, index, 8, 0)
            lines.append(f"imagenet-r/{wnid}/{index}.jpg {label}")
    (base / "train_list.txt").write_text("\n".join(lines) + "\n")
    (base / "val_list.txt").write_text("\n".join(lines[::2]) + "\n")
    data = ClassIncrementalDataModule("imagenet_r", tmp_path, num_tasks=2, image_size=32)
    assert data.classnames == ["goldfish", "great white shark"]
    data.setup("fit")
    (base / "val_list.txt").write_text("imagenet-r/n01443537/0.jpg\n")
    with pytest.raises(DatasetError, match=r"val_list.txt: line 1 is not '<path> <label>'"):
        ClassIncrementalDataModule("imagenet_r", tmp_path, num_tasks=2).data()


def test_logits_are_the_seen_heads_on_the_final_class_token_and_training_scores_the_current_task_only():
    """LAE's forward written out (timm's ViT with LAE's blocks where PETs sit, the final [CLS], every seen task's
    head concatenated) and its loss: cross-entropy on the current task's logits with shifted targets while training,
    over every seen class when evaluating."""
    data = tiny_stream()
    torch.manual_seed(0)
    model = LAE(TimmViT("tiny"), data.classnames, num_tasks=3, pet="prefix", pet_blocks=[0, 1], prefix_length=3)
    for index, pet in model.pets.items():
        randomised(pet, seed=int(index))
    with torch.no_grad():
        for head in model.heads:
            head.weight.normal_(0, 0.5)
    model.current_task = 1
    images = torch.randn(4, 3, 32, 32)
    vit = model.backbone.model
    with torch.no_grad():
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(images))))
        for index, block in enumerate(vit.blocks):
            x = reference_block(block, x, model.pets[str(index)]) if str(index) in model.pets else block(x)
        cls = vit.norm(x)[:, 0]
        expected = torch.cat([model.heads[0](cls), model.heads[1](cls)], dim=-1)
        model.eval()
        logits = model(images).logits
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert logits.shape == (4, 4) and logits.std(dim=0).min() > 1e-3  # the images score apart

    targets = torch.tensor([2, 3, 3, 2])  # the current task's classes
    model.train()
    output = model(images)
    torch.testing.assert_close(model.task_loss(output, targets), F.cross_entropy(output.logits[:, 2:], targets - 2))
    assert not torch.isclose(model.task_loss(output, targets), F.cross_entropy(output.logits, targets))
    model.eval()
    output = model(images)
    torch.testing.assert_close(model.task_loss(output, targets), F.cross_entropy(output.logits, targets))
