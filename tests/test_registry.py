"""Name lookup, suggestions, duplicates and entry-point plugins (sparsebench/registry.py)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from sparsebench import registry as registry_module
from sparsebench.errors import PluginError, UnknownNameError
from sparsebench.methods.sparse_vd import SparseVD
from sparsebench.registry import METHODS, TASKS, Registry, normalize_name


@pytest.mark.parametrize("name", ["sparse_vd", "sparsevd", "sparse-vd", "Sparse_VD", "SPARSE-vd"])
def test_lookup_ignores_case_dashes_and_underscores(name: str) -> None:
    assert METHODS.get(name) is SparseVD
    assert name in METHODS


def test_task_lookup_is_as_forgiving() -> None:
    assert TASKS.get("LeNet-300-100") is TASKS.get("lenet300_100")
    assert normalize_name("LeNet-300_100") == "lenet300100"


def test_registered_names_keep_their_spelling_and_are_sorted() -> None:
    names = METHODS.names()
    assert "sparse_vd" in names and "dense" in names
    assert names == sorted(names)
    assert METHODS.get("sparse_vd").name == "sparse_vd"


def test_unknown_name_suggests_the_closest_and_how_to_list() -> None:
    with pytest.raises(UnknownNameError) as info:
        METHODS.get("sparse_vdd")
    message = str(info.value)
    assert "unknown method 'sparse_vdd'" in message
    assert "did you mean sparse_vd" in message
    assert "sparsebench list methods" in message


def test_unknown_name_without_a_close_match_still_says_how_to_list() -> None:
    with pytest.raises(UnknownNameError) as info:
        TASKS.get("imagenet_resnet_9000")
    assert "did you mean" not in str(info.value)
    assert "sparsebench list tasks" in str(info.value)


def test_duplicate_registration_is_a_plugin_error() -> None:
    with pytest.raises(PluginError) as info:

        @METHODS.register("Sparse-VD")
        class Impostor:
            pass

    message = str(info.value)
    assert "registered twice" in message and "sparse_vd" in message and "rename" in message
    assert METHODS.get("sparse_vd") is SparseVD  # the original stays registered


class FakeDistribution:
    name, version = "sparsebench-extras", "1.2.3"


class FakeEntryPoint:
    """Stands in for an ``importlib.metadata.EntryPoint`` of the ``sparsebench.methods`` group."""

    def __init__(self, name: str, load: object) -> None:
        self.name, self.value, self.dist = name, f"extras:{name}", FakeDistribution()
        self._load = load

    def load(self) -> object:
        return self._load()


@pytest.fixture()
def fresh_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    """A method registry with no built-ins, reading entry points from a list the test fills."""
    package = tmp_path / "sbtest_empty_builtins"
    package.mkdir()
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry = Registry("method", "sbtest_empty_builtins", "sbtest.methods")
    points: list[FakeEntryPoint] = []
    monkeypatch.setattr(
        registry_module.metadata, "entry_points", lambda group: points if group == "sbtest.methods" else []
    )
    reg.points = points  # type: ignore[attr-defined]
    return reg


def test_entry_point_plugins_load_and_a_broken_one_is_reported(fresh_registry: Registry) -> None:
    class Plain:
        """Exposed without the decorator: registered under the entry point's name."""

    class Decorated:
        pass

    def broken() -> object:
        raise ImportError("No module named 'torch_sparse_magic'")

    fresh_registry.points.extend(  # type: ignore[attr-defined]
        [
            FakeEntryPoint("plain_method", lambda: Plain),
            FakeEntryPoint("decorated", lambda: fresh_registry.register("decorated_method")(Decorated)),
            FakeEntryPoint("broken_method", broken),
        ]
    )
    assert fresh_registry.names() == ["decorated_method", "plain_method"]
    assert fresh_registry.get("Plain-Method") is Plain and Plain.name == "plain_method"
    assert fresh_registry.entries()[1].origin == "distribution sparsebench-extras 1.2.3"
    assert "ImportError" in fresh_registry.broken["broken_method"]
    with pytest.raises(PluginError, match="broken_method.*failed to load.*torch_sparse_magic"):
        fresh_registry.get("broken_method")


def test_entry_point_clashing_with_a_taken_name_is_not_silently_dropped(fresh_registry: Registry) -> None:
    class First:
        pass

    class Second:
        pass

    fresh_registry.points.extend(  # type: ignore[attr-defined]
        [FakeEntryPoint("shared_name", lambda: First), FakeEntryPoint("Shared-Name", lambda: Second)]
    )
    try:
        fresh_registry.names()
    except PluginError as exc:  # either a hard error ...
        assert "registered twice" in str(exc)
        return
    assert "Shared-Name" in fresh_registry.broken  # ... or reported like a broken plugin


def test_entry_point_of_an_already_registered_class_is_not_a_clash(fresh_registry: Registry) -> None:
    class SelfRegistering:
        pass

    fresh_registry.register("self_registering")(SelfRegistering)
    fresh_registry.points.append(FakeEntryPoint("self_registering", lambda: SelfRegistering))  # type: ignore[attr-defined]
    assert fresh_registry.names() == ["self_registering"]
    assert fresh_registry.broken == {}


def test_a_class_declaring_another_name_than_it_is_registered_under_is_an_error(
    fresh_registry: Registry,
) -> None:
    class Named:
        name = "my_method"

    with pytest.raises(PluginError, match="declares name 'my_method' but is registered as 'other_name'"):
        fresh_registry.register("other_name")(Named)
    assert Named.name == "my_method"  # not overwritten
    fresh_registry.register("my_method")(Named)  # the same name is fine
    assert fresh_registry.get("my-method") is Named


def test_plugins_that_load_but_cannot_work_are_reported_by_name(
    fresh_registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sparsebench.method import SparsityMethod

    monkeypatch.setattr(fresh_registry, "base", "sparsebench.method:SparsityMethod")

    class Works(SparsityMethod):
        def masks(self, model: object) -> dict:
            return {}

    class Abstract(SparsityMethod):
        pass

    class Misnamed(Works):
        name = "something_else"

    def exits() -> object:
        raise SystemExit(3)

    fresh_registry.points.extend(  # type: ignore[attr-defined]
        [
            FakeEntryPoint("works", lambda: Works),
            FakeEntryPoint("abstract", lambda: Abstract),
            FakeEntryPoint("a_function", lambda: exits),
            FakeEntryPoint("exits", exits),
            FakeEntryPoint("misnamed", lambda: Misnamed),
        ]
    )
    assert fresh_registry.names() == ["works"]
    broken = fresh_registry.broken
    assert set(broken) == {"abstract", "a_function", "exits", "misnamed"}
    assert all(why.startswith("sparsebench-extras 1.2.3: ") for why in broken.values())
    assert "Abstract does not implement masks" in broken["abstract"]
    assert "not a subclass of SparsityMethod" in broken["a_function"]
    assert "SystemExit: 3" in broken["exits"]
    assert "'something_else'" in broken["misnamed"] and "'misnamed'" in broken["misnamed"]


def test_only_classes_of_the_built_in_package_count_as_built_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registry's built-ins are what its package's modules register on import; plugins are not."""
    package = tmp_path / "sbtest_shipped_builtins"
    package.mkdir()
    (package / "__init__.py").write_text("REGISTRY = None  # set by the test before the registry loads\n")
    (package / "shipped.py").write_text(
        "from . import REGISTRY\n\n\n@REGISTRY.register('shipped')\nclass Shipped:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry: Registry = Registry("method", "sbtest_shipped_builtins", "sbtest.methods")
    monkeypatch.setattr(importlib.import_module("sbtest_shipped_builtins"), "REGISTRY", registry)

    class FromPlugin:
        pass

    points = {"sbtest.methods": [FakeEntryPoint("from_plugin", lambda: FromPlugin)]}
    monkeypatch.setattr(registry_module.metadata, "entry_points", lambda group: points.get(group, []))
    try:
        assert registry.names() == ["from_plugin", "shipped"]
        assert registry.builtin_names() == ["shipped"]
    finally:
        for name in ("sbtest_shipped_builtins", "sbtest_shipped_builtins.shipped"):
            sys.modules.pop(name, None)
    assert {"sparse_vd", "dense"} <= set(METHODS.builtin_names())


def test_a_plugin_registering_a_non_method_with_the_decorator_is_refused(
    fresh_registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fresh_registry, "base", "sparsebench.method:SparsityMethod")

    class NotAMethod:
        pass

    with pytest.raises(PluginError, match="'not_a_method'.*not a subclass of SparsityMethod"):
        fresh_registry.register("not_a_method")(NotAMethod)
    assert "not_a_method" not in fresh_registry
