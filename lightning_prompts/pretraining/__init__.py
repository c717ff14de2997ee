"""LightningModules that produce what prompt methods start from (a pre-trained GNN, a meta-learned
prompt initialisation); they register as ``pretraining`` and import on first use."""

from lightning_prompts.registry import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__)
