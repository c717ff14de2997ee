"""GRAM's gradient-regulating function ψ_φ (Li et al., "Gradient-Regulated Meta-Prompt Learning for
Generalizable Vision-Language Models", ICCV 2023).

GRAM meta-learns a light function that turns the raw gradient of a prompt into a "regulated" one
which generalises across domains, and applies it to every gradient of a later few-shot prompt tuning.
No official code exists and the paper does not pin the function's form; what we chose, and why:

* **coordinate-wise gate**: ``ψ(g) = g ⊙ 2σ(h(x))`` where, for every gradient coordinate ``g_i``,
  ``x = (g_i / rms(row of g_i), g_i / rms(g))`` (a row is one prompt token's vector) and ``h`` is a
  tiny MLP (2 → hidden → 1, tanh) shared by all coordinates. It sees only normalised gradients, so it
  is scale-free and independent of the prompt's width: a regulator meta-learned on CLIP's text
  context also applies to a ViT's visual prompts or a language model's soft tokens (the library's
  composition rule). Learned optimisers use the same coordinate-wise sharing for the same reason.
* **identity at initialisation**: ``h``'s last layer starts at zero, so ``2σ(0) = 1`` and an
  un-meta-learned regulator leaves the gradient unchanged; meta-learning can only move it from there.
* the gate lies in ``(0, 2)``: it can damp a coordinate to nothing or double it, never flip its sign.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

_EPS = 1e-12


class GradientRegulator(nn.Module):
    """ψ_φ: regulated gradient ``g ⊙ 2σ(h(normalised g))`` (see the module docstring).

    Args:
        hidden: width of the shared coordinate-wise MLP.
    """

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        if hidden < 1:
            raise ValueError(f"hidden must be positive, got {hidden}.")
        self.hidden = hidden
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def features(self, grad: Tensor) -> Tensor:
        """``(*grad.shape, 2)``: each coordinate over its row's rms and over the whole tensor's rms."""
        rows = grad.reshape(-1, grad.shape[-1]) if grad.dim() else grad.reshape(1, 1)
        row_rms = rows.pow(2).mean(dim=-1, keepdim=True).add(_EPS).sqrt()
        tensor_rms = rows.pow(2).mean().add(_EPS).sqrt()
        return torch.stack([rows / row_rms, rows / tensor_rms], dim=-1).reshape(*grad.shape, 2)

    def gate(self, grad: Tensor) -> Tensor:
        """The per-coordinate factor ``2σ(h(x))`` in ``(0, 2)``."""
        weight = self.net[0].weight
        return 2 * torch.sigmoid(self.net(self.features(grad.to(weight.dtype))).squeeze(-1))

    def forward(self, grad: Tensor) -> Tensor:
        return (grad * self.gate(grad)).to(grad.dtype)

    def save(self, path: str | Path) -> Path:
        """Write the regulator to a ``safetensors`` file (its width in the metadata)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"lightning_prompts.regulator": json.dumps({"hidden": self.hidden})})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> GradientRegulator:
        """Read a file written by :meth:`save` (GRAM writes ``regulator.safetensors``)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"gradient regulator file {path} does not exist (GRAM writes it after fit).")
        with safe_open(str(path), framework="pt") as handle:
            config = json.loads((handle.metadata() or {}).get("lightning_prompts.regulator", "null") or "null")
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        if config is None:
            raise ValueError(f"{path} is not a gradient regulator file (no lightning_prompts.regulator metadata).")
        # building the layers draws their initial weights, which the file then replaces: from a forked generator,
        # so that loading a regulator leaves the run's seeded random stream (data order, augmentation) as it was
        with torch.random.fork_rng(devices=[]):
            regulator = cls(**config)
        regulator.load_state_dict(tensors)
        return regulator
