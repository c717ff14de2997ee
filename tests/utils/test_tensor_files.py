"""Tensor files are read weights-only, and a failure never passes on torch's advice to load with
weights_only=False (which would let the file run code)."""

from __future__ import annotations

import pytest
import torch

from lightning_prompts.utils.tensor_files import load_tensor_file


class Custom:
    pass


def test_a_file_holding_objects_is_refused_without_the_unsafe_advice(tmp_path):
    path = tmp_path / "gnn.pt"
    torch.save({"weights": torch.zeros(2), "extra": Custom()}, path)
    with pytest.raises(ValueError) as error:
        load_tensor_file(path, "GNN checkpoint")
    message = str(error.value)
    assert message.startswith(f"{path} is not a GNN checkpoint readable with weights_only=True: it holds objects")
    assert "weights_only=False" not in message and "weights_only` set to `False" not in message
