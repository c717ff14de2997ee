"""The GIN of ProG (Sun et al., "Graph Prompt Learning: A Comprehensive Survey and Beyond") and of RELIEF's
node-level code, whose released encoders (``node_level/pretrained_models/{GPPT,Gprompt}_<dataset>.pth`` of
JasonZhujp/RELIEF: 2 layers, 100 → 128 → 128, pre-trained by edge prediction on SVD-reduced features) are plain
state dicts of it.

Each layer is PyG's ``GINConv`` with the MLP ``Linear(d_in, d) → ReLU → Linear(d, d)`` and ``eps`` fixed at 0 (sum
over in-neighbours plus the node itself); between layers a leaky ReLU (slope 0.01) and dropout; the node embeddings
are the last layer's output (``JK="last"``, the setting of every RELIEF run). The module tree repeats the official
one (``conv_layers.<i>.nn.{0,2}``, ``conv_layers.<i>.eps``), so the released ``.pth`` files load as they are, read
with ``torch.load(weights_only=True)``. The encoder is frozen in eval mode, so dropout is off (the official
node-level code leaves the GNN in train mode during its head updates, so dropout 0.5 is active there under
``no_grad``: a deviation we keep, because a frozen backbone that draws random numbers makes evaluation and exact
resume depend on them). RELIEF's node-level script also sets torch's default dtype to float64; the encoder here runs
in float32, as it was saved. Block hooks edit the features entering each layer; RELIEF's increments and GPF's prompt
land before layer 0, where the official code adds its prompt.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn
from torch.nn import functional as F

from lightning_prompts.backbones.gnn import GNN
from lightning_prompts.registry import register_backbone
from lightning_prompts.utils.tensor_files import load_tensor_file


class ProGGINEncoder(nn.Module):
    """``num_layers`` ``GINConv(Linear → ReLU → Linear)`` layers with a leaky ReLU between them."""

    def __init__(self, in_channels: int, hidden_channels: int, num_layers: int) -> None:
        super().__init__()
        from torch_geometric.nn import GINConv

        if num_layers < 2:
            raise ValueError(f"ProG's GIN has at least 2 layers, got num_layers={num_layers}.")
        widths = [in_channels] + [hidden_channels] * num_layers
        self.conv_layers = nn.ModuleList(
            GINConv(nn.Sequential(nn.Linear(a, b), nn.ReLU(), nn.Linear(b, b))) for a, b in zip(widths, widths[1:])
        )

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        for index, conv in enumerate(self.conv_layers):
            x = conv(x, edge_index)
            if index < len(self.conv_layers) - 1:
                x = F.leaky_relu(x)
        return x


@register_backbone(family="graph")
class ProGGIN(GNN):
    """A frozen ProG / RELIEF node-level GIN (see the module docstring); :class:`~lightning_prompts.backbones.GNN`
    with the official module tree and checkpoint format.

    Args:
        in_channels: node feature width (100: RELIEF's SVD-reduced features).
        hidden_channels: width of every layer and of the node embeddings (128).
        num_layers: GIN layers (2).
        checkpoint_path: a released ``.pth`` (a plain state dict of the official ``GIN``); ``None`` keeps random
            weights.
        seed: seed for random initialisation.
    """

    def __init__(
        self,
        in_channels: int = 100,
        hidden_channels: int = 128,
        num_layers: int = 2,
        checkpoint_path: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__("prog-gin", in_channels, hidden_channels, num_layers, None, checkpoint_path, seed)

    def build_encoder(self) -> nn.Module:
        arch = self.arch_config
        return ProGGINEncoder(arch["in_channels"], arch["hidden_channels"], arch["num_layers"])

    @property
    def layers(self) -> nn.ModuleList:
        return self.encoder.conv_layers

    def _load(self, path: Path) -> None:
        state = load_tensor_file(path, "ProG GIN checkpoint")
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise ValueError(f"{path} does not hold a state dict (a mapping of parameter names to tensors).")
        if "conv_layers.0.nn.0.weight" not in state:
            first = sorted(state)[:3]
            raise ValueError(f"{path} is not a ProG GIN: it has no 'conv_layers.0.nn.0.weight' (keys {first}).")
        layers = len({int(key.split(".")[1]) for key in state if key.startswith("conv_layers.")})
        hidden, inputs = (int(n) for n in state["conv_layers.0.nn.0.weight"].shape)
        stored = {"in_channels": inputs, "hidden_channels": hidden, "num_layers": layers}
        configured = {key: self.arch_config[key] for key in stored}
        if stored != configured:
            raise ValueError(f"{path} holds a GIN with {stored} but the backbone is configured with {configured}.")
        self.encoder.load_state_dict({key: value.float() for key, value in state.items()})
