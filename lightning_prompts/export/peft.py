"""Export soft prompts as PEFT adapters (``PeftModel.from_pretrained`` loads them).

PEFT stores a prompt-learning adapter as ``adapter_config.json`` plus ``adapter_model.safetensors``
holding one tensor ``prompt_embeddings``: ``(num_virtual_tokens, token_dim)`` for prompt tuning,
``(num_virtual_tokens, 2 · num_layers · token_dim)`` for prefix tuning (the per-layer keys and values,
reparameterisation applied, as PEFT saves them in inference mode). For sequence classification the
trained head travels as ``modules_to_save`` under ``base_model.<head name>.<parameter>``. We write the
same two files without importing PEFT.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

_TASK_TYPES = {"sequence-classification": "SEQ_CLS", "causal-lm": "CAUSAL_LM", "seq2seq-lm": "SEQ_2_SEQ_LM"}
#: What a PEFT adapter folder holds (``save_pretrained`` also writes a model card): the only files an export replaces.
ADAPTER_FILES = frozenset({"adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "README.md"})


def check_adapter_folder(directory: str | Path) -> Path:
    """``directory`` resolved, if an adapter may be written there: new, empty, or a PEFT adapter folder (replaced
    whole). Anything else is refused, never deleted: a mistyped ``--peft .`` once emptied the working folder."""
    from lightning_prompts.errors import ConfigurationError

    resolved = Path(directory).expanduser().resolve()
    if resolved.exists() and not resolved.is_dir():
        raise ConfigurationError(f"PEFT adapter folder {directory} is a file; give a new or empty folder.")
    listed = resolved.iterdir() if resolved.is_dir() else ()
    others = sorted(path.name for path in listed if path.name not in ADAPTER_FILES)
    if others:
        raise ConfigurationError(
            f"PEFT adapter folder {directory} holds other files than an adapter ({', '.join(others[:5])}"
            f"{', …' if len(others) > 5 else ''}), which writing the adapter would delete; give a new or empty folder."
        )
    if resolved == Path.cwd().resolve() or resolved == Path.home().resolve() or resolved.parent == resolved:
        raise ConfigurationError(f"PEFT adapter folder {directory} is {resolved}; give a new folder for the adapter.")
    return resolved


def export_peft_prompt_tuning(
    directory: str | Path,
    prompt: Tensor,
    model_config: Any,
    task: str,
    base_model_name_or_path: str | None,
    head_modules: Mapping[str, nn.Module] | None = None,
    p_tuning_hidden_size: int | None = None,
) -> Path:
    """Write ``directory/adapter_config.json`` and ``directory/adapter_model.safetensors``.

    Args:
        directory: output folder (created; replaced atomically if it exists).
        prompt: ``(num_virtual_tokens, token_dim)`` soft prompt.
        model_config: the base model's ``transformers`` config (layer and head counts).
        task: ``"sequence-classification"``, ``"causal-lm"`` or ``"seq2seq-lm"``.
        base_model_name_or_path: recorded so ``PeftModel.from_pretrained`` users know the base model.
        head_modules: trained classification head(s) by attribute name (sequence classification).
        p_tuning_hidden_size: write a ``P_TUNING`` adapter (``prompt`` is then the MLP's output, which PEFT
            stores and loads in inference mode) with this ``encoder_hidden_size``.
    """
    config: dict[str, Any] = {
        "num_virtual_tokens": int(prompt.shape[0]),
        "token_dim": int(prompt.shape[1]),
        "num_attention_heads": _first(model_config, "num_attention_heads", "n_head"),
        "num_layers": _first(model_config, "num_hidden_layers", "n_layer"),
    }
    if p_tuning_hidden_size is not None:
        config |= {
            "peft_type": "P_TUNING",
            "encoder_reparameterization_type": "MLP",
            "encoder_hidden_size": int(p_tuning_hidden_size),
            "encoder_num_layers": 2,
            "encoder_dropout": 0.0,
        }
    else:
        config |= {
            "peft_type": "PROMPT_TUNING",
            "prompt_tuning_init": "RANDOM",
            "prompt_tuning_init_text": None,
            "tokenizer_name_or_path": None,
            "tokenizer_kwargs": None,
        }
    return _write_adapter(directory, config, prompt, task, base_model_name_or_path, head_modules)


def export_peft_prefix_tuning(
    directory: str | Path,
    table: Tensor,
    num_layers: int,
    key_value_heads: int,
    task: str,
    base_model_name_or_path: str | None,
    head_modules: Mapping[str, nn.Module] | None = None,
) -> Path:
    """Write a PEFT prefix-tuning adapter.

    Args:
        table: ``(m, 2 · num_layers · W)`` keys and values in PEFT's layout ``[layer][key, value][head][dim]``
            with ``W = key_value_heads · head_dim``.
        num_layers, key_value_heads: the base model's layers and key/value heads (``num_attention_heads``
            in PEFT's config is the number of key/value heads, so grouped-query models load).
        Other arguments as :func:`export_peft_prompt_tuning`.
    """
    width, rest = divmod(int(table.shape[1]), 2 * num_layers)
    if rest:
        raise ValueError(f"a prefix table of width {table.shape[1]} does not split into 2 x {num_layers} layers.")
    config = {
        "peft_type": "PREFIX_TUNING",
        "num_virtual_tokens": int(table.shape[0]),
        "token_dim": width,
        "num_attention_heads": key_value_heads,
        "num_layers": num_layers,
        "encoder_hidden_size": width,
        "prefix_projection": False,
    }
    return _write_adapter(directory, config, table, task, base_model_name_or_path, head_modules)


def _write_adapter(
    directory: str | Path,
    config: dict[str, Any],
    prompt: Tensor,
    task: str,
    base_model_name_or_path: str | None,
    head_modules: Mapping[str, nn.Module] | None,
) -> Path:
    from safetensors.torch import save_file

    if task not in _TASK_TYPES:
        raise ValueError(f"task must be one of {sorted(_TASK_TYPES)}, got {task!r}.")
    tensors = {"prompt_embeddings": prompt.detach().float().cpu().contiguous()}
    for name, module in (head_modules or {}).items():
        for key, value in module.state_dict().items():
            tensors[f"base_model.{name}.{key}"] = value.detach().cpu().contiguous()
    config = {
        **config,
        "task_type": _TASK_TYPES[task],
        "num_transformer_submodules": 1,
        "base_model_name_or_path": base_model_name_or_path,
        "revision": None,
        "inference_mode": True,
        "modules_to_save": ["classifier", "score"] if task == "sequence-classification" else None,
        "auto_mapping": None,
    }
    directory = check_adapter_folder(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        (staging / "adapter_config.json").write_text(json.dumps(config, indent=2))
        save_file(tensors, str(staging / "adapter_model.safetensors"))
        if directory.exists():
            shutil.rmtree(directory)
        staging.replace(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _first(config: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    return None
