"""The registry: one list, read statically (fast) and at runtime (the decorators), which agree."""

from __future__ import annotations

import pytest

from lightning_prompts import registry
from lightning_prompts.errors import ConfigurationError


def test_the_static_index_equals_what_the_decorators_register():
    registry.import_all()
    static = {entry.name: entry for entry in registry._index().values()}
    runtime = {
        name: entry for name, entry in registry._RUNTIME.items() if entry.module.startswith("lightning_prompts.")
    }
    assert static.keys() == runtime.keys()
    for name, entry in static.items():
        assert entry == runtime[name], name
        assert entry.load().registry_entry == entry


def test_every_kind_is_populated_and_names_are_unique():
    names = [entry.name for entry in registry.entries()]
    assert len(names) == len(set(names))
    assert {entry.kind for entry in registry.entries()} == set(registry.KINDS)
    assert {"CoOp", "VPT", "PromptTuning", "GPF", "LAE"} <= {entry.name for entry in registry.list_methods()}
    assert all(entry.family for entry in registry.list_methods())


def test_top_level_names_resolve_lazily_to_the_registered_classes():
    import lightning_prompts

    entry = registry.get("CoOp")
    assert lightning_prompts.CoOp is entry.load()
    assert "CoOp" in dir(lightning_prompts) and "CoOp" in lightning_prompts.__all__
    from lightning_prompts.methods import CoOp, PromptModule

    assert issubclass(CoOp, PromptModule)
    with pytest.raises(AttributeError):
        lightning_prompts.NoSuchMethod  # noqa: B018


def test_unknown_names_get_a_suggestion():
    with pytest.raises(KeyError, match="Did you mean CoOp"):
        registry.get("Coop", "method")


def test_classes_named_in_files_must_be_registered():
    assert registry.resolve_class("OpenCLIP", "backbone").__name__ == "OpenCLIP"
    assert registry.resolve_class("lightning_prompts.backbones.open_clip.OpenCLIP", "backbone").__name__ == "OpenCLIP"
    for hostile in ("os.system", "builtins.exec", "subprocess.Popen", "CoOp", "evil_module.OpenCLIP"):
        with pytest.raises(ConfigurationError, match="not a registered backbone"):
            registry.resolve_class(hostile, "backbone")


def test_a_third_party_class_registers_at_runtime():
    @registry.register_callback(summary="a test callback")
    class ThirdPartyCallback:
        pass

    try:
        assert registry.get("ThirdPartyCallback").module == __name__
        assert "ThirdPartyCallback" in [entry.name for entry in registry.entries("callback")]
    finally:
        registry._RUNTIME.pop("ThirdPartyCallback")
