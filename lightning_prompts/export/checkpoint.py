"""Take the trained prompt out of a Lightning checkpoint (``lightning-prompts export``)."""

from __future__ import annotations

from pathlib import Path

from lightning_prompts.errors import ConfigurationError


def export_checkpoint(ckpt_path: str | Path, output: str | Path, peft_dir: str | Path | None = None) -> list[Path]:
    """Rebuild the method of ``ckpt_path`` (registered classes only; the backbone from its stored config)
    and write its trainable state to ``output`` (safetensors), and a PEFT adapter to ``peft_dir``."""
    from lightning_prompts.methods.base.checkpointing import read_checkpoint
    from lightning_prompts.registry import resolve_class

    path = Path(ckpt_path)
    checkpoint = read_checkpoint(path)
    method = (checkpoint.get("lightning_prompts") or {}).get("method")
    if not method:
        raise ConfigurationError(f"{path} was not written by a lightning_prompts method (no method recorded).")
    cls = resolve_class(str(method), ("method", "pretraining"))
    model = cls.load_from_checkpoint(str(path), map_location="cpu")
    written = [model.export_prompt(output)]
    if peft_dir is not None:
        export = getattr(model, "export_peft", None)
        if not callable(export):
            raise ConfigurationError(f"{method} has no PEFT export (only text prompt methods do).")
        written.append(Path(export(peft_dir)))
    return written
