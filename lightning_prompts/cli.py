"""The ``lightning-prompts`` command: LightningCLI in subclass mode.

    lightning-prompts fit --config recipes/coop/caltech101.yaml
    lightning-prompts fit --config recipes/coop/caltech101.yaml --config recipes/_tiny/clip.yaml
    lightning-prompts test --config … --ckpt_path …

Every method, data module, backbone and callback of the package is importable by its short class
name (``class_path: CoOp``), because importing :mod:`lightning_prompts` imports them all. The
training classes flow from the data module to the model (``data.classnames`` ->
``model.classnames``), so a recipe never lists them twice.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import lightning_prompts  # noqa: F401  (registers every class for short names)
from lightning_prompts.errors import LightningPromptsError
from lightning_prompts.methods import PromptModule


class PromptsCLI(LightningCLI):
    """LightningCLI with the links every recipe relies on."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.classnames", "model.init_args.classnames", apply_on="instantiate")

    # Check the experiment before the Trainer starts: inside fit, Lightning's SaveConfigCallback
    # writes config.yaml before the module's setup runs, and a run that cannot work should leave
    # nothing behind.
    def before_fit(self) -> None:
        self._check_ready("fit")

    def before_validate(self) -> None:
        self._check_ready("validate")

    def before_test(self) -> None:
        self._check_ready("test")

    def before_predict(self) -> None:
        self._check_ready("predict")

    def _check_ready(self, stage: str) -> None:
        if isinstance(self.model, PromptModule):
            self.model.check_ready(stage, self.trainer.callbacks, self.datamodule)


def run_cli(args: Sequence[str] | None = None, run: bool = True) -> PromptsCLI:
    """Run the CLI on ``args`` (``sys.argv`` when ``None``); errors propagate (tests use this)."""
    return PromptsCLI(
        model_class=LightningModule,
        datamodule_class=LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        args=list(args) if args is not None else None,
        run=run,
    )


def main() -> None:
    """The ``lightning-prompts`` console script: bad input ends with one clear line, not a traceback."""
    try:
        run_cli()
    except LightningPromptsError as error:
        print(f"lightning-prompts: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
