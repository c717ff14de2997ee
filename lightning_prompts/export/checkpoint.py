"""Take the trained prompt out of a Lightning checkpoint (``lightning-prompts export``)."""

from __future__ import annotations

from pathlib import Path

from lightning_prompts.errors import ConfigurationError


def export_checkpoint(
    ckpt_path: str | Path, output: str | Path, peft_dir: str | Path | None = None, prefix: str = ""
) -> list[Path]:
    """Rebuild the method of ``ckpt_path`` (registered classes only; the backbone from its stored config)
    and write its trainable state to ``output`` (safetensors; only the tensors whose names start with
    ``prefix`` when given), and a PEFT adapter to ``peft_dir``."""
    from lightning_prompts.export.peft import check_adapter_folder
    from lightning_prompts.methods.base.checkpointing import read_checkpoint
    from lightning_prompts.registry import resolve_class

    path = Path(ckpt_path)
    if str(ckpt_path) in ("best", "last") and not path.is_file():  # Lightning's names, which need a Trainer
        raise ConfigurationError(
            f"export reads a checkpoint file: --ckpt_path {ckpt_path} names one only for fit, validate, test and "
            f"predict. Give the file, e.g. <run>/checkpoints/{ckpt_path}.ckpt."
        )
    checkpoint = read_checkpoint(path)
    method = (checkpoint.get("lightning_prompts") or {}).get("method")
    if not method:
        raise ConfigurationError(
            f"{path} was not written by a lightning_prompts prompt method (no method recorded): export reads a prompt "
            f"method's checkpoint. An encoder pre-training run writes its encoder at the end of fit (encoder_path)."
        )
    # every target is checked before anything is written: a refusal leaves no half-done export behind
    if Path(output).is_dir():
        raise ConfigurationError(f"--output {output} is a folder; give the prompt file's name (prompt.safetensors).")
    cls = resolve_class(str(method), ("method", "pretraining"))
    if peft_dir is not None:
        if not callable(getattr(cls, "export_peft", None)):
            raise ConfigurationError(f"{method} has no PEFT export (only text prompt methods do).")
        check_adapter_folder(peft_dir)
    model = cls.load_from_checkpoint(str(path), map_location="cpu")
    if prefix and not any(key.startswith(prefix) for key in model.trainable_state_keys()):
        from lightning_prompts.methods.base.checkpointing import preview

        raise ConfigurationError(
            f"--prefix {prefix!r} starts none of {method}'s trainable tensors {preview(model.trainable_state_keys())}."
        )
    written = [model.export_prompt(output, prefix=prefix)]
    if peft_dir is not None:
        written.append(Path(model.export_peft(peft_dir)))
    return written
