"""The method base and the family bases a new method starts from.

* :class:`PromptModule`: every method (frozen backbone, optimisation, loss terms, evaluation, checkpoints);
* :class:`CLIPPromptModule`: CLIP-family backbones (class text features × image features);
* :class:`ViTPromptModule`: timm ViTs (block hooks + a head on the pooled feature);
* :class:`TextPromptModule`: Hugging Face language models (tokenization, context checks, verbalizer, head);
* :class:`GraphPromptModule`: PyG GNNs (block hooks on the layers + a head on node or graph embeddings);
* :class:`HeteroNodeModule`: heterogeneous GNNs on ``HeteroData`` (node classification of one target type).
"""

from lightning_prompts.methods.base.clip import CLIPPromptModule
from lightning_prompts.methods.base.fields import provides
from lightning_prompts.methods.base.graph import GraphPromptModule, mlp_head
from lightning_prompts.methods.base.hetero import HeteroNodeModule
from lightning_prompts.methods.base.module import PromptModule
from lightning_prompts.methods.base.text import LabelWords, TextPromptModule
from lightning_prompts.methods.base.vit import ViTPromptModule

__all__ = [
    "CLIPPromptModule",
    "GraphPromptModule",
    "HeteroNodeModule",
    "LabelWords",
    "PromptModule",
    "TextPromptModule",
    "ViTPromptModule",
    "mlp_head",
    "provides",
]
