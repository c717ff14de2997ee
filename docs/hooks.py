"""mkdocs hooks: the method and callback pages in the navigation, and the tables of methods, callbacks
and recipes, come from the registry (``lightning_prompts.registry``) and the recipe folder, never
from hand-kept lists.

In a page, ``<!-- registry: methods -->``, ``<!-- registry: callbacks -->``, ``<!-- registry: backbones -->``
and ``<!-- registry: recipes -->`` are replaced by the generated tables, and ``<!-- api: <kind> -->`` (in
``docs/api/``) by one mkdocstrings block per registered class of that kind. Every method and callback
page ends with a link to its class in the API reference.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lightning_prompts import registry
from lightning_prompts.recipes import find_recipes, model_class, read_yaml

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {"clip": "vision-language", "vit": "vision", "text": "text", "graph": "graph"}
_MARKER = re.compile(r"<!-- registry: (\w+) -->")
_API_MARKER = re.compile(r"<!-- api: (\w+) -->")
API_PAGES = {"method": "api/methods.md", "pretraining": "api/methods.md", "callback": "api/callbacks.md"}


def on_config(config: Any) -> Any:
    """Insert "Methods" and "Callbacks" sections after the testbed page, one entry per registered class."""
    methods = [{entry.title: entry.docs} for entry in registry.entries("method")]
    pretraining = [{entry.title: entry.docs} for entry in registry.entries("pretraining")]
    callbacks = [{entry.name: entry.docs} for entry in registry.entries("callback")]
    seen: set[str] = set()
    method_pages = []
    for item in [*methods, *pretraining]:  # GraphCL shares GPF's page
        page = next(iter(item.values()))
        if page not in seen:
            seen.add(page)
            method_pages.append(item)
    nav = [item for item in config["nav"] if not (isinstance(item, dict) and ({"Methods", "Callbacks"} & set(item)))]
    anchor = next(
        (i for i, item in enumerate(nav) if isinstance(item, dict) and "Offline testbed" in item), len(nav) - 1
    )
    nav[anchor + 1 : anchor + 1] = [{"Methods": method_pages}, {"Callbacks": callbacks}]
    config["nav"] = nav
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    depth = page.file.src_uri.count("/")
    prefix = "../" * depth
    markdown = _MARKER.sub(lambda match: TABLES[match.group(1)](prefix), markdown)
    markdown = _API_MARKER.sub(lambda match: api_blocks(match.group(1)), markdown)
    return markdown + api_links(page.file.src_uri, prefix)


_SPHINX_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc):<code>(~?)([\w.]+)</code>")


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    """Docstrings cross-reference in Sphinx roles (read by IDEs and ``help()``); the API pages show the
    name as code instead of the raw role (``~a.b.C`` reads ``C``, as Sphinx writes it)."""

    def shown(match: re.Match) -> str:
        short, name = match.groups()
        return f"<code>{name.rsplit('.', 1)[-1] if short else name}</code>"

    return _SPHINX_ROLE.sub(shown, html)


def api_blocks(kind: str) -> str:
    """One mkdocstrings block per registered class of ``kind``, in registry order."""
    return "\n\n".join(f"::: {entry.module}.{entry.name}" for entry in registry.entries(kind))


def api_links(page: str, prefix: str) -> str:
    """ "API reference: ..." under the page of a registered method or callback."""
    documented = [entry for kind, target in API_PAGES.items() for entry in registry.entries(kind) if entry.docs == page]
    if not documented:
        return ""
    links = ", ".join(
        f"[`{entry.name}`]({prefix}{API_PAGES[entry.kind]}#{entry.module}.{entry.name})" for entry in documented
    )
    return f"\n\n---\n\nAPI reference: {links}.\n"


def methods_table(prefix: str = "") -> str:
    rows = ["| method | family | paper | official code | recipes |", "|---|---|---|---|---|"]
    for entry in [*registry.entries("method"), *registry.entries("pretraining")]:
        code = f"[{entry.code}](https://github.com/{entry.code})" if entry.code else "none (decided and documented)"
        recipes = f"`recipes/{entry.recipes}/`" if (ROOT / "recipes" / entry.recipes).is_dir() else "—"
        kind = " (pre-training)" if entry.kind == "pretraining" else ""
        rows.append(
            f"| [`{entry.name}`]({prefix}{entry.docs}){kind} | {FAMILIES.get(entry.family, entry.family)} | "
            f"{entry.paper} | {code} | {recipes} |"
        )
    return "\n".join(rows)


def callbacks_table(prefix: str = "") -> str:
    rows = ["| callback | what it adds | needs (output fields) | from |", "|---|---|---|---|"]
    for entry in registry.entries("callback"):
        needs = ", ".join(f"`{name}`" for name in getattr(entry.load(), "required_fields", ())) or "—"
        source = entry.paper.split(" — ")[0] if entry.paper else "—"
        rows.append(f"| [`{entry.name}`]({prefix}{entry.docs}) | {entry.summary} | {needs} | {source} |")
    return "\n".join(rows)


def backbones_table(prefix: str = "") -> str:
    rows = ["| backbone | family | what it is |", "|---|---|---|"]
    for entry in registry.entries("backbone"):
        rows.append(f"| `{entry.name}` | {FAMILIES.get(entry.family, entry.family)} | {entry.summary} |")
    return "\n".join(rows)


def recipes_table(prefix: str = "") -> str:
    """One row per recipe folder: its methods, how many recipes, and what its defaults say."""
    folders: dict[Path, list[Path]] = {}
    for recipe in find_recipes(ROOT / "recipes"):
        folders.setdefault(recipe.parent, []).append(recipe)
    rows = ["| recipes | method | files | protocol |", "|---|---|---|---|"]
    for folder, files in sorted(folders.items()):
        relative = folder.relative_to(ROOT / "recipes")
        methods = sorted({model_class(file) or "?" for file in files})
        described = folder / "_defaults.yaml" if (folder / "_defaults.yaml").is_file() else files[0]
        rows.append(
            f"| `{relative}/` | {', '.join(f'`{m}`' for m in methods)} | {len(files)} | {_first_comment(described)} |"
        )
    return "\n".join(rows)


def _first_comment(path: Path) -> str:
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").strip())
    text = " ".join(lines)
    sentence = text.split(". ")[0].rstrip(".")
    return sentence.replace("|", "/") or (str(read_yaml(path))[:80])


TABLES = {
    "methods": methods_table,
    "callbacks": callbacks_table,
    "backbones": backbones_table,
    "recipes": recipes_table,
}
