"""``InstructionConsistency``: one answer whatever the phrasing of the instruction (text methods).

Sun, Shaib and Wallace, "Evaluating the Zero-shot Robustness of Instruction-tuned Language Models",
ICLR 2024, show that semantically equivalent rephrasings of an instruction change what an
instruction-tuned model answers, and train soft prompt parameters so that equivalent instructions
give the same output, with the task loss on the paraphrased data and a KL term between the outputs
under two phrasings. We found no released code; what we decided, and the tests pin:

* every training step draws one paraphrase ``j`` of the task's instructions (seeded, the same on
  every DDP rank) and runs the batch's texts under it (``module.forward_texts``); the method's own
  pass, under its ``text_template``, is the anchor;
* term = ``KL(softmax(z_anchor / T) ‖ softmax(z_j / T)) · T²  +  ce_weight · CE(z_j, y)``, KL averaged
  over the batch (``batchmean``), gradients through both passes (both phrasings move towards each
  other), over the class logits the method scores (a verbalizer's label words or a head);
* the paraphrases come from a JSON file ``{task: [instruction, ...]}``; an instruction with
  ``{text}`` is a whole template, any other is put in front of the method's ``text_template``.

It is the text counterpart of :class:`~lightning_prompts.callbacks.ConsistencyRegularization` and
works with any text method (:class:`~lightning_prompts.methods.base.TextPromptModule`): prompt
tuning, prefix tuning, DePT. Every paraphrase is checked against the context length before training.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch.nn.functional as F
from torch import Tensor

from lightning_prompts.batch import TEXT
from lightning_prompts.callbacks.loss_term import LossTerm
from lightning_prompts.callbacks.seeded_draws import SeededDraws
from lightning_prompts.errors import ConfigurationError, DatasetError
from lightning_prompts.registry import register_callback
from lightning_prompts.utils.json_files import read_json
from lightning_prompts.utils.resources import resolve_path

if TYPE_CHECKING:
    from lightning_prompts.methods.base import PromptModule
    from lightning_prompts.outputs import PromptOutput


def read_paraphrases(path: str | Path, task: str | None = None) -> list[str]:
    """The instructions of ``task`` in a JSON file ``{task: [instruction, ...]}`` (the only task when
    ``task`` is ``None``); at least two, each a non-empty string."""
    file = resolve_path(path)
    content = read_json(file, "Paraphrase file")
    if not isinstance(content, dict) or not content:
        raise DatasetError(f"Paraphrase file {file} must be an object {{task: [instruction, ...]}}.")
    if task is None:
        if len(content) != 1:
            raise ConfigurationError(f"Paraphrase file {file} has tasks {sorted(content)}; say which with `task`.")
        task = next(iter(content))
    if task not in content:
        raise DatasetError(f"Paraphrase file {file} has no task {task!r} (it has {sorted(content)}).")
    instructions = content[task]
    if not isinstance(instructions, list) or not all(isinstance(i, str) and i.strip() for i in instructions):
        raise DatasetError(f"Paraphrase file {file}: task {task!r} must list instruction strings.")
    if len(instructions) < 2:
        raise DatasetError(f"Paraphrase file {file}: task {task!r} needs at least two instructions to compare.")
    return list(instructions)


def instruction_template(instruction: str, text_template: str) -> str:
    """The template an instruction stands for: itself when it has ``{text}``, else put before ``text_template``."""
    if "{text}" in instruction:
        return instruction
    return f"{instruction.strip()} {text_template}"


def consistency_kl(anchor: Tensor, paraphrase: Tensor, temperature: float) -> Tensor:
    """``KL(softmax(anchor/T) ‖ softmax(paraphrase/T)) · T²``, averaged over the batch."""
    target = F.log_softmax(anchor.float() / temperature, dim=-1)
    prediction = F.log_softmax(paraphrase.float() / temperature, dim=-1)
    return F.kl_div(prediction, target, reduction="batchmean", log_target=True) * temperature**2


@register_callback(
    family="text",
    paper="Sun, Shaib, Wallace, ICLR 2024 — Evaluating the Zero-shot Robustness of Instruction-tuned Language Models",
    docs="callbacks/instruction_consistency.md",
    example={"paraphrases": "recipes/instruction_consistency/sentiment_instructions.json"},
)
class InstructionConsistency(SeededDraws, LossTerm):
    """Agreement between the outputs under the method's instruction and a drawn paraphrase (see the module docstring).

    Args:
        paraphrases: JSON file ``{task: [instruction, ...]}`` (``pkg://`` paths work).
        task: the task whose instructions to use (default: the file's only task).
        weight: the term's weight.
        ce_weight: weight of the task loss on the paraphrased pass (0: the KL alone).
        temperature: ``T`` of the KL.
        seed: seed of the per-step paraphrase draw; default: the run's seed.
        name: logged as ``train/<name>``.
    """

    method_families: ClassVar[tuple[str, ...] | None] = ("text",)

    def __init__(
        self,
        paraphrases: str,
        task: str | None = None,
        weight: float = 1.0,
        ce_weight: float = 1.0,
        temperature: float = 1.0,
        seed: int | None = None,
        name: str = "instruction_consistency",
    ) -> None:
        super().__init__(weight, name)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.paraphrases, self.task = paraphrases, task
        self.ce_weight, self.temperature = float(ce_weight), float(temperature)
        self.seed = seed
        self.init_draws(seed)
        self._instructions: list[str] | None = None

    def instructions(self) -> list[str]:
        if self._instructions is None:
            self._instructions = read_paraphrases(self.paraphrases, self.task)
        return self._instructions

    def templates(self, module: PromptModule) -> list[str]:
        return [instruction_template(i, module.text_template) for i in self.instructions()]

    def check_ready(self, module: PromptModule, datamodule: Any | None, callbacks: Sequence[Any] = ()) -> None:
        if not callable(getattr(module, "forward_texts", None)):
            raise ConfigurationError(
                f"InstructionConsistency runs texts under other instructions (forward_texts): it needs a text "
                f"method, and {type(module).__name__} is not one."
            )
        for template in self.templates(module):  # a missing file, a bad template or a too long text fails now
            if "{text}" not in template:
                raise ConfigurationError(f"paraphrase template {template!r} has no '{{text}}'.")
            module.check_text_lengths(datamodule, "fit", template)

    def draw(self) -> int:
        """The paraphrase of this step."""
        return self.rng.randrange(len(self.instructions()))

    def compute(self, module: PromptModule, batch: Any, output: PromptOutput) -> Tensor:
        template = self.templates(module)[self.draw()]
        paraphrased = module.forward_texts(batch[TEXT], template).logits
        term = consistency_kl(output.logits, paraphrased, self.temperature)
        if self.ce_weight:
            term = term + self.ce_weight * F.cross_entropy(paraphrased.float(), module.batch_targets(batch))
        return term
