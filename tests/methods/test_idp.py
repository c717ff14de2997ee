"""IDP: per-input choice among a bank of prompts by cosine of frozen hidden states, then one prompted pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer

from lightning_prompts.backbones import HFText
from lightning_prompts.data import SyntheticText, TextClassificationDataModule
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.methods import IDP, PromptTuning

TEXTS = ["the film was great and moving", "dull", "an awful, tedious and clumsy film", "ok"]


def bank_method(**kwargs):
    backbone = HFText("tiny-bert")
    method = IDP(backbone, ["neg", "pos"], num_prompts=3, num_virtual_tokens=2, **kwargs).eval()
    with torch.no_grad():  # prompts far apart, so inputs choose differently; a head that separates classes
        method.bank.copy_(torch.randn(3, 2, 32, generator=torch.Generator().manual_seed(4)) * 3)
        backbone.model.classifier.weight.normal_(0, 1)
    return method


def test_selection_is_the_argmax_cosine_of_frozen_states_and_the_pass_uses_that_prompt():
    method = bank_method()
    backbone = method.backbone
    tokens = method.tokenize(TEXTS)
    with torch.no_grad():
        plain = backbone.model(**tokens, output_hidden_states=True).hidden_states[-1]
        mask = tokens["attention_mask"].unsqueeze(-1).float()
        queries = (plain * mask).sum(1) / mask.sum(1)
        keys = []
        for prompt in method.bank:
            only = backbone.model(
                inputs_embeds=torch.cat([prompt[None], backbone.word_embeddings(torch.tensor([[0]]))], 1),
                attention_mask=torch.tensor([[1, 1, 0]]),
                output_hidden_states=True,
            ).hidden_states[-1]
            keys.append(only[0, :2].mean(0))
        expected = (F.normalize(queries, dim=-1) @ F.normalize(torch.stack(keys), dim=-1).T).argmax(-1)
        chosen = method.select(tokens["input_ids"], tokens["attention_mask"])
        assert torch.equal(chosen, expected)
        assert len(set(chosen.tolist())) > 1  # the bank is used, not one prompt
        logits = method(**tokens).logits
        for row, index in enumerate(chosen.tolist()):  # each row: PromptTuning with its prompt
            single = PromptTuning(backbone, ["neg", "pos"], num_virtual_tokens=2).eval()
            single.prompt.embedding.copy_(method.bank[index])
            one = {k: v[row : row + 1] for k, v in tokens.items()}
            assert torch.allclose(logits[row], single(**one).logits[0], atol=1e-5)


def test_training_routes_gradients_to_the_chosen_prompts_only():
    method = bank_method().train()
    tokens = method.tokenize(TEXTS)
    chosen = set(method.select(tokens["input_ids"], tokens["attention_mask"]).tolist())
    F.cross_entropy(method(**tokens).logits, torch.tensor([1, 0, 0, 1])).backward()
    moved = {i for i in range(3) if method.bank.grad[i].abs().sum() > 0}
    assert moved == chosen


def test_prompt_files_fill_the_bank_and_a_fit_runs(tmp_path, trainer_kwargs):
    paths = []
    for seed in range(2):
        prompt = PromptTuning(HFText("tiny-bert"), ["neg", "pos"], num_virtual_tokens=3, seed=seed)
        paths.append(str(prompt.export_prompt(tmp_path / f"p{seed}.safetensors", prefix="prompt.")))
    data = TextClassificationDataModule(synthetic=SyntheticText(examples_per_class=8), batch_size=8)
    method = IDP(HFText("tiny-bert"), data.classnames, prompt_files=paths)
    assert method.bank.shape == (2, 3, 32)
    Trainer(max_steps=2, **trainer_kwargs).fit(method, data)
    short = PromptTuning(HFText("tiny-bert"), ["neg", "pos"], num_virtual_tokens=2).export_prompt(tmp_path / "s.st")
    with pytest.raises(ConfigurationError, match="one length"):
        IDP(HFText("tiny-bert"), ["neg", "pos"], prompt_files=[paths[0], str(short)])
    with pytest.raises(ConfigurationError, match="num_prompts"):
        IDP(HFText("tiny-bert"), ["neg", "pos"], num_prompts=1)
