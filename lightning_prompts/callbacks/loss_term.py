"""The loss-term protocol: how a callback adds a term to a method's loss.

Lightning gives callbacks no way to change the loss (the return value of
``on_before_backward`` is ignored). So a regulariser that must change the objective is a
:class:`LossTerm`: a ``Callback`` that also computes a weighted term from the module, the batch
and the method's :class:`~lightning_prompts.outputs.PromptOutput`. The method's
``training_step`` (in :class:`~lightning_prompts.methods.PromptModule`) asks every ``LossTerm`` in
``trainer.callbacks`` for its term and adds it *before the single backward*, so mixed-precision
scaling, gradient accumulation and DDP gradient synchronisation stay exactly Lightning's.

A term declares the output fields it reads in ``required_fields``; attaching it to a method that
cannot produce one of them fails before training with a message naming the method, the callback
and the field (:class:`~lightning_prompts.errors.MissingOutputFieldError`). Fields it uses when the
method has them, and replaces otherwise, go in ``optional_fields``. Besides the output, a term reads
only the small module protocol documented in :mod:`lightning_prompts.methods.base.module`
(``classnames``, ``batch_targets``, ``encode_texts``, ``logit_scale``, …), never a method's internals
or another callback's class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from lightning.pytorch.callbacks import Callback
from torch import Tensor

if TYPE_CHECKING:
    from lightning_prompts.methods.base import PromptModule
    from lightning_prompts.outputs import PromptOutput


class LossTerm(Callback):
    """Base class of callbacks that add a term to the training loss.

    Subclasses set ``required_fields`` and implement :meth:`compute`, returning the *unweighted*
    term; the weight is applied here so that every term is logged the same way.

    Args:
        weight: the term's weight in the total loss.
        name: the name it is logged under (``train/<name>``); defaults to the class name.
    """

    required_fields: ClassVar[tuple[str, ...]] = ()
    #: Families of the methods the term works with (``None``: any method whose outputs fit); for others its
    #: ``check_ready`` raises :class:`~lightning_prompts.errors.ConfigurationError` before training.
    method_families: ClassVar[tuple[str, ...] | None] = None
    #: Fields the term reads when the method can fill them (it has its own fallback otherwise).
    optional_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, weight: float = 1.0, name: str | None = None) -> None:
        super().__init__()
        self.weight = float(weight)
        self.name = name or type(self).__name__

    def compute(self, module: PromptModule, batch: Any, output: PromptOutput) -> Tensor:
        """The unweighted term for this training batch."""
        raise NotImplementedError

    def check_ready(self, module: PromptModule, datamodule: Any | None, callbacks: Sequence[Any] = ()) -> None:
        """Raise now if this term cannot work with ``module``, its data module and the other
        ``callbacks`` (called before training starts, after the output fields were checked); e.g. a
        missing file the term reads."""

    def __call__(self, module: PromptModule, batch: Any, output: PromptOutput) -> Tensor:
        return self.weight * self.compute(module, batch, output)

    @property
    def state_key(self) -> str:
        # several terms of one class may be attached; keep their states apart
        return self._generate_state_key(name=self.name)
