"""ID scores for OOD detection, computed from a method's logits (higher means more in-distribution).

``mcm``
    Maximum Concept Matching (Ming et al., 2022): the largest softmax probability of the *cosine*
    similarities divided by a temperature, ``max_c softmax(cos / T)_c``, with T = 1 as in the MCM
    code. A CLIP method's logits are ``logit_scale · cos``, so the cosines are recovered by dividing
    by the module's ``logit_scale`` (OpenOOD-VLM's MCM, ``softmax(100·cos / T)``, is ``mcm`` at
    ``T / 100``).
``msp``
    The largest softmax probability of the logits divided by T (Hendrycks & Gimpel, 2017); for
    methods without a logit scale (a ViT with a linear head).
``max_logit`` and ``energy``
    ``max_c z_c`` and ``T · logsumexp(z / T)``.
``id_mass``
    The probability mass of the ID classes when the method also scores negative labels after them
    (NegLabel, LAPT): ``Σ_{c < n_id} softmax(z)_c``. With ``groups > 1`` the negative labels are split
    into that many groups after a seeded permutation and the mass is averaged over the groups, each
    group scored together with every ID class (LAPT scores 10,000 negatives in 100 groups).
``r_mcm``
    Local-Prompt's regional MCM (Zeng et al., ICLR 2025): global MCM plus the mean of the k largest
    regional probabilities, each region's softmax over the ID local prompts *and* the negative local
    prompts, flattened over regions × ID classes (:func:`regional_mcm`). Needs a method with regional
    outputs (:class:`~lightning_prompts.methods.LocalPrompt`).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

ScoreName = Literal["mcm", "msp", "max_logit", "energy", "id_mass", "r_mcm"]
SCORES = ("mcm", "msp", "max_logit", "energy", "id_mass", "r_mcm")


def mcm(logits: Tensor, logit_scale: Tensor | float, temperature: float = 1.0) -> Tensor:
    """``max softmax(cos / T)`` with ``cos = logits / logit_scale``."""
    return (logits.float() / (logit_scale * temperature)).softmax(dim=-1).amax(dim=-1)


def msp(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``max softmax(logits / T)``."""
    return (logits.float() / temperature).softmax(dim=-1).amax(dim=-1)


def energy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``T · logsumexp(logits / T)`` (the negated free energy)."""
    return temperature * torch.logsumexp(logits.float() / temperature, dim=-1)


def id_mass(logits: Tensor, num_id: int, groups: int = 1, seed: int = 0) -> Tensor:
    """The softmax mass of the first ``num_id`` columns (ID classes) against the negative labels after
    them, averaged over ``groups`` seeded groups of negatives."""
    num_negative = logits.shape[-1] - num_id
    if num_negative <= 0:
        raise ValueError(
            f"id_mass needs negative labels after the {num_id} ID classes; the method scores {logits.shape[-1]}."
        )
    if not 1 <= groups <= num_negative:
        raise ValueError(f"groups must be between 1 and the number of negative labels ({num_negative}), got {groups}.")
    logits = logits.float()
    id_logits, negative_logits = logits[..., :num_id], logits[..., num_id:]
    order = torch.randperm(num_negative, generator=torch.Generator().manual_seed(seed)).to(logits.device)
    masses = []
    for group in torch.tensor_split(order, groups):
        probabilities = torch.cat([id_logits, negative_logits[..., group]], dim=-1).softmax(dim=-1)
        masses.append(probabilities[..., :num_id].sum(dim=-1))
    return torch.stack(masses).mean(dim=0)


def regional_mcm(
    global_logits: Tensor,
    local_logits: Tensor,
    negative_local_logits: Tensor,
    logit_scale: Tensor | float,
    top_k: int,
    temperature: float = 1.0,
) -> Tensor:
    """R-MCM: ``max softmax(cos_global / T) + mean top-k over (regions × ID classes) of
    exp(cos_local / T) / Σ_{ID + negative local prompts} exp(cos / T)``.

    Args:
        global_logits: ``(B, C)`` ``logit_scale · cos`` of the global image feature and the global prompts.
        local_logits: ``(B, N, C)`` the same for each region and the ID local prompts.
        negative_local_logits: ``(B, N, M)`` each region against the negative local prompts.
        logit_scale: the scale dividing the logits back into cosines.
        top_k: regional probabilities averaged (capped at ``N · C``).
    """
    local = local_logits.float() / (logit_scale * temperature)
    negative = negative_local_logits.float() / (logit_scale * temperature)
    log_total = torch.logsumexp(torch.cat([local, negative], dim=-1), dim=-1, keepdim=True)
    regional = (local - log_total).exp().flatten(1)  # (B, N * C)
    top = regional.topk(min(top_k, regional.shape[1]), dim=-1).values.mean(dim=-1)
    return mcm(global_logits, logit_scale, temperature) + top
