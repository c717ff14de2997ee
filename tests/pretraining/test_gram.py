"""GRAM, GradientRegulator, GradientRegulation and the image–text meta-task data."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from helpers import synthetic_fewshot
from lightning.pytorch import Callback, Trainer

from lightning_prompts.backbones import HFText, OpenCLIP
from lightning_prompts.batch import CAPTION, IMAGE
from lightning_prompts.callbacks import GradientRegulation
from lightning_prompts.data import ImageTextDataModule, SyntheticText, TextClassificationDataModule
from lightning_prompts.data.image_text import CrossDomainTaskSampler
from lightning_prompts.data.synthetic import write_image
from lightning_prompts.errors import BackboneMismatchError, ConfigurationError, DatasetError
from lightning_prompts.methods import VPT, CoOp, PromptTuning
from lightning_prompts.optim import GradientRegulator
from lightning_prompts.pretraining import GRAM
from lightning_prompts.utils.kmeans import kmeans


def random_regulator(seed: int = 0, hidden: int = 8) -> GradientRegulator:
    torch.manual_seed(seed)
    regulator = GradientRegulator(hidden)
    with torch.no_grad():
        for param in regulator.parameters():
            param.normal_(std=1.0)
    return regulator


def reference_regulator(regulator: GradientRegulator, grad: torch.Tensor) -> torch.Tensor:
    """ψ written out: g ⊙ 2σ(W2 tanh(W1 [g/rms_row, g/rms_all] + b1) + b2)."""
    w1, b1 = regulator.net[0].weight, regulator.net[0].bias
    w2, b2 = regulator.net[2].weight, regulator.net[2].bias
    rows = grad.reshape(-1, grad.shape[-1])
    by_row = rows / torch.sqrt((rows**2).mean(dim=1, keepdim=True) + 1e-12)
    by_all = rows / torch.sqrt((rows**2).mean() + 1e-12)
    x = torch.stack([by_row, by_all], dim=-1)
    h = torch.tanh(x @ w1.t() + b1) @ w2.t() + b2
    return (rows * 2 * torch.sigmoid(h.squeeze(-1))).reshape(grad.shape)


def test_regulator_starts_as_the_identity_and_follows_its_formula(tmp_path):
    grad = torch.randn(3, 5, 8)
    assert torch.equal(GradientRegulator()(grad), grad)
    regulator = random_regulator()
    regulated = regulator(grad)
    assert torch.allclose(regulated, reference_regulator(regulator, grad), atol=1e-6)
    assert not torch.allclose(regulated, grad)
    assert torch.allclose(regulator(10 * grad), 10 * regulated, atol=1e-5)  # scale-free
    assert (regulated * grad >= 0).all()  # a gate: never flips a coordinate's sign
    assert regulator(torch.randn(2, 16)).shape == (2, 16)  # any width
    loaded = GradientRegulator.load(regulator.save(tmp_path / "regulator.safetensors"))
    assert torch.equal(loaded(grad), regulated)


class GradientSpy(Callback):
    """Records every parameter's gradient at on_before_optimizer_step."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor | None] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads = {n: None if p.grad is None else p.grad.clone() for n, p in pl_module.named_parameters()}


def vpt_setup(tiny_vit):
    data = synthetic_fewshot(augmentation="vtab")
    return VPT(tiny_vit, data.classnames, num_tokens=2), data, "prompt."


def prompt_tuning_setup(_):
    data = TextClassificationDataModule(synthetic=SyntheticText(examples_per_class=4), batch_size=4)
    return PromptTuning(HFText("tiny-bert"), data.classnames, num_virtual_tokens=3), data, "prompt."


@pytest.mark.parametrize("make", [vpt_setup, prompt_tuning_setup], ids=["vpt", "prompt_tuning"])
def test_regulation_touches_exactly_the_prompt_gradients(make, tiny_vit, trainer_kwargs):
    model, data, prompt_prefix = make(tiny_vit)
    regulator = random_regulator()
    before, after = GradientSpy(), GradientSpy()
    trainer = Trainer(max_steps=1, callbacks=[before, GradientRegulation(regulator), after], **trainer_kwargs)
    trainer.fit(model, data)
    regulated = [name for name in before.grads if name.startswith(prompt_prefix)]
    assert regulated
    for name, raw in before.grads.items():
        if name.startswith("backbone.") and not model.get_parameter(name).requires_grad:
            assert raw is None and after.grads[name] is None, f"frozen {name} has a gradient"
        elif name in regulated:
            assert torch.allclose(after.grads[name], reference_regulator(regulator, raw), atol=1e-6), name
            assert not torch.allclose(after.grads[name], raw), name
        elif raw is not None:  # heads keep their raw gradients
            assert torch.equal(after.grads[name], raw), name


def test_regulation_changes_the_update_not_the_loss(tiny_clip, trainer_kwargs):
    data = synthetic_fewshot(augmentation="vtab", shuffle=False)
    sgd = functools.partial(torch.optim.SGD, lr=1.0)
    plain = CoOp(tiny_clip, data.classnames, n_ctx=4, optimizer=sgd)
    regulated = copy.deepcopy(plain)
    start = plain.prompt.ctx.detach().clone()
    spy = GradientSpy()
    Trainer(max_steps=1, callbacks=[spy], **trainer_kwargs).fit(plain, data)
    regulator = random_regulator(1)
    Trainer(max_steps=1, callbacks=[GradientRegulation(regulator)], **trainer_kwargs).fit(regulated, data)
    raw = spy.grads["prompt.ctx"]
    assert torch.allclose(plain.prompt.ctx, start - raw, atol=1e-6)
    assert torch.allclose(regulated.prompt.ctx, start - reference_regulator(regulator, raw), atol=1e-6)


def test_regulation_errors_come_before_training(tiny_vit, trainer_kwargs, tmp_path):
    model, data, _ = vpt_setup(tiny_vit)
    trainer = Trainer(max_steps=1, callbacks=[GradientRegulation(tmp_path / "none.safetensors")], **trainer_kwargs)
    with pytest.raises(ConfigurationError, match="none.safetensors does not exist"):
        trainer.fit(model, data)
    assert trainer.global_step == 0
    trainer = Trainer(max_steps=1, callbacks=[GradientRegulation(GradientRegulator(), ["ctx"])], **trainer_kwargs)
    with pytest.raises(ConfigurationError, match=r"GradientRegulation on VPT: no parameter group \['ctx'\]"):
        trainer.fit(model, data)


def reference_caption_features(backbone, prefix: str, ctx: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """CoOp's prompt built by hand: the placeholder embeddings after SOS replaced by ``ctx``."""
    tokens = backbone.tokenize([f"{prefix} {caption}." for caption in captions])
    embeddings = backbone.embed_tokens(tokens)
    n = ctx.shape[0]
    embeddings = torch.cat([embeddings[:, :1], ctx.expand(len(captions), -1, -1), embeddings[:, 1 + n :]], dim=1)
    return F.normalize(backbone.encode_text_embeddings(embeddings, backbone.eot_positions(tokens)), dim=-1)


def reference_contrastive(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    logits = scale * image @ text.t()
    labels = torch.arange(len(image))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def test_meta_step_matches_a_reimplementation(tiny_clip):
    gram = GRAM(tiny_clip, n_ctx=4, ctx_init=None, inner_lr=0.5)
    with torch.no_grad():
        gram.regulator.load_state_dict(random_regulator(2, hidden=16).state_dict())
    images = torch.randn(6, 3, 32, 32)
    captions = ["a red car", "a small dog", "two birds", "a green field", "a boat at sea", "a city at night"]
    support, query = gram.meta_loss(images, captions)
    query.backward()

    image = F.normalize(tiny_clip.encode_image(images).features, dim=-1)
    scale = tiny_clip.logit_scale
    ctx = gram.prompt.ctx.detach().clone().requires_grad_(True)
    prefix = gram.prompt.prompt_prefix
    ref_support = reference_contrastive(
        image[:3], reference_caption_features(tiny_clip, prefix, ctx, captions[:3]), scale
    )
    (grad,) = torch.autograd.grad(ref_support, ctx)
    regulator = copy.deepcopy(gram.regulator)
    regulator.zero_grad()
    adapted = (ctx.detach() - 0.5 * reference_regulator(regulator, grad)).detach().requires_grad_(True)
    adapted_through_psi = ctx - 0.5 * reference_regulator(regulator, grad)
    ref_query = reference_contrastive(
        image[3:], reference_caption_features(tiny_clip, prefix, adapted_through_psi, captions[3:]), scale
    )
    ref_query.backward()
    assert torch.allclose(support, ref_support, atol=1e-5)
    assert torch.allclose(query, ref_query, atol=1e-5)
    assert torch.allclose(gram.prompt.ctx.grad, ctx.grad, atol=1e-5)
    for mine, theirs in zip(gram.regulator.parameters(), regulator.parameters()):
        assert theirs.grad.abs().sum() > 0
        assert torch.allclose(mine.grad, theirs.grad, atol=1e-5)
    # first-order: P's meta-gradient is the query gradient at P' (no second-order term)
    at_adapted = reference_contrastive(
        image[3:], reference_caption_features(tiny_clip, prefix, adapted, captions[3:]), scale
    )
    (first_order,) = torch.autograd.grad(at_adapted, adapted)
    assert torch.allclose(ctx.grad, first_order, atol=1e-5)


def image_text_data(**kwargs) -> ImageTextDataModule:
    spec = {"num_classes": 3, "images_per_class": 4, "image_size": 32}
    return ImageTextDataModule(synthetic=spec, image_size=32, batch_size=2, eval_batch_size=8, **kwargs)


def test_gram_writes_an_initialisation_and_a_regulator_that_coop_uses(tiny_clip, trainer_kwargs, tmp_path):
    data = image_text_data(val_fraction=0.2)
    gram = GRAM(tiny_clip, n_ctx=4, num_domains=3, output_dir=tmp_path / "gram")
    Trainer(max_steps=4, limit_val_batches=1, **trainer_kwargs).fit(gram, data)
    assert sorted(set(data.domains)) == [0, 1, 2]
    prompt_file, regulator_file = (
        tmp_path / "gram" / "prompt_init.safetensors",
        tmp_path / "gram" / "regulator.safetensors",
    )
    assert prompt_file.is_file() and regulator_file.is_file()
    learned = GradientRegulator.load(regulator_file)
    assert learned.net[2].weight.abs().sum() > 0  # meta-learning moved it from the identity

    classes = synthetic_fewshot(augmentation="vtab")
    coop = CoOp(tiny_clip, classes.classnames, n_ctx=4, ctx_init="a photo of a", prompt_init=str(prompt_file))
    assert not torch.equal(coop.prompt.ctx, gram.prompt.ctx)

    class StartingContext(Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            self.ctx = pl_module.prompt.ctx.detach().clone()

    start = StartingContext()
    trainer = Trainer(max_steps=1, callbacks=[start, GradientRegulation(str(regulator_file))], **trainer_kwargs)
    trainer.fit(coop, classes)
    assert torch.equal(start.ctx, gram.prompt.ctx.detach())
    assert "train/loss" in trainer.callback_metrics


def test_validation_retrieves_within_each_batch_and_a_batch_of_one_pair_does_not_count(
    tiny_clip, trainer_kwargs, tmp_path
):
    """val/loss and val/acc: the contrastive loss and the image-to-caption retrieval within each validation batch,
    weighted by its size; a last batch of one pair would score loss 0 and accuracy 1 (it can only find itself)."""
    data = image_text_data(val_fraction=0.5)
    data.setup("validate")
    pairs = len(data.val_dataloader().dataset)
    data.eval_batch_size = pairs - 1  # a full batch, then one pair
    torch.manual_seed(0)
    gram = GRAM(tiny_clip, n_ctx=4, num_domains=3, output_dir=tmp_path / "gram")
    with torch.no_grad():
        gram.prompt.ctx.normal_(std=1.0)  # a context far from the words: captions score differently
    metrics = Trainer(**trainer_kwargs).validate(gram, data)[0]
    batches = list(data.val_dataloader())
    assert [len(batch[CAPTION]) for batch in batches] == [pairs - 1, 1] and pairs > 2
    with torch.no_grad():
        image = gram.image_features(batches[0][IMAGE])
        text = gram.caption_features(batches[0][CAPTION])
        loss = reference_contrastive(image, text, gram.backbone.logit_scale)
        accuracy = ((image @ text.t()).argmax(dim=1) == torch.arange(pairs - 1)).float().mean()
    assert metrics["val/loss"] == pytest.approx(loss.item(), rel=1e-5) and loss.item() > 0.01
    assert metrics["val/acc"] == pytest.approx(accuracy.item())


def test_overfit_batches_is_refused_with_what_to_use_instead(tiny_clip, trainer_kwargs, tmp_path):
    """Lightning's overfit_batches swaps the training sampler for a sequential one: the meta-task loader then read
    single pair indices as tasks and stopped on a TypeError at the first batch."""
    gram = GRAM(tiny_clip, n_ctx=4, num_domains=3, output_dir=tmp_path / "gram")
    with pytest.raises(ConfigurationError, match="overfit_batches.*limit_train_batches"):
        Trainer(overfit_batches=1, max_epochs=1, **trainer_kwargs).fit(gram, image_text_data())
    assert not (tmp_path / "gram").exists()


def test_prompt_init_must_fit(tiny_clip, tmp_path):
    gram = GRAM(tiny_clip, n_ctx=4, ctx_init=None)
    path = gram.export_prompt(tmp_path / "init.safetensors", prefix="prompt.")
    coop = CoOp(tiny_clip, ["cat", "dog"], n_ctx=2)
    with pytest.raises(ConfigurationError, match=r"'prompt.ctx' has shape \(4, .*\) but CoOp needs \(2, "):
        coop.init_prompt_from(path)
    with pytest.raises(ConfigurationError, match="does not exist"):
        coop.init_prompt_from(tmp_path / "missing.safetensors")
    missing = CoOp(tiny_clip, ["cat", "dog"], n_ctx=2, prompt_init=str(tmp_path / "missing.safetensors"))
    with pytest.raises(ConfigurationError, match="prompt_init file .*missing.safetensors does not exist"):
        missing.check_ready("fit", [], None)  # what the command runs before the Trainer starts
    other = OpenCLIP("tiny", pretrained=None, seed=1)
    with pytest.raises(BackboneMismatchError, match="prompt_init file"):
        CoOp(other, ["cat", "dog"], n_ctx=4).init_prompt_from(path)


def test_cross_domain_tasks_are_seeded_and_never_mix_domains():
    domains = [0] * 5 + [1] * 3 + [2] * 4
    sampler = CrossDomainTaskSampler(domains, shots=2, tasks=20, seed=3)
    tasks = list(sampler)
    assert len(tasks) == 20 and all(len(task) == 4 for task in tasks)
    for task in tasks:
        support, query = {domains[i] for i in task[:2]}, {domains[i] for i in task[2:]}
        assert len(support) == 1 and len(query) == 1 and support != query
    again = CrossDomainTaskSampler(domains, shots=2, tasks=20, seed=3)
    assert list(again) == tasks
    assert list(sampler) != tasks  # the next epoch draws other tasks
    with pytest.raises(DatasetError, match="at least 2 domains"):
        CrossDomainTaskSampler([0, 0, 0], shots=1, tasks=1)


def test_ddp_ranks_share_the_tasks(monkeypatch):
    domains = [0] * 5 + [1] * 3 + [2] * 4
    everything = list(CrossDomainTaskSampler(domains, shots=2, tasks=10, seed=3))
    shares = []
    for rank in (0, 1):
        monkeypatch.setattr("lightning_prompts.data.image_text.process_count_and_rank", lambda rank=rank: (2, rank))
        sampler = CrossDomainTaskSampler(domains, shots=2, tasks=10, seed=3)
        shares.append(list(sampler))
        assert len(sampler) == 5
    assert shares[0] == everything[0::2] and shares[1] == everything[1::2]


def test_kmeans_is_seeded_and_finds_separated_clusters():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(20, 2, generator=generator) for c in centres])
    labels, found = kmeans(points, 3, seed=4)
    assert torch.equal(labels, kmeans(points, 3, seed=4)[0])
    for block in labels.view(3, 20):
        assert (block == block[0]).all()
    assert len(set(labels.tolist())) == 3
    assert torch.allclose(found[labels.view(3, 20)[:, 0]], centres, atol=0.1)
    assert len(set(kmeans(torch.zeros(5, 2), 3)[0].tolist())) == 3  # no empty cluster, even for equal points


def test_image_text_data_reads_csv_and_reports_bad_rows(tmp_path):
    write_image(tmp_path / "a.jpg", 0, 0, 8, 0)
    (tmp_path / "pairs.csv").write_text("image,caption,source\na.jpg,a red square,web\nmissing.jpg,a blue one,book\n")
    data = ImageTextDataModule(str(tmp_path / "pairs.csv"), val_fraction=0.0, domain_column="source")
    assert data.domains is None and data.splits() and data.domains == [1, 0]
    with pytest.raises(DatasetError, match="missing.jpg.* does not exist"):
        data.setup("fit")
    (tmp_path / "bad.csv").write_text("path,text\na.jpg,x\n")
    with pytest.raises(DatasetError, match=r"lacks column\(s\) \['image', 'caption'\]"):
        ImageTextDataModule(str(tmp_path / "bad.csv")).splits()
    (tmp_path / "many.csv").write_text("image,caption\n" + "".join(f"a.jpg,caption {i}\n" for i in range(20)))
    held = ImageTextDataModule(str(tmp_path / "many.csv"), val_fraction=0.25, seed=1).splits()
    train, val = held["train"][1], held["val"][1]  # a seeded quarter held out, disjoint from training
    assert (
        len(val) == 5 and not set(train) & set(val) and sorted(train + val) == sorted(f"caption {i}" for i in range(20))
    )
    again = ImageTextDataModule(str(tmp_path / "many.csv"), val_fraction=0.25, seed=1).splits()["val"][1]
    other = ImageTextDataModule(str(tmp_path / "many.csv"), val_fraction=0.25, seed=2).splits()["val"][1]
    assert again == val and other != val
    (tmp_path / "empty.csv").write_text("image,caption\na.jpg,a red square\na.jpg,  \n")
    with pytest.raises(DatasetError, match=r"empty\.csv: row 2 has an empty caption"):
        ImageTextDataModule(str(tmp_path / "empty.csv")).splits()
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not the rest of a JPEG")
    (tmp_path / "broken.csv").write_text("image,caption\na.jpg,a red square\nbroken.jpg,a torn photo\n")
    with pytest.raises(DatasetError, match=r"broken\.jpg.*cannot be read"):
        ImageTextDataModule(str(tmp_path / "broken.csv"), val_fraction=0.0).setup("fit")


def test_resuming_with_another_regulator_file_is_refused(tiny_clip, trainer_kwargs, tmp_path):
    """ψ is not in the checkpoint; its fingerprint is: a regulator file rewritten between the kill and the resume
    would otherwise change the run's gradients without a word."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    data = synthetic_fewshot(augmentation="vtab", shuffle=False)
    path = random_regulator(1).save(tmp_path / "regulator.safetensors")
    method = CoOp(tiny_clip, data.classnames, n_ctx=4)
    options = {**trainer_kwargs, "enable_checkpointing": True, "default_root_dir": str(tmp_path)}
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    Trainer(max_epochs=1, callbacks=[GradientRegulation(path), checkpoints], **options).fit(method, data)
    last = str(tmp_path / "ckpt" / "last.ckpt")
    resumed = CoOp(tiny_clip, data.classnames, n_ctx=4)
    Trainer(max_epochs=2, callbacks=[GradientRegulation(path)], **options).fit(resumed, data, ckpt_path=last)  # same ψ
    random_regulator(2).save(path)  # the file rewritten
    trainer = Trainer(max_epochs=3, callbacks=[GradientRegulation(path)], **options)
    with pytest.raises(ConfigurationError, match="differs from the one the checkpoint was trained with"):
        trainer.fit(CoOp(tiny_clip, data.classnames, n_ctx=4), data, ckpt_path=last)


def test_loading_a_regulator_leaves_the_seeded_random_stream_alone(tmp_path):
    """Building the regulator's layers draws their initial weights, which the file replaces: drawn from the global
    generator after seed_everything, they shifted the run's data order and augmentation (an identity regulator gave
    another first-step loss than the run without GRAM)."""
    original = GradientRegulator(8)
    path = original.save(tmp_path / "regulator.safetensors")
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    loaded = GradientRegulator.load(path)
    assert torch.equal(torch.rand(3), expected)
    for key, value in original.state_dict().items():  # and the file's weights, not the fresh draws
        assert torch.equal(loaded.state_dict()[key], value), key
