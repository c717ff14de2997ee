"""The ``lightning-prompts`` command.

    lightning-prompts fit --config recipes/coop/caltech101.yaml
    lightning-prompts fit --config recipes/coop/caltech101.yaml --config recipes/_tiny/clip.yaml
    lightning-prompts test --config … --ckpt_path …
    lightning-prompts list methods
    lightning-prompts export --ckpt_path run.ckpt --output prompt.safetensors

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI's (:mod:`lightning_prompts.lightning_cli`);
``--help``, ``--version``, ``list`` and ``export`` are answered here without importing Lightning or
torch, so they return at once. Bad input ends with one line, ``lightning-prompts: error: <what>
(<where>)``, and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from lightning_prompts import __version__, registry
from lightning_prompts.errors import ConfigurationError, LightningPromptsError

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
SUBCOMMANDS = (*LIGHTNING_SUBCOMMANDS, "list", "export", "average")
LIST_KINDS = {
    "methods": "method",
    "callbacks": "callback",
    "backbones": "backbone",
    "datamodules": "datamodule",
    "evaluators": "evaluator",
    "pretraining": "pretraining",
}


def help_text() -> str:
    methods = ", ".join(entry.name for entry in registry.list_methods())
    return f"""usage: lightning-prompts [-h] [--version] {{fit,validate,test,predict,list,export,average}} ...

Prompt tuning for frozen pre-trained models (CLIP, ViT, language models, GNNs) as PyTorch Lightning
modules, callbacks and YAML recipes. Version {__version__}.

subcommands:
  fit        train a method from a recipe (LightningCLI; `lightning-prompts fit --help` lists every option)
  validate   evaluate on the validation split
  test       evaluate on the test sets (base/novel/HM, continual accuracies, …)
  predict    write each image's logits and predicted class (predictions.safetensors in the run folder)
  list       list methods, callbacks, backbones, data modules, evaluators or recipes
  export     write a trained prompt from a checkpoint to safetensors (and a PEFT adapter)
  average    average prompt files element-wise (MVLPT's source prompt over seeds)

examples:
  lightning-prompts fit --config recipes/coop/caltech101.yaml
  lightning-prompts fit --config recipes/coop/caltech101.yaml --config recipes/_tiny/clip.yaml   # offline, seconds
  lightning-prompts test --config recipes/maple/dtd.yaml --ckpt_path <run>/checkpoints/best.ckpt
  lightning-prompts list methods
  lightning-prompts export --ckpt_path <run>/checkpoints/best.ckpt --output prompt.safetensors

methods: {methods}

options:
  -h, --help     show this message and exit
  -V, --version  show the version and exit
"""


class _Parser(argparse.ArgumentParser):
    """The small subcommands' parser: a usage error is the command's one error line (exit 2), like every other bad
    input, not argparse's usage block followed by the error."""

    def error(self, message: str) -> NoReturn:
        raise ConfigurationError(f"{self.prog}: {message} (--help shows the usage)")


def list_command(args: Sequence[str]) -> int:
    """``lightning-prompts list [kind] [--family F] [--root recipes]``: one line per entry."""

    parser = _Parser(prog="lightning-prompts list", description="List what lightning_prompts ships.")
    parser.add_argument("kind", nargs="?", default="methods", choices=[*LIST_KINDS, "recipes"])
    parser.add_argument("--family", default=None, help="only this family (clip, vit, text, graph)")
    parser.add_argument("--root", default="recipes", help="recipe folder (list recipes)")
    options = parser.parse_args(list(args))
    if options.kind == "recipes":
        if options.family is not None:
            parser.error("--family filters registered classes, not recipes (recipe folders are named by method)")
        return _list_recipes(options.root)
    family = options.family.lower() if options.family else None
    families = sorted({entry.family for entry in registry.entries() if entry.family})
    if family is not None and family not in families:  # it printed nothing, as if the family were empty
        parser.error(f"unknown family {options.family!r}; the families are {', '.join(families)}")
    entries = registry.entries(LIST_KINDS[options.kind], family)
    rows = [_describe(entry) for entry in entries]
    width = max((len(row[0]) for row in rows), default=0)
    for name, detail in rows:
        print(f"{name:<{width}}  {detail}")
    return 0


def _describe(entry: registry.Entry) -> tuple[str, str]:
    parts = [entry.family or "-"]
    if entry.paper:
        parts.append(entry.paper)
    elif entry.summary:
        parts.append(entry.summary)
    if entry.kind in ("method", "pretraining"):
        fields = getattr(entry.load(), "output_fields", None)
        if fields:
            parts.append("fields: " + ", ".join(sorted(fields)))
    if entry.kind == "callback":
        cls = entry.load()
        needs = tuple(getattr(cls, "required_fields", ()))
        parts.append("needs: " + (", ".join(needs) if needs else "-"))
    return entry.name, " | ".join(parts)


def _list_recipes(root: str) -> int:
    from pathlib import Path

    from lightning_prompts.recipes import recipe_table

    folder = Path(root)
    if not folder.is_dir():
        raise LightningPromptsError(f"no recipe folder at {folder.resolve()} (give --root)")
    rows = recipe_table(folder)
    width = max((len(path) for path, _ in rows), default=0)
    for path, method in rows:
        print(f"{path:<{width}}  {method}")
    return 0


def export_command(args: Sequence[str]) -> int:
    """``lightning-prompts export --ckpt_path X --output Y [--peft DIR] [--prefix NAME]``."""

    parser = _Parser(
        prog="lightning-prompts export",
        description="Write the trained prompt of a checkpoint to a safetensors file (and, for prompt tuning, a "
        "PEFT adapter folder). The backbone is rebuilt from the checkpoint's stored, registered config.",
    )
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by lightning-prompts fit")
    parser.add_argument("--output", required=True, help="the safetensors file to write")
    parser.add_argument("--peft", default=None, help="also write a PEFT adapter to this folder (text methods)")
    parser.add_argument(
        "--prefix",
        default="",
        help="write only the trainable tensors whose names start with this (prefix. : PrefixTuning's prefixes "
        "without its head, the source prompt PANDA transfers)",
    )
    options = parser.parse_args(list(args))
    from lightning_prompts.export.checkpoint import export_checkpoint

    written = export_checkpoint(options.ckpt_path, options.output, options.peft, options.prefix)
    for path in written:
        print(path)
    return 0


#: Lightning's fit loop, when ``val_check_interval`` counts more batches than an epoch has
_VAL_CHECK_INTERVAL = re.compile(
    r"`val_check_interval` \((\d+)\) must be less than or equal to the number of the training batches \((\d+)\)"
)

#: Lightning's trainer, when ``val_check_interval`` is a fraction and ``check_val_every_n_epoch`` is None
_FRACTION_ACROSS_EPOCHS = "`val_check_interval` should be an integer or a time-based duration"


def describe_error(error: BaseException) -> str | None:
    """One line for an error caused by bad input: our own errors (also when raised while a class was being
    built from the config, which the parser wraps), and the parser's, with a did-you-mean for unknown
    options. ``None`` for anything else (a bug: the traceback is worth seeing)."""
    chain, seen = [], set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or current.__context__
    for item in chain:
        if isinstance(item, LightningPromptsError):
            return str(item)
    for item in chain:
        interval = _VAL_CHECK_INTERVAL.search(str(item)) if isinstance(item, ValueError) else None
        if interval:  # raised when the fit loop counts the epoch's batches (a traceback otherwise)
            given, batches = interval.groups()
            return (
                f"--trainer.val_check_interval {given} is more than the {batches} training batches of an epoch; give "
                f"at most {batches}, a fraction of the epoch (0.5), or --trainer.check_val_every_n_epoch null to "
                f"count batches across epochs."
            )
        if type(item).__name__ == "MisconfigurationException" and _FRACTION_ACROSS_EPOCHS in str(item):
            # a fraction of an epoch where the recipe counts steps across epochs (DePT's, EPT's, POST's)
            return (
                "--trainer.val_check_interval takes a number of training batches (an integer) where "
                "check_val_every_n_epoch is null, as the recipe sets it to validate every N steps across epochs; "
                "for a fraction of an epoch also give --trainer.check_val_every_n_epoch 1."
            )
    for item in chain:
        # Lightning's verdict on Trainer options (an accelerator this machine lacks, devices 0), and the checks of
        # our constructors' arguments (n_ctx 0, a ctx_init longer than n_ctx): a setting to change, not a bug
        if type(item).__name__ == "MisconfigurationException" or _raised_checking_our_arguments(item):
            return " ".join(str(item).split())
    if not any(isinstance(item, argparse.ArgumentError) for item in chain):
        return None
    text = "\n".join(str(item) for item in chain)
    option = re.search(r"Option '([\w.]+)' is not accepted", text)
    bad_value = re.search(
        r"class_path '([\w.]+)':\s*Parser key \"([\w.]+)\":\s*Expected (?:a )?(.+?)\. Got value: (.+)", text
    )
    if option and bad_value and bad_value.group(2) == option.group(1):
        # a known option with a value its class refuses: jsonargparse also tried the value on the base class (a
        # Callback), which has no such option, and that message came first
        owner, key, expected, given = bad_value.groups()
        expected = re.sub(r"typing\.Literal\[([^\]]*)\]", r"one of: \1", expected)
        return f"{given.strip()} is not accepted for {owner.rpartition('.')[2]}'s {key}; it takes {expected}"
    if option:
        # the innermost class named is the one the option was given to (HFText inside PromptTuning's backbone);
        # a class-valued option that is a callable (a method's optimizer) shows the value it got instead
        direct = re.search(
            rf"class_path='([\w.]+)', init_args=Namespace\((?:[^()]*\W)?{re.escape(option.group(1))}=", text
        )
        owners = re.findall(r"class_path '([\w.]+)'", text)
        owner = direct.group(1) if direct else owners[-1] if owners else ""
        known = _init_arguments(owner) if owner else []
        return _unknown(option.group(1), known, owner.rpartition(".")[2])
    # a value for an argument nested in a class's init_args: the outermost parser key and the longest nested key
    # make the option's full name, which jsonargparse's innermost message lacks ("Expected a <class 'int'>")
    nested = re.findall(r"NestedArg\(key='([\w.]+)', val='([^']*)'\)", text)
    top = re.search(r'Parser key "([\w.]+)"', text)
    expected = re.search(r"Expected a <class '(int|float|bool|str)'>", text)
    wrong_value = None
    if nested and top and expected:
        key, value = max(nested, key=lambda pair: len(pair[0]))
        kind = expected.group(1)
        wrong_value = (f"{top.group(1)}.init_args.{key}", value, f"{'an' if kind == 'int' else 'a'} {kind}")
    class_name = re.search(r"Expected a dot import path string: ([\w.]+)", text)
    if class_name:
        if wrong_value and wrong_value[1] == class_name.group(1):  # `lr fast`: a float, also tried as a class
            return f"--{wrong_value[0]} {wrong_value[1]} is not accepted; it takes {wrong_value[2]}"
        return _unknown_class(class_name.group(1))
    key = re.search(r"Key \"([\w.]+)\" is not expected", text) or re.search(
        r"unrecognized arguments: --?([\w.]+)", text, re.IGNORECASE
    )
    if key:
        name = key.group(1)
        known = _init_arguments("lightning.pytorch.Trainer") if name.startswith("trainer.") else []
        return _unknown(name, known, "the Trainer" if known else "")
    union = re.search(r'Parser key "([\w.]+)":\s*Does not validate against any of the Union subtypes', text)
    subtypes, given = re.search(r"Subtypes: \[(.*)\]", text), re.search(r"Given value: (.*)", text)
    if union and subtypes and given:  # the innermost error names only the last type tried (int for `precision fp16`)
        accepted = re.sub(r"typing\.Literal\[([^\]]*)\]", r"\1", subtypes.group(1))
        accepted = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", accepted).replace("NoneType", "null")
        plain = {"int", "float", "bool", "str", "null"}  # a class-valued option has its own, better, inner message
        if all(item.strip() in plain or item.strip()[:1] in "'-0123456789" for item in accepted.split(",")):
            return f"--{union.group(1)} {given.group(1).strip()} is not accepted; it takes one of: {accepted}"
    if wrong_value:
        return f"--{wrong_value[0]} {wrong_value[1]} is not accepted; it takes {wrong_value[2]}"
    innermost = str(chain[-1]).strip().splitlines()
    return " ".join(line.strip() for line in innermost if line.strip())


def _init_arguments(class_path: str) -> list[str]:
    """The constructor arguments of a registered class and of the bases it forwards ``**kwargs`` to."""
    import inspect

    if class_path == "lightning.pytorch.Trainer":
        from lightning.pytorch import Trainer

        classes: tuple[type, ...] = (Trainer,)
    else:
        entry = registry.find(class_path.rpartition(".")[2])
        module, _, name = class_path.rpartition(".")
        if entry is not None:
            classes = entry.load().__mro__
        elif module.split(".")[0] in ("torch", "lightning", "lightning_prompts"):  # an optimizer, scheduler, callback
            import importlib

            found = getattr(importlib.import_module(module), name, None)
            classes = found.__mro__ if isinstance(found, type) else ()
        else:
            return []
    names: list[str] = []
    for cls in classes:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        for name, parameter in inspect.signature(init).parameters.items():
            if name != "self" and parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
                names.append(name)
        if cls.__module__.startswith("lightning."):
            break
    return list(dict.fromkeys(names))


def _raised_checking_our_arguments(error: BaseException) -> bool:
    """A ``ValueError`` raised inside one of our constructors (a check of its arguments), not elsewhere."""
    if not isinstance(error, ValueError):
        return False
    package = Path(__file__).resolve().parent
    frames = list(traceback.walk_tb(error.__traceback__))
    ours = [frame for frame, _ in frames if Path(frame.f_code.co_filename).resolve().is_relative_to(package)]
    return bool(ours) and ours[-1] is frames[-1][0] and any(frame.f_code.co_name == "__init__" for frame in ours)


def _unknown_class(name: str) -> str:
    """A class name the option cannot take: a registered class of another kind or family, or a typo."""
    import difflib

    entry = registry.find(name)
    if entry is not None:
        family = f" ({entry.family})" if entry.family else ""
        listed = next((plural for plural, kind in LIST_KINDS.items() if kind == entry.kind), "methods")
        return (
            f"{name} is a registered {entry.kind}{family} that this option does not take: a recipe's tiny overlay "
            f"or backbone must be of its method's family (lightning-prompts list {listed} shows each family)."
        )
    import torch.optim
    from lightning.pytorch import callbacks

    known = [entry.name for entry in registry.entries()]  # with the classes recipes name from Lightning and torch
    known += [*callbacks.__all__, *torch.optim.__all__, *torch.optim.lr_scheduler.__all__]
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6) or [
        known_name for known_name in known if known_name.lower() == name.lower()
    ]
    hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
    return f"unknown class {name!r}{hint}; lightning-prompts list shows the registered ones."


def _unknown(name: str, known: Sequence[str], owner: str) -> str:
    import difflib

    if name in ("optimizer", "lr_scheduler"):  # LightningCLI's own top-level options, which our methods take instead
        return f"unknown option {name!r}: the optimizer belongs to the method here (--model.init_args.{name} …)"

    close = difflib.get_close_matches(name.rpartition(".")[2], known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    where = f" of {owner}" if owner else ""
    return f"unknown option {name!r}{where}{hint}"


def average_command(args: Sequence[str]) -> int:
    """``lightning-prompts average --output Y A B [C …]``."""

    parser = _Parser(
        prog="lightning-prompts average",
        description="Average prompt files element-wise (same method, backbone and tensors), e.g. the prompts of "
        "three seeds into MVLPT's source prompt; start another run from it with --model.init_args.prompt_init.",
    )
    parser.add_argument("inputs", nargs="+", help="prompt files written by lightning-prompts export")
    parser.add_argument("--output", required=True, help="the safetensors file to write")
    options = parser.parse_args(list(args))
    from lightning_prompts.export.average import average_prompt_files

    print(average_prompt_files(options.inputs, options.output))
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """The console script: bad input ends with one clear line and exit status 2, not a traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    # torch_geometric's import scripts functions with torch.jit.script, deprecated by torch 2.14: a notice about
    # a dependency's internals that a user of this console cannot act on (it printed on `list methods`)
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    try:
        if not args or args[0] in ("-h", "--help"):
            print(help_text())
            return
        if args[0] in ("-V", "--version"):
            print(f"lightning-prompts {__version__}")
            return
        if args[0] == "list":
            raise SystemExit(list_command(args[1:]))
        if args[0] == "export":
            raise SystemExit(export_command(args[1:]))
        if args[0] == "average":
            raise SystemExit(average_command(args[1:]))
        given_late = next((arg for arg in args[1:] if arg in SUBCOMMANDS), None)
        if args[0].startswith("-") and given_late is not None:  # options before the subcommand go to no parser
            raise SystemExit(_error(f"put the subcommand first: lightning-prompts {given_late} {args[0]} …"))
        if not args[0].startswith("-") and args[0] not in SUBCOMMANDS:  # before Lightning's import (seconds)
            import difflib

            close = difflib.get_close_matches(args[0], SUBCOMMANDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SystemExit(_error(f"unknown subcommand {args[0]!r}{hint}; one of {', '.join(SUBCOMMANDS)}"))
        from lightning_prompts.lightning_cli import run_cli

        run_cli(None if argv is None else args, exit_on_error=False)
    except BrokenPipeError:
        # the reader went away (`lightning-prompts list methods | head`): stop quietly as Unix tools do, with
        # stdout pointed at /dev/null so the interpreter's final flush cannot raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
    except Exception as error:  # noqa: BLE001 - bad input becomes one line; anything else keeps its traceback
        message = describe_error(error)
        if message is None:
            raise
        raise SystemExit(_error(message)) from None


def _error(message: str) -> int:
    """Print the one error line; the exit status of bad input."""
    print(f"lightning-prompts: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def __getattr__(name: str) -> Any:
    # run_cli and PromptsCLI live with Lightning; importing them here would slow `--help` down
    if name in ("run_cli", "PromptsCLI"):
        from lightning_prompts import lightning_cli

        return getattr(lightning_cli, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    main()
