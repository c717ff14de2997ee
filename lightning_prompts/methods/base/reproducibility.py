"""The random-number state a resumed run needs to continue exactly as the uninterrupted run would.

Lightning checkpoints hold the weights, the optimizer and scheduler states and the loop progress, but
not the random generators, and the command line re-seeds at start. So a run resumed from the end of
epoch ``e`` would replay epoch 0's shuffle and augmentations instead of epoch ``e + 1``'s. The module
saves the generators' states with every checkpoint and restores them when ``fit`` resumes:

* torch (CPU and every CUDA device), numpy and Python ``random``;
* data-loading workers need nothing more: each epoch's workers are seeded from the main torch
  generator when the epoch's iterator is created (training loaders do not keep workers alive across
  epochs, ``persistent_workers`` off), and the shuffling sampler draws its seed from it too.

Everything is stored as tensors, lists and numbers, so checkpoints load with ``weights_only=True``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """The state of every random generator a training step can draw from."""
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": int(version), "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s result (generators it does not hold are left alone)."""
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    if "numpy" in state:
        saved = state["numpy"]
        keys = np.asarray(torch.as_tensor(saved["keys"]).numpy(), dtype=np.uint32)
        np.random.set_state((saved["kind"], keys, saved["position"], saved["has_gauss"], saved["cached"]))
    if "python" in state:
        saved = state["python"]
        random.setstate((saved["version"], tuple(saved["internal"]), saved["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8) for s in state["cuda"]])
