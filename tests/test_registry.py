"""Name lookup, suggestions, duplicates and entry-point plugins (sparsebench/registry.py)."""

from __future__ import annotations

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
