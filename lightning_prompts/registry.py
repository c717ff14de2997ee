"""The registry: the one list of what lightning_prompts ships.

Methods, backbones, data modules, callbacks, evaluators and pre-training modules register
themselves with a decorator next to their definition, the way timm registers models and PEFT its
tuners::

    @register_method(family="clip", paper="Zhou et al., IJCV 2022", code="KaiyangZhou/CoOp")
    class CoOp(CLIPPromptModule):
        ...

Everything that lists what exists reads this registry: ``lightning-prompts list``,
:func:`list_methods`, the command line's short class names, the docs navigation and tables, the
contract test suite and the benchmark labels. Nothing else keeps a list by hand.

Two views of the same declarations:

* the **runtime registry**: filled when a module's decorators run (any package can register its
  own classes this way);
* the **static index**: the decorators of lightning_prompts' own modules read from their source
  (:mod:`ast`, no import), so that ``import lightning_prompts``, ``lightning-prompts --help`` and the
  lazy top-level names cost milliseconds instead of importing torch and Lightning. A test checks
  that both views agree.

Trust: :func:`resolve_class` turns a class name or path found in a file (a checkpoint's
hyperparameters) into a class only if it is registered, so no file can make the library import or
call anything else.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

#: The kinds of registered classes, in the order ``lightning-prompts list`` shows them.
KINDS = ("method", "backbone", "datamodule", "callback", "evaluator", "pretraining")

_PACKAGE = "lightning_prompts"
_ROOT = Path(__file__).resolve().parent
T = TypeVar("T", bound=type)


@dataclass(frozen=True)
class Entry:
    """What the registry knows about one class.

    Attributes:
        kind: one of :data:`KINDS`.
        name: the class name, which is also its short name in YAML (``class_path: CoOp``).
        module: the module that defines it.
        family: the model family (``"clip"``, ``"vit"``, ``"text"``, ``"graph"``) where it applies.
        title: how tables and charts name it (default: the class name), e.g. ``"Zero-shot CLIP"``.
        paper: the paper, as ``"Authors, Venue Year — Title"``.
        code: the official implementation (``owner/repo`` on GitHub), if any.
        summary: one line; the first line of the class docstring unless given.
        docs: the docs page (relative to ``docs/``); default ``methods/<module file>.md`` for methods,
            ``callbacks/<module file>.md`` for callbacks.
        recipes: the recipe folder (relative to ``recipes/``); default the module file name for methods.
        overlay: the tiny overlay under ``recipes/_tiny/`` its recipes run with (default: ``family``).
        example: constructor arguments that make a tiny instance on the family's tiny backbone (the contract
            suite uses them; most methods need none); ``contract_backbone`` names another tiny model for a
            method that needs one (POST: ``"tiny-gpt2"``, a causal LM).
    """

    kind: str
    name: str
    module: str
    family: str = ""
    title: str = ""
    paper: str = ""
    code: str = ""
    summary: str = ""
    docs: str = ""
    recipes: str = ""
    overlay: str = ""
    example: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def class_path(self) -> str:
        """The full import path of the class."""
        return f"{self.module}.{self.name}"

    def load(self) -> type:
        """Import the defining module and return the class."""
        return getattr(importlib.import_module(self.module), self.name)


_RUNTIME: dict[str, Entry] = {}
_META_KEYS = ("family", "title", "paper", "code", "summary", "docs", "recipes", "overlay", "example")


def register(kind: str, **meta: Any) -> Callable[[T], T]:
    """Class decorator: record the class in the registry under ``kind`` with ``meta`` (see :class:`Entry`).

    The arguments must be literals (strings, numbers, lists, dicts of them), because the static index
    reads them from the source without importing it.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown registry kind {kind!r}; expected one of {KINDS}.")
    unknown = sorted(set(meta) - set(_META_KEYS))
    if unknown:
        raise TypeError(f"register({kind!r}) got unknown arguments {unknown}; expected {_META_KEYS}.")

    def decorate(cls: T) -> T:
        entry = _complete(Entry(kind=kind, name=cls.__name__, module=cls.__module__, **meta), cls.__doc__)
        known = _RUNTIME.get(cls.__name__)
        if known is not None and known.class_path != entry.class_path:
            raise ValueError(
                f"{cls.__name__} is registered twice: {known.class_path} and {entry.class_path}. Short names "
                f"must be unique; rename one of the classes."
            )
        _RUNTIME[cls.__name__] = entry
        cls.registry_entry = entry  # type: ignore[attr-defined]
        return cls

    return decorate


register_method = functools.partial(register, "method")
register_backbone = functools.partial(register, "backbone")
register_datamodule = functools.partial(register, "datamodule")
register_callback = functools.partial(register, "callback")
register_evaluator = functools.partial(register, "evaluator")
register_pretraining = functools.partial(register, "pretraining")
_DECORATORS = {f"register_{kind}": kind for kind in KINDS}


def _complete(entry: Entry, doc: str | None) -> Entry:
    """Fill the defaults that follow from the entry itself."""
    stem = entry.module.rsplit(".", 1)[-1]
    summary = entry.summary or _first_line(doc)
    docs = entry.docs
    if not docs and entry.kind in ("method", "pretraining"):
        docs = f"methods/{stem}.md"
    elif not docs and entry.kind == "callback":
        docs = f"callbacks/{stem}.md"
    recipes = entry.recipes or (stem if entry.kind in ("method", "pretraining") else "")
    return replace(
        entry,
        title=entry.title or entry.name,
        summary=summary,
        docs=docs,
        recipes=recipes,
        overlay=entry.overlay or entry.family,
    )


def _first_line(doc: str | None) -> str:
    """The first paragraph of a docstring, on one line (indentation as :func:`ast.get_docstring` cleans it)."""
    import inspect

    return inspect.cleandoc(doc or "").split("\n\n", 1)[0].replace("\n", " ").strip()


# -- the static index ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _index() -> dict[str, Entry]:
    """Registered classes of lightning_prompts itself, read from the source of its modules."""
    found: dict[str, Entry] = {}
    for path in sorted(_ROOT.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if "@register_" not in text:  # most files: no parse needed
            continue
        module = ".".join((_PACKAGE, *path.relative_to(_ROOT).with_suffix("").parts))
        for entry in _entries_in_source(text, module, path):
            if entry.name in found:
                raise ValueError(f"{entry.name} is registered twice: {found[entry.name].module} and {module}.")
            found[entry.name] = entry
    return found


def _entries_in_source(text: str, module: str, path: Path) -> Iterable[Entry]:
    for node in ast.parse(text, filename=str(path)).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for decorator in node.decorator_list:
            if not (isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Name)):
                continue
            kind = _DECORATORS.get(decorator.func.id)
            if kind is None:
                continue
            try:
                meta = {keyword.arg: ast.literal_eval(keyword.value) for keyword in decorator.keywords}
            except ValueError as error:
                raise ValueError(
                    f"{path}:{node.lineno}: registry arguments of {node.name} must be literals."
                ) from error
            yield _complete(Entry(kind=kind, name=node.name, module=module, **meta), ast.get_docstring(node))


def _all() -> dict[str, Entry]:
    """The static index, plus classes other packages registered at runtime."""
    return {**_index(), **_RUNTIME}


# -- queries ------------------------------------------------------------------------------------------
def entries(kind: str | None = None, family: str | None = None) -> list[Entry]:
    """Registered entries, optionally of one kind and family, sorted by kind then name."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown registry kind {kind!r}; expected one of {KINDS}.")
    chosen = [
        entry
        for entry in _all().values()
        if (kind is None or entry.kind == kind) and (family is None or entry.family == family)
    ]
    return sorted(chosen, key=lambda entry: (KINDS.index(entry.kind), entry.name.lower()))


def list_methods(family: str | None = None) -> list[Entry]:
    """The prompt-tuning methods lightning_prompts knows, optionally of one family (``"clip"``…)."""
    return entries("method", family)


def get(name: str, kind: str | None = None) -> Entry:
    """The entry of a short name; :class:`KeyError` with the closest names if there is none."""
    entry = _all().get(name)
    if entry is not None and (kind is None or entry.kind == kind):
        return entry
    candidates = [e.name for e in entries(kind)]
    close = difflib.get_close_matches(name, candidates, n=3)
    what = f"registered {kind}" if kind else "registered class"
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise KeyError(f"{name!r} is not a {what}.{hint} Known: {', '.join(candidates)}.")


def find(name: str) -> Entry | None:
    """The entry of a short name, or ``None``."""
    return _all().get(name)


def resolve_class(class_path: str, kind: str | tuple[str, ...]) -> type:
    """The registered class that ``class_path`` names (a short name, or the full path of a registered
    class), for values read from files. Anything else is refused *before* any import, so a file
    cannot make the library import or call code it does not already ship or that the user has not
    registered."""
    from lightning_prompts.errors import ConfigurationError

    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    name = class_path.rpartition(".")[2]
    entry = _all().get(name)
    paths = {entry.class_path, f"{_PACKAGE}.{entry.name}", entry.name} if entry is not None else set()
    if entry is None or entry.kind not in kinds or class_path not in paths:
        allowed = ", ".join(e.name for k in kinds for e in entries(k))
        raise ConfigurationError(
            f"{class_path!r} is not a registered {' or '.join(kinds)}; only registered classes are built from "
            f"files ({allowed})."
        )
    return entry.load()


def import_all(kinds: Iterable[str] = KINDS) -> None:
    """Import every module that registers a class (the command line does this before parsing, so that
    short class names and subclass lookups see every class)."""
    for module in sorted({entry.module for kind in kinds for entry in entries(kind)}):
        importlib.import_module(module)


def lazy_exports(
    package: str, extra: dict[str, str] | None = None
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for a package whose public names import on first use: the
    registered classes defined under ``package`` plus ``extra`` (``{name: module}``)."""
    extra = dict(extra or {})

    def names() -> dict[str, str]:
        registered = {e.name: e.module for e in _all().values() if e.module.startswith(package + ".")}
        return {**registered, **extra}

    def getattr_(name: str) -> Any:
        module = names().get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    def dir_() -> list[str]:
        return sorted(names())

    return getattr_, dir_
