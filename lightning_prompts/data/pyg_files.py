"""Build a PyG dataset from a folder without letting its files run code.

PyG's datasets read their folders with loaders that can run code: ``processed/pre_transform.pt`` and
``pre_filter.pt`` with an unrestricted ``torch.load``, ``processed/data.pt`` with a weights-only read that falls
back to an unrestricted one when the file names a class it does not know, Planetoid's raw ``ind.<name>.*`` files
with ``pickle.load``, and some raw formats with ``numpy.load`` allowing pickles. A dataset folder shared
by a colleague or downloaded from a mirror is data, and must not be able to run a command.

:func:`files_read_as_data` holds, while a dataset is built, ``torch.load`` to ``weights_only=True``,
``numpy.load`` to ``allow_pickle=False`` and ``pickle.load``/``pickle.loads`` to an allow-list of plain
containers, numpy arrays and scipy sparse matrices
(:func:`~lightning_prompts.utils.safe_pickle.load_graph_data_pickle`: what Planetoid's files hold). The loaders
are replaced for the construction only and restored after, on every exit.
"""

from __future__ import annotations

import contextlib
import io
import pickle
from collections.abc import Iterator
from typing import Any

from lightning_prompts.utils.safe_pickle import load_graph_data_pickle


@contextlib.contextmanager
def files_read_as_data(where: str) -> Iterator[None]:
    """While active, ``torch.load``, ``numpy.load``, ``pickle.load`` and ``pickle.loads`` read data only;
    ``where`` names the dataset in a refusal."""
    import numpy as np
    import torch

    torch_load, numpy_load, pickle_load, pickle_loads = torch.load, np.load, pickle.load, pickle.loads

    def weights_only_load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True  # also when PyG asks for False
        return torch_load(*args, **kwargs)

    def numpy_without_pickles(*args: Any, **kwargs: Any) -> Any:
        kwargs["allow_pickle"] = False
        return numpy_load(*args, **kwargs)

    def restricted_load(file: Any, **kwargs: Any) -> Any:
        return load_graph_data_pickle(file, f"a file of {where}", **_unpickler_options(kwargs))

    def restricted_loads(data: bytes, /, **kwargs: Any) -> Any:
        return load_graph_data_pickle(io.BytesIO(data), f"a file of {where}", **_unpickler_options(kwargs))

    torch.load, np.load, pickle.load, pickle.loads = (  # type: ignore[assignment]
        weights_only_load,
        numpy_without_pickles,
        restricted_load,
        restricted_loads,
    )
    try:
        yield
    finally:
        torch.load, np.load, pickle.load, pickle.loads = torch_load, numpy_load, pickle_load, pickle_loads


def _unpickler_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {key: kwargs[key] for key in ("fix_imports", "encoding", "errors") if key in kwargs}
