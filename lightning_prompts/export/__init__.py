"""Export trained prompts to formats other libraries load."""

from lightning_prompts.export.peft import export_peft_prompt_tuning

__all__ = ["export_peft_prompt_tuning"]
