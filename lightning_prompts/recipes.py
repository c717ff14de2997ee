"""Recipe files: ``extends``, and what a recipe runs.

A recipe is a LightningCLI config file. To hold each method's defaults once, a recipe may name the
files it builds on::

    # recipes/coprompt/eurosat.yaml: only what CoPrompt tunes for EuroSAT
    extends: [_defaults.yaml, ../_base/data/eurosat.yaml]
    model:
      init_args: {depth: 12, consistency_weight: 0.1}

The command line expands ``--config recipe.yaml`` into ``--config _defaults.yaml --config
../_base/data/eurosat.yaml --config recipe.yaml`` (recursively, paths relative to the file that names
them), so later files override earlier ones exactly as repeated ``--config`` options do. Nothing else
about the format changes: every file is plain LightningCLI YAML.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lightning_prompts.errors import ConfigurationError

EXTENDS = "extends"
_CONFIG_FLAGS = ("--config", "-c")


class RecipeError(ConfigurationError):
    """A recipe cannot be read (missing file, a cycle of ``extends``, not a mapping)."""


def read_yaml(path: Path) -> Any:
    """``path``'s content, read safely; a key given twice in one mapping is an error, not a silent override."""
    import yaml

    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_unique_key_loader())
    except _DuplicateKey as duplicate:
        raise RecipeError(
            f"recipe {path}: '{duplicate.key}' is given twice in one mapping (lines {duplicate.first} and "
            f"{duplicate.second}); YAML keeps only the last, dropping every option of the first. Merge them into one."
        ) from None
    except yaml.YAMLError as error:
        raise RecipeError(f"recipe {path} is not valid YAML: {error}") from error


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, second: int) -> None:
        self.key, self.first, self.second = key, first, second


@functools.cache
def _unique_key_loader() -> type:
    """``yaml.SafeLoader`` that refuses repeated keys. Plain YAML loaders keep the last of two ``trainer:`` blocks,
    which once silently dropped a recipe's epochs and precision."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            lines: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` merges are YAML's own way to repeat keys
                    continue
                key = self.construct_object(key_node, deep=deep)
                line = key_node.start_mark.line + 1
                try:
                    if key in lines:
                        raise _DuplicateKey(key, lines[key], line)
                    lines[key] = line
                except TypeError:  # an unhashable key: the base class reports it
                    break
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def expand_file(path: str | Path, _seen: tuple[Path, ...] = ()) -> list[Path]:
    """``path`` preceded by every file it ``extends`` (depth first, in order)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise RecipeError(f"recipe {file} does not exist.")
    resolved = file.resolve()
    if resolved in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, resolved))
        raise RecipeError(f"recipes extend each other in a cycle: {chain}.")
    content = read_yaml(file)
    if content is None:  # jsonargparse would say only "Unexpected config", naming no file
        raise RecipeError(f"recipe {file} is empty: it sets no option (trainer:, model:, data:, …).")
    if not isinstance(content, dict):
        raise RecipeError(
            f"recipe {file} holds a {type(content).__name__}, not a mapping of options (trainer:, model:, …)."
        )
    bases = content.get(EXTENDS) if isinstance(content, dict) else None
    if bases is None:
        return [file]
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(base, str) for base in bases):
        raise RecipeError(f"recipe {file}: '{EXTENDS}' must be a file name or a list of file names, got {bases!r}.")
    expanded: list[Path] = []
    for base in bases:
        target = file.parent / base
        if not target.is_file():
            raise RecipeError(f"recipe {file} extends {base}, which does not exist ({target}).")
        expanded.extend(expand_file(target, (*_seen, resolved)))
    return [*expanded, file]


def expand_config_args(args: Sequence[str]) -> list[str]:
    """Command-line arguments with every ``--config FILE`` replaced by the files it extends, then itself."""
    out: list[str] = []
    items = list(args)
    index = 0
    while index < len(items):
        item = items[index]
        value = None
        if item in _CONFIG_FLAGS and index + 1 < len(items):
            flag, value = item, items[index + 1]
            index += 2
        elif any(item.startswith(flag + "=") for flag in _CONFIG_FLAGS):
            flag, _, value = item.partition("=")
            index += 1
        else:
            out.append(item)
            index += 1
            continue
        path = Path(value).expanduser()
        if path.suffix in (".yaml", ".yml", ".json") and path.is_file():
            for file in expand_file(path):
                out.extend([flag, str(file)])
        else:  # a YAML string or a missing file: the parser reports it
            out.extend([flag, value])
    return out


def merged_section(path: str | Path, section: str, *overlays: str | Path) -> Any:
    """The ``section`` (``"model"``, ``"data"``…) of a recipe after ``extends`` and nested config files, and
    after ``overlays`` (files given after it, as repeated ``--config``): a plain dict merge in file order
    (enough to tell which classes a recipe builds, not a full parse)."""
    value: Any = None
    for file in [file for recipe in (path, *overlays) for file in expand_file(recipe)]:
        content = read_yaml(file)
        if isinstance(content, dict) and section in content:
            value = _merge(value, _load_nested(content[section], file.parent))
    return value


def model_class(path: str | Path) -> str | None:
    """The short class name of the model a recipe builds (``"CoOp"``), or ``None``."""
    model = merged_section(path, "model")
    class_path = model.get("class_path") if isinstance(model, dict) else None
    return str(class_path).rpartition(".")[2] if class_path else None


def find_recipes(root: str | Path) -> list[Path]:
    """Runnable recipe files under ``root``: every YAML except shared pieces (``_base/``, ``_tiny/``) and
    files whose name starts with ``_`` (a method's ``_defaults.yaml``)."""
    root = Path(root)
    return sorted(
        path for path in root.rglob("*.yaml") if not any(part.startswith("_") for part in path.relative_to(root).parts)
    )


def _load_nested(value: Any, folder: Path) -> Any:
    if isinstance(value, str) and value.endswith((".yaml", ".yml")) and (folder / value).is_file():
        return _load_nested(read_yaml(folder / value), (folder / value).parent)
    if isinstance(value, dict):
        return {key: _load_nested(item, folder) for key, item in value.items()}
    return value


def _merge(base: Any, update: Any) -> Any:
    if isinstance(base, dict) and isinstance(update, dict):
        if "class_path" in update and base.get("class_path") not in (None, update["class_path"]):
            return update
        merged = dict(base)
        for key, item in update.items():
            merged[key] = _merge(base.get(key), item)
        return merged
    return update


def recipe_table(root: str | Path, files: Iterable[Path] | None = None) -> list[tuple[str, str]]:
    """``(recipe path relative to root, model class)`` for the recipes under ``root``."""
    root = Path(root)
    return [(str(path.relative_to(root)), model_class(path) or "?") for path in (files or find_recipes(root))]
