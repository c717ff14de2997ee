"""Average prompt files element-wise (``lightning-prompts average``): MVLPT's source prompt is the mean of
the prompts trained with several seeds (the official ``scripts/avg_ckpt.py``), and a target task starts from it
(``prompt_init``).

Every input must be a prompt file written by ``export_prompt`` / ``lightning-prompts export`` for the same
method and backbone, with the same tensor names and shapes; the output keeps the first file's metadata.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lightning_prompts.errors import ConfigurationError


def average_prompt_files(inputs: Sequence[str | Path], output: str | Path) -> Path:
    """Write the element-wise mean of ``inputs`` (computed in float64, stored in each tensor's dtype)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from lightning_prompts.methods.base.checkpointing import METADATA_PREFIX, read_prompt_file

    if len(inputs) < 2:
        raise ConfigurationError(f"averaging needs at least two prompt files, got {len(inputs)}.")
    resolved = [Path(path).resolve() for path in inputs]
    repeated = sorted({str(path) for path in inputs if resolved.count(Path(path).resolve()) > 1})
    if repeated:  # a seed given twice would weigh double in the mean without a word
        raise ConfigurationError(f"prompt file(s) {', '.join(repeated)} given more than once; average each once.")
    first_tensors, first_meta = read_prompt_file(inputs[0])
    sums = {key: tensor.double() for key, tensor in first_tensors.items()}
    for path in inputs[1:]:
        tensors, metadata = read_prompt_file(path)
        if metadata.get("backbone") != first_meta.get("backbone"):
            raise ConfigurationError(f"prompt file {path} was trained on another backbone than {inputs[0]}.")
        if set(tensors) != set(sums):
            raise ConfigurationError(
                f"prompt file {path} holds tensors {sorted(tensors)}, {inputs[0]} holds {sorted(sums)}."
            )
        for key, tensor in tensors.items():
            if tensor.shape != sums[key].shape:
                raise ConfigurationError(
                    f"prompt file {path}: {key!r} has shape {tuple(tensor.shape)}, {inputs[0]} has "
                    f"{tuple(sums[key].shape)}."
                )
            sums[key] += tensor.double()
    averaged = {key: (total / len(inputs)).to(first_tensors[key].dtype).contiguous() for key, total in sums.items()}
    with safe_open(str(inputs[0]), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
    metadata[f"{METADATA_PREFIX}averaged_from"] = str(len(inputs))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    save_file(averaged, str(tmp), metadata=metadata)
    tmp.chmod(0o644)
    tmp.replace(output)
    return output
