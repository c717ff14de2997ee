"""Small builders shared by tests."""

from __future__ import annotations

import functools
import os
import re
import shlex
from pathlib import Path
from typing import Any

from lightning_prompts.data import FewShotImageDataModule, Synthetic

ROOT = Path(__file__).resolve().parents[1]


def run_from_scratch_root(folder: Path, monkeypatch) -> Path:
    """Work in ``folder`` as in the checkout's root: the commands' relative ``recipes/…`` paths (and the overlays'
    ``recipes/_tiny/…`` files) resolve to the checkout's recipes, while whatever a run writes to a relative path
    (``outputs/…``) stays in ``folder``."""
    monkeypatch.chdir(folder)
    if not (folder / "recipes").exists():
        (folder / "recipes").symlink_to(ROOT / "recipes")
    return folder


def docs_commands(page: Path, program: tuple[str, ...] = ("lightning-prompts",)) -> list[list[str]]:
    """The commands of a docs page's bash blocks that start with ``program`` (continuation lines joined), without
    it: ``lightning-prompts`` by default, ``("python", "docs/tutorials/x.py")`` for a script."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if tuple(words[: len(program)]) == program:
                found.append(words[len(program) :])
    return found


def docs_python(page: Path) -> list[str]:
    """The Python blocks of a docs page, in order."""
    return re.findall(r"```python\n(.*?)```", page.read_text(), re.S)


def docs_python_blocks(page: Path, containing: str) -> str:
    """The one Python block of a docs page that contains ``containing``."""
    found = [block for block in docs_python(page) if containing in block]
    assert len(found) == 1, f"{page.name}: {len(found)} Python blocks contain {containing!r}"
    return found[0]


def synthetic_fewshot(dataset: str = "caltech101", shots: int = 2, num_classes: int = 4, **kwargs):
    """A few-shot image data module on generated images in ``dataset``'s Dassl layout."""
    options = {"batch_size": 4, "eval_batch_size": 8, "num_workers": 0, "image_size": 32}
    options.update(kwargs)
    return FewShotImageDataModule(
        dataset=dataset, shots=shots, synthetic=Synthetic(num_classes=num_classes, images_per_class=4), **options
    )


from lightning_prompts.callbacks import LossTerm  # noqa: E402


class SquaredTextFeatures(LossTerm):
    """Mean square of the normalised class text features: 1/D whatever the prompt (easy to check)."""

    required_fields = ("text_features",)

    def compute(self, module, batch, output):
        return output.text_features.pow(2).mean()


class NeedsNodeEmbeddings(LossTerm):
    """A term no image method can feed (for the unmet-field error)."""

    required_fields = ("node_embeddings",)

    def compute(self, module, batch, output):  # pragma: no cover - never reached
        raise AssertionError("a term with an unmet field must not run")


def official_mvlpt_image_features(visual, images, shallow, deep):
    """MVLPT's ``ImageEncoder.forward`` (sIncerass/MVLPT) re-computed: prompts after ln_pre, right after the
    class token, replaced before every later block; sequence-first as the official loop runs."""
    import torch

    x = visual.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    x = visual.ln_pre(x)
    batch, n = x.shape[0], shallow.shape[0]
    x = torch.cat([x[:, :1], shallow.expand(batch, -1, -1), x[:, 1:]], dim=1)  # forward_vpt
    x = x.permute(1, 0, 2)  # NLD -> LND, as the official loop runs
    for index, block in enumerate(visual.transformer.resblocks):
        if index >= 1:
            fresh = deep[index - 1].expand(batch, -1, -1).permute(1, 0, 2)
            x = torch.cat([x[:1], fresh, x[1 + n :]], dim=0)
        if visual.transformer.batch_first:
            x = block(x.permute(1, 0, 2)).permute(1, 0, 2)
        else:
            x = block(x)
    x = x.permute(1, 0, 2)
    return visual.ln_post(x[:, 0, :]) @ visual.proj


from lightning.pytorch import Callback  # noqa: E402


class RecordTrainingSteps(Callback):
    """Each training step's batch (cloned before the step) and the loss it returned: what a test re-computes."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.steps.append({"batch": {key: value.clone() for key, value in batch.items()}})

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.steps[-1]["loss"] = (outputs["loss"] if isinstance(outputs, dict) else outputs).detach().clone()


def short_pseudolabel_rounds(monkeypatch, rounds: int = 3) -> None:
    """Pseudolabel rounds of one epoch, ``rounds`` of them, instead of the recipes' 10 × 150 epochs."""
    from lightning_prompts.callbacks import PseudoLabelRounds

    init = PseudoLabelRounds.__init__

    @functools.wraps(init)  # the command's parser reads the signature
    def short(callback, *args, **kwargs):
        init(callback, *args, **{**kwargs, "rounds": rounds, "epochs_per_round": 1})

    monkeypatch.setattr(PseudoLabelRounds, "__init__", short)


def without_early_stop(recipe: Path) -> list[str]:
    """Options that leave out PTEC's early stop: its recipes end a diverging run (macro-F1 under 0.07) after the first
    epoch, which a tiny model's run always is, leaving later epochs untested."""
    return ["--trainer.callbacks=[]"] if recipe.parent.name == "ptec" else []


class CodeInPickle:
    """Pickles to "run ``touch marker``" when loaded: a hostile file's payload (tests check that no marker appears)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def precision_options(precision: str) -> dict:
    """Trainer options for ``precision``; ``"16-mixed"`` with the float16 gradient scaler it has on a GPU, which
    Lightning replaces by bfloat16 (no scaler) on a CPU: its plugin given as is runs float16 autocast on the CPU."""
    if precision != "16-mixed":
        return {"precision": precision}
    import torch
    from lightning.pytorch.plugins.precision import MixedPrecision

    return {"plugins": [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]}


def bio_ego_networks(train: int, test: int, tasks: int = 3, seed: int = 0) -> list[dict]:
    """Small ego-networks as Pretrain-GNNs' bio dataset stores them: ``x`` ones ``(N, 1)``, both directions of each
    edge with the same 9 features (7 association channels, then two zero flags), the centre, the species (the
    first ``train`` from the training species in turn, then ``test`` human ones) and 0/1 GO-term labels."""
    import torch

    from lightning_prompts.data.bio import TEST_SPECIES, TRAIN_VALID_SPECIES

    generator = torch.Generator().manual_seed(seed)
    networks = []
    for i in range(train + test):
        nodes = int(torch.randint(2, 7, (1,), generator=generator))
        pairs = torch.randint(0, nodes, (2, nodes + 1), generator=generator)
        pairs = pairs[:, pairs[0] != pairs[1]]
        channels = torch.randint(0, 2, (pairs.shape[1], 7), generator=generator).float()
        features = torch.cat([channels, torch.zeros(pairs.shape[1], 2)], dim=1)
        networks.append(
            {
                "x": torch.ones(nodes, 1),
                "edge_index": torch.stack([pairs, pairs.flip(0)], dim=2).reshape(2, -1),  # (i, j) then (j, i)
                "edge_attr": features.repeat_interleave(2, dim=0),
                "center_node_idx": torch.randint(0, nodes, (1,), generator=generator),
                "species_id": torch.tensor([TRAIN_VALID_SPECIES[i % 7] if i < train else TEST_SPECIES[0]]),
                "go_target_downstream": torch.randint(0, 2, (tasks,), generator=generator),
                "go_target_pretrain": torch.randint(0, 2, (5,), generator=generator),
            }
        )
    return networks


def write_processed_bio(path: Path, networks: list[dict]) -> Path:
    """``networks`` collated and saved as PyG 1.0's ``InMemoryDataset`` saved the bio dataset in 2019: ``torch.save``
    (legacy format) of a pickled ``torch_geometric.data.data.Data`` holding the concatenated fields (each graph's
    node indices its own) and the slices of every field."""
    import torch
    import torch_geometric.data.data as pyg_data

    class Data:  # the pickled class: an object whose attributes are the fields (PyG 1.0's Data had no _store)
        pass

    Data.__module__, Data.__qualname__ = "torch_geometric.data.data", "Data"
    stored = Data()
    stored.y = stored.pos = None  # PyG 1.0's Data.__init__ set them
    slices = {}
    for key in networks[0]:
        dim = 1 if key == "edge_index" else 0
        parts = [network[key] for network in networks]
        setattr(stored, key, torch.cat(parts, dim=dim))
        slices[key] = torch.tensor([0, *[part.shape[dim] for part in parts]]).cumsum(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    original, pyg_data.Data = pyg_data.Data, Data  # pickle finds the class by its module and name
    try:
        torch.save((stored, slices), path, _use_new_zipfile_serialization=False)
    finally:
        pyg_data.Data = original
    return path


def unlabelled_bio_networks(train: int, test: int) -> list[dict]:
    """:func:`bio_ego_networks` without the GO-term labels: the layout of the unsupervised dataset (pre-training)."""
    return [{k: v for k, v in net.items() if not k.startswith("go_")} for net in bio_ego_networks(train, test)]


def unlabelled_bio_data(folder: Path, batch_size: int = 8) -> Any:
    """A ``BioDataModule`` (random split) on 40 unlabelled ego-networks written under ``folder``."""
    from lightning_prompts.data.bio import BioDataModule

    path = write_processed_bio(folder / "unsupervised.pt", unlabelled_bio_networks(30, 10))
    return BioDataModule(str(path), split="random", batch_size=batch_size)


def pretrain_and_reload_the_bio_encoder(module: Any, data: Any, path: Path, trainer_kwargs: dict) -> Any:
    """Fit a bio GIN pre-training ``module`` three steps on ``data``: its encoder moved, and the file it wrote to
    ``path`` loads into ``BioGIN`` with every tensor equal. Returns the Trainer."""
    import torch
    from lightning.pytorch import Trainer

    from lightning_prompts.backbones import BioGIN

    before = {key: value.clone() for key, value in module.encoder.state_dict().items()}
    trainer = Trainer(max_steps=3, **trainer_kwargs)
    trainer.fit(module, data)
    state = module.encoder.state_dict()
    assert any(not torch.equal(state[key], before[key]) for key in state)  # trained
    loaded = BioGIN(str(path), num_layers=2, emb_dim=8)
    for key, value in state.items():
        assert torch.equal(loaded.encoder.state_dict()[key], value), key
    return trainer


def official_graphcl_loss(x, x_aug, temperature: float):
    """GraphCL's NT-Xent as its code writes it (``loss_cal`` of unsupervised_TU, ``loss_cl`` of the transfer-learning
    code at T = 0.1): one direction, the positive left out of the denominator."""
    import torch

    batch_size = x.shape[0]
    x_abs, x_aug_abs = x.norm(dim=1), x_aug.norm(dim=1)
    sim_matrix = torch.einsum("ik,jk->ij", x, x_aug) / torch.einsum("i,j->ij", x_abs, x_aug_abs)
    sim_matrix = torch.exp(sim_matrix / temperature)
    pos_sim = sim_matrix[range(batch_size), range(batch_size)]
    loss = pos_sim / (sim_matrix.sum(dim=1) - pos_sim)
    return -torch.log(loss).mean()


def widened(module: Any, std: float = 0.5) -> Any:
    """``module`` with every parameter drawn from N(0, std²): weights wide enough that the samples a test compares
    score apart (with the default initialisation a comparison can hold for any formula)."""
    import torch

    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0, std)
    return module


def prefix_site_attentions(model: Any) -> list[Any]:
    """An encoder-decoder's attentions in the order its prefixes come: encoder self, decoder self, decoder cross
    (T5's ``SelfAttention``/``EncDecAttention``, BART's ``self_attn``/``encoder_attn``)."""
    from lightning_prompts.backbones.encoder_decoder_prefixes import encoder_decoder_layers

    encoder, decoder = encoder_decoder_layers(model)
    if hasattr(encoder[0], "self_attn"):
        return [*(layer.self_attn for layer in (*encoder, *decoder)), *(layer.encoder_attn for layer in decoder)]
    return [
        *(layer.layer[0].SelfAttention for layer in (*encoder, *decoder)),
        *(layer.layer[1].EncDecAttention for layer in decoder),
    ]


def recorded_key_values(model: Any, run: Any) -> tuple[list[tuple[Any, Any]], Any]:
    """``run()``'s output and, for every prefix site's attention (:func:`prefix_site_attentions`), the outputs of its
    key and value projections ``(B, L, W)`` in that call: the keys and values of every position it read."""
    recorded: list[list[Any]] = []
    handles = []
    for attention in prefix_site_attentions(model):
        outputs: list[Any] = []
        recorded.append(outputs)
        bart = hasattr(attention, "k_proj")
        for projection in (attention.k_proj, attention.v_proj) if bart else (attention.k, attention.v):
            handles.append(projection.register_forward_hook(lambda module, args, out, into=outputs: into.append(out)))
    try:
        output = run()
    finally:
        for handle in handles:
            handle.remove()
    assert all(len(outputs) == 2 for outputs in recorded)  # one key and one value projection per attention
    return [(keys, values) for keys, values in recorded], output
