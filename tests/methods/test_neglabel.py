"""NegLabel: the mining rule (closeness = the int(0.95·n)-th smallest cosine to the ID names, the
farthest kept) re-computed by hand, the word-list format, and the ID-mass score over ID + negative
labels from the module's logits."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from helpers import synthetic_fewshot
from lightning.pytorch import Trainer

from lightning_prompts.errors import ConfigurationError, DatasetError
from lightning_prompts.evaluation import ClassificationEvaluator, OODEvaluator
from lightning_prompts.methods import NegLabel
from lightning_prompts.prompts.negative_labels import (
    closeness_to,
    mine_negative_labels,
    mine_nouns_and_adjectives,
    read_word_list,
)


def test_closeness_is_the_percentile_similarity_and_the_farthest_words_are_kept():
    id_features = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.8, 0.0]]), dim=-1)
    words = {"near": [0.9, 0.1, 0.0], "far": [0.0, 0.0, 1.0], "middle": [0.5, -0.5, 0.7], "next": [0.1, 0.9, 0.1]}
    features = F.normalize(torch.tensor(list(words.values())), dim=-1)
    similarities = features @ id_features.t()
    # n = 3 ID names: position int(0.95 * 3) = 2, the largest of the three similarities
    assert torch.allclose(closeness_to(id_features, features, 0.95), similarities.max(dim=1).values)
    assert torch.allclose(closeness_to(id_features, features, 0.5), similarities.sort(dim=1).values[:, 1])

    table = dict(zip(["a photo of a id0.", "a photo of a id1.", "a photo of a id2."], id_features))
    table.update({f"a photo of a {w}.": f for w, f in zip(words, features)})
    encode = lambda texts: torch.stack([table[t] for t in texts])  # noqa: E731
    mined = mine_negative_labels(encode, ["id0", "id1", "id2"], [*words, "ID1"], count=2, batch_size=2)
    order = similarities.max(dim=1).values.argsort()
    assert mined == [list(words)[int(i)] for i in order[:2]] == ["far", "middle"]  # "ID1" is an ID name: never


def test_nouns_and_adjectives_are_ranked_apart_through_their_own_templates_and_share_the_count():
    """The releases' two-list mining: ID names and nouns through "the nice {}", adjectives through "This is a {}
    photo", each part of speech ranked on its own, int(count · A / (A + N)) adjectives, the nouns the rest; an ID
    name is never kept and a word in both lists stays a noun."""
    generator = torch.Generator().manual_seed(0)
    id_names, nouns = ["id0", "id1", "id2"], ["teapot", "volcano", "violin", "glacier", "Id1", "anvil"]
    adjectives = ["red", "shiny", "violin", "wooden"]  # "violin" is also a noun: only the noun counts
    table = {}
    for name in id_names + nouns:
        table[f"the nice {name}"] = F.normalize(torch.randn(8, generator=generator), dim=0)
    for name in adjectives:
        # the same word through the other template is another text, so another feature
        table[f"This is a {name} photo"] = F.normalize(torch.randn(8, generator=generator), dim=0)
    encode = lambda texts: torch.stack([table[t] for t in texts])  # noqa: E731
    kept_nouns, kept_adjectives = mine_nouns_and_adjectives(encode, id_names, nouns, adjectives, count=4, batch_size=2)

    id_features = torch.stack([table[f"the nice {n}"] for n in id_names])
    noun_pool, adjective_pool = ["teapot", "volcano", "violin", "glacier", "anvil"], ["red", "shiny", "wooden"]

    def farthest(pool, template, k):  # the int(0.95 · 3) = 2nd (largest) cosine to the ID names, smallest first
        closeness = torch.stack([table[template.format(w)] for w in pool]) @ id_features.t()
        return [pool[int(i)] for i in closeness.max(dim=1).values.argsort()[:k]]

    adjective_count = int(4 * 3 / 8)  # 1 of 4
    assert kept_adjectives == farthest(adjective_pool, "This is a {} photo", adjective_count)
    assert kept_nouns == farthest(noun_pool, "the nice {}", 4 - adjective_count)
    with pytest.raises(ValueError, match="between 1 and the 8 nouns and adjectives"):
        mine_nouns_and_adjectives(encode, id_names, nouns, adjectives, count=9)


def test_neglabel_scores_mined_adjectives_through_their_template_in_the_logits_order(tiny_clip, tmp_path):
    (tmp_path / "nouns.txt").write_text("teapot\nvolcano\nviolin\nglacier\n")
    (tmp_path / "adjectives.txt").write_text("red\nshiny\nwooden\nviolin\n")
    model = NegLabel(
        tiny_clip, ["cat", "dog"], templates=["the nice {}"], word_list=str(tmp_path / "nouns.txt"),
        adjective_list=str(tmp_path / "adjectives.txt"), num_negative_labels=6, negative_groups=2,
    )  # fmt: skip
    assert len(model.negative_labels) == 6 and len(model.negative_adjectives) == int(6 * 3 / 7) == 2
    assert model.negative_labels[-2:] == model.negative_adjectives and "violin" not in model.negative_adjectives
    with torch.no_grad():
        expected = torch.stack(
            [
                tiny_clip.encode_text([("This is a {} photo" if label in model.negative_adjectives else "the nice {}")
                                       .format(label)], normalize=True)[0]
                for label in model.negative_labels
            ]
        )  # fmt: skip
        torch.testing.assert_close(model.negative_text_features(), expected)
    (tmp_path / "few.txt").write_text("teapot\ncat\n")  # an ID name and a word of both lists leave 3 words
    (tmp_path / "few_adjectives.txt").write_text("teapot\nred\nshiny\n")
    lists = {"word_list": str(tmp_path / "few.txt"), "adjective_list": str(tmp_path / "few_adjectives.txt")}
    few = NegLabel(tiny_clip, ["cat", "dog"], **lists, num_negative_labels=10, negative_groups=1)
    assert sorted(few.negative_labels) == ["red", "shiny", "teapot"]  # 10 asked: every remaining word kept
    with pytest.raises(ConfigurationError, match="not among the negative_labels"):
        NegLabel(tiny_clip, ["cat"], negative_labels=["teapot", "anvil"], negative_adjectives=["red"],
                 negative_groups=1)  # fmt: skip
    with pytest.raises(ConfigurationError, match="has no '{}'"):
        NegLabel(tiny_clip, ["cat"], negative_labels=["teapot"], adjective_template="photo", negative_groups=1)


def test_word_lists_are_read_once_per_word_and_bad_ones_are_named(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("# WordNet nouns\nteapot\n\nvolcano\nteapot\n  violin  \n", encoding="utf-8")
    assert read_word_list(path) == ["teapot", "volcano", "violin"]
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DatasetError, match="is not UTF-8 text"):
        read_word_list(path)
    with pytest.raises(DatasetError, match="does not exist"):
        read_word_list(tmp_path / "missing.txt")


def test_the_id_mass_of_its_logits_is_what_the_evaluator_logs(tiny_clip, trainer_kwargs, tmp_path):
    data = synthetic_fewshot(ood_sets={"noise": "unused"})
    words = tmp_path / "words.txt"
    words.write_text("\n".join(["teapot", "volcano", "violin", "glacier", "tractor", "lobster", *data.classnames]))
    model = NegLabel(tiny_clip, data.classnames, word_list=str(words), num_negative_labels=4, negative_groups=2)
    assert len(model.negative_labels) == 4 and not set(model.negative_labels) & set(data.classnames)
    assert isinstance(
        model.evaluator_choice if hasattr(model, "evaluator_choice") else model.resolve_evaluator(data), OODEvaluator
    )
    results = Trainer(**trainer_kwargs).test(model, data)[0]
    loaders = data.test_dataloader()
    with torch.no_grad():
        logits = [torch.cat([model.eval()(b["image"]).logits for b in loader]) for loader in loaders]
    assert logits[0].shape[1] == 4 + 4  # ID classes, then negative labels
    order = torch.randperm(4, generator=torch.Generator().manual_seed(0))

    def mass(z):  # two groups of two negatives, each with every ID class
        groups = [torch.cat([z[:, :4], z[:, 4:][:, g]], 1).softmax(1)[:, :4].sum(1) for g in (order[:2], order[2:])]
        return torch.stack(groups).mean(0)

    from lightning_prompts.metrics import ood_metrics

    expected = ood_metrics(mass(logits[0]), mass(logits[1]))
    assert results["test/auroc_noise"] == pytest.approx(float(expected["auroc"]), abs=1e-6)
    targets = torch.cat([b["label"] for b in loaders[0]])
    assert results["test/acc"] == pytest.approx(float((logits[0][:, :4].argmax(1) == targets).float().mean()))


def test_it_needs_a_word_list_and_the_ood_evaluator(tiny_clip):
    with pytest.raises(ConfigurationError, match="needs a word_list"):
        NegLabel(tiny_clip, ["cat", "dog"])
    model = NegLabel(tiny_clip, ["cat", "dog"], negative_labels=["teapot", "violin"], negative_groups=2,
                     evaluator=ClassificationEvaluator())  # fmt: skip
    with pytest.raises(ConfigurationError, match="evaluate it with OODEvaluator"):
        model.check_ready("test", [], None)


def test_logits_and_id_mass_equal_an_independent_recomputation(tiny_clip):
    """Logits = CLIP's logit scale · cos(image, template-ensemble text features) over [ID names, negative labels]
    (every column scaled alike), and the ID score is the ID columns' softmax mass over all of them."""
    ids, negatives = ["cat", "dog", "fox"], ["teapot", "volcano", "violin", "glacier"]
    templates = ("a photo of a {}.", "a drawing of a {}.")
    model = NegLabel(tiny_clip, ids, templates=templates, negative_labels=negatives, negative_groups=1).eval()
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    clip = tiny_clip.model
    with torch.no_grad():
        logits = model(images).logits
        per_template = [
            F.normalize(clip.encode_text(open_clip.tokenize([t.format(n) for n in ids + negatives])), dim=-1)
            for t in templates
        ]
        text = F.normalize(torch.stack(per_template).mean(0), dim=-1)  # CLIP's prompt ensembling
        image = F.normalize(clip.encode_image(images), dim=-1)
        expected = clip.logit_scale.exp() * image @ text.t()
    assert float(clip.logit_scale.exp()) != pytest.approx(1.0)  # the scale shows
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-4)
    assert expected[:, :3].std() > 1e-3 and expected[:, 3:].std() > 1e-3
    evaluator = model.resolve_evaluator(None)  # its default: OOD detection with the id_mass score
    evaluator.setup(model, None, "test")
    mass = expected.softmax(dim=-1)[:, :3].sum(dim=-1)
    assert ((mass > 0.01) & (mass < 0.99)).all()  # neither side takes all the mass
    torch.testing.assert_close(evaluator.id_scores(model, logits), mass, rtol=1e-5, atol=1e-6)
