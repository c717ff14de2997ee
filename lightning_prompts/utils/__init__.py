"""Small helpers shared across the package."""

from lightning_prompts.utils.resources import resolve_path

__all__ = ["resolve_path"]
