"""MULTI-LANE against transcriptions of the official code (tdemin16/multi-lane @5ee982c9: blocks.py
``PreT_Attention.forward`` / ``Block.forward``, vision_transformer.py ``forward_features`` / ``forward_head`` in
``concat`` mode, engine.py's masked losses, ``next_task``), plus the task boundary in a fit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import docs_python
from lightning.pytorch import Callback, Trainer

from lightning_prompts.backbones import TimmViT
from lightning_prompts.data import ClassIncrementalDataModule
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods import LAE
from lightning_prompts.methods.multi_lane import MultiLane
from lightning_prompts.outputs import PromptOutput
from lightning_prompts.prompts.lanes import lane_block_step

CLASSES = [f"c{i}" for i in range(6)]


def official_block(block, x, tokens, prompts, disable_dandr=False, index=0):
    """Block.forward's lane half around PreT_Attention.forward, transcribed (tome = 0)."""
    attention = block.attn
    x_in, tokens_in = block.norm1(x), block.norm1(tokens)
    task_x = tokens_in
    if not disable_dandr or index == 0:
        task_cls, selectors = tokens_in[:, :, 0:1], tokens_in[:, :, 1:]
        scale = x.shape[-1] ** -0.5
        soft = (torch.einsum("tbsc, bnc -> tbsn", selectors, x_in.detach()) * scale).softmax(dim=-1)
        task_x = torch.cat((task_cls, torch.einsum("bnc, tbsn -> tbsc", x_in.detach(), soft)), dim=2)
    T, B, H, C = task_x.shape
    heads = attention.num_heads
    qkv = attention.qkv(task_x).reshape(T, B, H, 3, heads, C // heads).permute(3, 0, 1, 4, 2, 5)
    q, k, v = qkv.unbind(0)
    if prompts is not None:
        p = prompts.unsqueeze(2).expand(-1, -1, B, -1, -1, -1).permute(0, 1, 2, 4, 3, 5)
        k, v = torch.cat((p[0], k), dim=-2), torch.cat((p[1], v), dim=-2)
    attn = ((q @ k.transpose(-2, -1)) * (C // heads) ** -0.5).softmax(dim=-1)
    out = attention.proj((attn @ v).transpose(2, 3).reshape(T, B, H, C))
    tokens_inter = torch.cat((out[:, :, 0:1], selectors), dim=2) if not disable_dandr else out
    tokens = tokens + tokens_inter
    return tokens + block.mlp(block.norm2(tokens))


def randomised(module: MultiLane, seed: int = 1) -> MultiLane:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in [module.lanes.selectors, *module.lanes.prompts]:
            param.copy_(torch.randn(param.shape, generator=generator))
        module.head.weight.copy_(torch.randn(module.head.weight.shape, generator=generator))
    return module


@pytest.mark.parametrize("disable_dandr", [False, True])
def test_a_block_step_equals_the_official_pret_attention_block(disable_dandr):
    vit = TimmViT("tiny")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 17, 32, generator=generator)
    tokens = torch.randn(2, 3, 5, 32, generator=generator)  # 2 lanes, batch 3, cls + 4 selectors
    prompts = torch.randn(2, 2, 4, 2, 16, generator=generator)
    block = vit.model.blocks[1]
    for index in (0, 1):
        for block_prompts in (prompts, None):
            expected = official_block(block, x, tokens, block_prompts, disable_dandr, index)
            summarise = not disable_dandr or index == 0
            ours = lane_block_step(block, x, tokens, block_prompts, summarise, drop=not disable_dandr)
            torch.testing.assert_close(ours, expected)


def official_logits(module: MultiLane, images: torch.Tensor, seen: int) -> torch.Tensor:
    """forward_features with every seen lane, then forward_head in concat mode."""
    model = module.backbone.model
    x = model.norm_pre(model._pos_embed(model.patch_embed(images)))
    selectors = module.lanes.selectors[:seen].unsqueeze(1).expand(-1, images.shape[0], -1, -1)
    tokens = torch.cat((model.cls_token.clone().repeat(seen, images.shape[0], 1, 1), selectors), dim=2)
    for index, block in enumerate(model.blocks):
        prompts = module.lanes.prompts[index][:, :seen] if index < len(module.lanes.prompts) else None
        tokens = official_block(block, x, tokens, prompts)
        x = block(x)
    cls = F.normalize(model.norm(tokens)[:, :, 0].permute(1, 0, 2), dim=-1)  # (B, T, C)
    logits = module.head(cls)
    mask = torch.zeros_like(logits)
    for j in range(seen):
        mask[:, j, 3 * j : 3 * j + 3] = 1.0
    return (logits * mask).sum(dim=1)


def test_evaluation_sums_each_lanes_logits_over_its_classes_as_the_official_concat_head():
    module = randomised(
        MultiLane(TimmViT("tiny"), CLASSES, num_tasks=2, num_selectors=4, num_prompts=3, prompt_blocks=2)
    )
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    module.eval().current_task = 1
    with torch.no_grad():
        torch.testing.assert_close(module(images).logits, official_logits(module, images, seen=2))
        module.current_task = 0  # only task 0's lane and classes are seen
        torch.testing.assert_close(module(images).logits, official_logits(module, images, seen=1)[:, :3])


def test_training_runs_the_current_lane_and_masks_the_loss_as_the_official_engine():
    module = randomised(
        MultiLane(TimmViT("tiny"), CLASSES, num_tasks=2, num_selectors=4, num_prompts=3, prompt_blocks=2)
    )
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    module.train().current_task = 1
    logits = module(images).logits
    lane_one = module.lane_features(images, slice(1, 2))[0]
    torch.testing.assert_close(logits, module.head(F.normalize(lane_one, dim=-1)))
    # single-label: cross-entropy with the other tasks' classes at -inf
    labels = torch.tensor([3, 4, 5, 3])
    expected = F.cross_entropy(logits.index_fill(1, torch.arange(3), float("-inf")), labels)
    torch.testing.assert_close(module.task_loss(PromptOutput(logits=logits), labels), expected)
    # multi-label: logits and targets outside the task set to 0, BCE averaged over batch x all classes
    module.multi_label = True
    targets = torch.tensor([[1, 0, 1, 1, 0, 0], [0, 1, 0, 0, 1, 1], [1, 1, 0, 0, 0, 1], [0, 0, 1, 1, 1, 0]])
    masked = logits.index_fill(1, torch.arange(3), 0.0)
    official = F.binary_cross_entropy_with_logits(masked, targets.float().index_fill(1, torch.arange(3), 0.0))
    torch.testing.assert_close(module.task_loss(PromptOutput(logits=logits), targets), official)
    loss = module.task_loss(PromptOutput(logits=logits), targets)
    loss.backward()
    assert module.lanes.selectors.grad[0].abs().sum() == 0 and module.lanes.selectors.grad[1].abs().sum() > 0


def test_unequal_tasks_follow_classes_per_task():
    module = MultiLane(
        TimmViT("tiny"), CLASSES, num_tasks=3, classes_per_task=[4, 1, 1], num_selectors=2, prompt_blocks=1
    )
    assert module.task_of_class.tolist() == [0, 0, 0, 0, 1, 2]
    module.eval().current_task = 1
    with torch.no_grad():
        assert module(torch.randn(1, 3, 32, 32)).logits.shape == (1, 5)
    with pytest.raises(ValueError, match="summing to 6"):
        MultiLane(TimmViT("tiny"), CLASSES, num_tasks=2, classes_per_task=[4, 1])
    with pytest.raises(ValueError, match="equal tasks"):
        MultiLane(TimmViT("tiny"), CLASSES, num_tasks=4)


class Snapshots(Callback):
    """Lanes and optimizer state before (epoch start, callbacks run before the module's hook) and after the
    module's task-boundary hook (first batch)."""

    def __init__(self):
        self.before, self.after, self.state_before, self.state_after = {}, {}, {}, {}

    def on_train_epoch_start(self, trainer, module):
        self.before[trainer.current_epoch] = module.lanes.selectors.detach().clone()
        self.state_before[trainer.current_epoch] = len(trainer.optimizers[0].state)

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == 0:
            self.after[trainer.current_epoch] = module.lanes.selectors.detach().clone()
            self.state_after[trainer.current_epoch] = len(trainer.optimizers[0].state)


def test_task_boundary_copies_the_lane_and_starts_a_fresh_optimizer(tmp_path):
    spec = {"num_classes": 6, "images_per_class": 4, "image_size": 32}
    data = ClassIncrementalDataModule(num_tasks=2, epochs_per_task=1, synthetic=spec, image_size=32, batch_size=4)
    module = MultiLane(TimmViT("tiny"), data.classnames, num_tasks=2, num_selectors=2, num_prompts=2, prompt_blocks=1)
    module._optimizer_factory = lambda groups: torch.optim.Adam(groups, lr=0.01)
    seen = Snapshots()
    trainer = Trainer(max_epochs=2, reload_dataloaders_every_n_epochs=1, callbacks=[seen], logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      accelerator="cpu", default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(module, data)
    torch.testing.assert_close(seen.before[1][1], seen.before[0][1])  # lane 1 untouched during task 0
    assert not torch.equal(seen.before[1][0], seen.before[0][0])  # lane 0 trained during task 0
    torch.testing.assert_close(seen.after[1][1], seen.before[1][0])  # task 1 starts lane 1 from lane 0
    assert seen.state_before[1] > 0 and seen.state_after[1] == 0  # and a fresh optimizer
    final = module.lanes.selectors.detach()
    torch.testing.assert_close(final[0], seen.before[1][0])  # lane 0 stays as task 0 left it
    assert not torch.equal(final[1], seen.after[1][1])  # lane 1 trained during task 1
    assert 0.0 <= float(trainer.callback_metrics["val/acc"]) <= 1.0


def test_single_label_accuracy_is_the_official_mean_over_tasks_and_every_image_trains():
    """The official ``evaluate_till_now`` averages the tasks' accuracies (LAE pools every image: the two differ when
    tasks hold different numbers of test images), and its training loader keeps the last partial batch."""
    from lightning_prompts.evaluation.continual import ContinualEvaluator
    from lightning_prompts.metrics.continual import ContinualAccuracy, TaskAccuracy

    spec = {"num_classes": 4, "images_per_class": 5, "image_size": 32}
    data = ClassIncrementalDataModule(num_tasks=2, synthetic=spec, image_size=32, batch_size=4, drop_last=False)
    data.setup("fit")
    assert len(data.train_dataloader()) == 3  # 10 images of task 0 in batches of 4: the last 2 train too
    assert (
        len(ClassIncrementalDataModule(num_tasks=2, synthetic=spec, image_size=32, batch_size=4).train_dataloader())
        == 2
    )

    module = MultiLane(TimmViT("tiny"), data.classnames, num_tasks=2, num_selectors=2, num_prompts=2, prompt_blocks=1)
    evaluator = module.resolve_evaluator(data)
    assert type(evaluator) is ContinualEvaluator and evaluator.average == "tasks"
    lae = LAE(TimmViT("tiny"), data.classnames, num_tasks=2, pet_blocks=[0])
    assert lae.resolve_evaluator(data).average == "samples"
    chosen = ContinualEvaluator(average="samples")
    configured = MultiLane(TimmViT("tiny"), data.classnames, num_tasks=2, prompt_blocks=1, evaluator=chosen)
    assert configured.resolve_evaluator(data) is chosen

    scores, targets = torch.eye(3)[[0, 1, 2, 2]], torch.tensor([0, 1, 1, 2])  # task 0: 2 of 3 right, task 1: 1 of 1
    results = {}
    for average in ("samples", "tasks"):
        evaluator = ContinualEvaluator(average=average)
        evaluator.task_accuracy, evaluator.history = TaskAccuracy(2), ContinualAccuracy(2)
        evaluator.update(module, {"task": torch.tensor([0, 0, 0, 1])}, scores, targets, "test", 0)
        results[average] = float(evaluator.finish(module, "test")["test/acc"])
    assert results == pytest.approx({"samples": 3 / 4, "tasks": (2 / 3 + 1) / 2})
    with pytest.raises(ConfigurationError, match="average must be"):
        ContinualEvaluator(average="classes")


def test_single_label_recipes_neither_clip_nor_drop_as_the_official_code():
    """The official configs parse ``--clip_grad 1.0`` but ``engine.py`` never clips; ``--drop_last`` is off."""
    from pathlib import Path

    from lightning_prompts.recipes import merged_section

    recipes = Path(__file__).resolve().parents[2] / "recipes" / "multi_lane"
    for recipe in ("cifar100.yaml", "imagenet_r.yaml", "multilabel/voc_b0_c4.yaml"):
        assert "gradient_clip_val" not in merged_section(recipes / recipe, "trainer"), recipe
    for recipe in ("cifar100.yaml", "imagenet_r.yaml"):
        assert merged_section(recipes / recipe, "data")["init_args"]["drop_last"] is False, recipe


def test_the_docs_use_snippet_builds_the_method():
    from pathlib import Path

    page = Path(__file__).resolve().parents[2] / "docs" / "methods" / "multi_lane.md"
    block = docs_python(page)[0]
    for old, new in {
        '"cifar100", root="data", num_tasks=10': '"cifar100", num_tasks=2, image_size=32',
        'batch_size=1024, augmentation="multi_lane"': (
            'batch_size=4, augmentation="multi_lane", synthetic={"num_classes": 4, "images_per_class": 2, '
            '"image_size": 32}'
        ),
        'TimmViT("vit_base_patch16_224.augreg_in21k_ft_in1k")': 'TimmViT("tiny")',
        "num_tasks=10, num_selectors=20": "num_tasks=2, prompt_blocks=3, num_selectors=20",
    }.items():
        assert old in block
        block = block.replace(old, new)
    namespace: dict = {}
    exec(block, namespace)
    model = namespace["model"]
    assert model.lanes.selectors.shape == (2, 20, 32) and len(model.lanes.prompts) == 3
    multilabel = docs_python(page)[1]
    old = '"voc", root="data", base_classes=10, num_tasks=6, epochs_per_task=30'
    assert old in multilabel
    spec = '{"num_classes": 20, "train_images": 4, "test_images": 4}'
    multilabel = multilabel.replace(old, f"base_classes=10, num_tasks=6, synthetic={spec}")
    exec(multilabel.replace("multi_label=True", "multi_label=True, prompt_blocks=3"), namespace)
    model = namespace["model"]
    assert model.task_sizes == [10, 2, 2, 2, 2, 2] and model.multi_label


def test_the_multi_lane_augmentation_preset():
    from PIL import Image

    from lightning_prompts.data.transforms import build_transform

    image = Image.new("RGB", (64, 48), (200, 30, 30))
    assert build_transform("multi_lane", 32, "none", train=False)(image).shape == (3, 32, 32)
    train = build_transform("multi_lane", 32, "none", train=True)
    assert train.transforms[0].scale == (0.05, 1.0)
    assert float(train(image).max()) <= 1.0  # inputs in [0, 1]
