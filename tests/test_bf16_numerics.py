"""Computations that must stay in fp32 under bf16 autocast (the recipes' default precision), each found by an audit
that compared every method under ``torch.autocast("cpu", dtype=torch.bfloat16)`` with fp32: rankings and
differences that bf16 arithmetic made ties or noise of. The encoders' activations stay in bf16."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent / "methods"))

BF16 = {"device_type": "cpu", "dtype": torch.bfloat16}


def test_the_molecule_gin_encodes_under_bf16_autocast():
    """Its messages (fp32 bond embeddings added) went into a bf16 ``zeros_like``: a dtype error in every molecule
    recipe (GPF on MoleculeNet, the three ZINC pre-trainings, RELIEF on molecules)."""
    from lightning_prompts.backbones.molecule_gin import MoleculeGIN

    gin = MoleculeGIN(checkpoint_path=None, num_layers=2, emb_dim=16)
    atoms, edges = torch.tensor([[5, 0], [6, 0], [7, 0]]), torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
    bonds = torch.zeros(4, 2, dtype=torch.long)
    full = gin.encode_nodes(atoms, edges, edge_attr=bonds)
    with torch.autocast(**BF16):
        half = gin.encode_nodes(atoms, edges, edge_attr=bonds)
    torch.testing.assert_close(half.float(), full, rtol=0.05, atol=0.05)


def test_tpt_and_difftpt_rank_views_in_fp32_whatever_the_logits_dtype():
    """bf16 entropies over 1,000 classes took about 6 distinct values among 64 views, and the 10 % cut fell among
    ties; DiffTPT's bf16 cosines likewise. The selections now equal those computed from the same logits in fp32."""
    from lightning_prompts.evaluation.diff_tpt import select_by_cosine_then_entropy
    from lightning_prompts.evaluation.test_time import select_confident

    torch.manual_seed(0)
    logits = (25 + torch.randn(64, 1000) * 0.5).bfloat16()  # CLIP-like: 100 · cosines around 0.25, 1,000 classes
    assert torch.equal(select_confident(logits, 0.1), select_confident(logits.float(), 0.1))
    assert torch.equal(
        select_by_cosine_then_entropy(logits, 0.8, 0.1), select_by_cosine_then_entropy(logits.float(), 0.8, 0.1)
    )


def test_relief_rolls_out_in_fp32_under_bf16_autocast():
    """A reward is the difference of two task losses, below bf16's rounding of them (signs agreed with fp32's for
    60 % of the steps), and bf16 policy probabilities made the ensemble's KL penalty negative: the episodes, their
    probabilities and their losses under autocast now equal fp32's."""
    from test_relief import graphs, relief
    from torch_geometric.data import Batch

    module = relief()
    data = Batch.from_data_list(graphs(4))
    torch.manual_seed(1)
    full = module.rollout(0, data)
    with torch.autocast(**BF16):
        torch.manual_seed(1)
        half = module.rollout(0, data)
        probabilities = module.policy.discrete[0](full.states[:, 0], full.padding)
    for field in ("nodes", "increments", "logprob_nodes", "losses"):
        assert torch.equal(getattr(full, field), getattr(half, field)), field
    assert probabilities.dtype == torch.float32


def test_local_prompt_scores_classes_in_fp32_under_bf16_autocast(tiny_clip):
    """Its test-time class score adds a log-sum-exp over regions (about log k) that bf16 rounds in steps larger
    than the classes' gaps: a third of the rows tied at the top over 1,000 classes."""
    from lightning_prompts.methods import LocalPrompt

    method = LocalPrompt(tiny_clip, ["cat", "dog", "bird"], n_ctx=2, num_negative_prompts=2).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), torch.autocast(**BF16):
        logits = method(images).logits
    assert logits.dtype == torch.float32


def test_clip_similarity_logits_stay_in_fp32_and_rank_close_images_apart():
    """A bf16 logit near 30 rounds in steps of 0.125: 64 images (bf16 features, as an encoder under autocast gives
    them) took 21 distinct max-logits between 31 and 37, ties that OOD detection (MCM, max-logit, energy) and
    pseudolabel confidences rank by. Every CLIP method's logits now come from one fp32 product."""
    import torch.nn.functional as F

    from lightning_prompts.utils.similarity import similarity_logits

    generator = torch.Generator().manual_seed(0)
    centre = torch.randn(1, 512, generator=generator)
    image = F.normalize(centre + 0.3 * torch.randn(64, 512, generator=generator), dim=-1).bfloat16()
    text = F.normalize(centre + 3 * torch.randn(10, 512, generator=generator), dim=-1).bfloat16()  # logits 31-37
    scale = torch.tensor(100.0)
    with torch.autocast(**BF16):
        tied = (scale * image @ text.t()).amax(dim=-1)  # the product as autocast computes it
        logits = similarity_logits(scale, image, text)
    assert logits.dtype == torch.float32
    assert torch.equal(logits, scale * (image.float() @ text.float().t()))
    assert tied.unique().numel() == 21 and logits.amax(dim=-1).unique().numel() == 64


def test_every_clip_method_classifies_in_fp32_under_bf16_autocast(tiny_clip):
    from lightning_prompts.methods import CoOp, NegLabel, ZeroShotCLIP

    images = torch.randn(2, 3, 32, 32)
    methods = [CoOp(tiny_clip, ["cat", "dog"], n_ctx=2), ZeroShotCLIP(tiny_clip, ["cat", "dog"])]
    methods.append(NegLabel(tiny_clip, ["cat", "dog"], negative_labels=["stone", "cloud", "river"], negative_groups=1))
    for method in methods:
        with torch.no_grad(), torch.autocast(**BF16):
            assert method.eval()(images).logits.dtype == torch.float32, type(method).__name__


def test_lapts_mixing_losses_score_in_fp32_under_bf16_autocast(tiny_clip, monkeypatch):
    """LAPT's two training mixes (cross-modal, cross-distribution) scored their mixed features with a bf16 product
    after the classification logits had moved to fp32; both take the same fp32 product now."""
    import lightning_prompts.methods.lapt as lapt_module

    products = []
    fp32_product = lapt_module.similarity_logits
    monkeypatch.setattr(
        lapt_module, "similarity_logits", lambda *args: products.append(fp32_product(*args)) or products[-1]
    )
    method = lapt_module.LAPT(tiny_clip, ["cat", "teapot", "dog"], negative_labels=["teapot", "violin"],
                              cross_distribution=True).train()  # fmt: skip
    targets = torch.tensor([0, 1, 2])
    with torch.autocast(**BF16):
        output = method.forward_batch({"image": torch.randn(3, 3, 32, 32)})
        products.clear()  # the classification logits' own product
        mixed = method.mixed_logits(output, targets, torch.full((3,), 0.5), torch.zeros(3, dtype=torch.long))
        method.cross_distribution_loss(output, targets, torch.tensor([1, 0, 1]), torch.tensor(0.5))
    assert mixed.dtype == torch.float32
    assert [product.dtype for product in products] == [torch.float32, torch.float32]
