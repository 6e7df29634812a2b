"""Third-party methods arrive through the ``sparsebench.methods`` entry-point group.

The plugins are real distributions on disk in ``tests/plugins/``: packages with a ``.dist-info``
folder beside them, found by ``importlib.metadata`` through ``PYTHONPATH`` exactly as installed
wheels would be. ``site`` holds one working plugin and several broken ones; ``clash`` holds a
second distribution offering a name the first already provides.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sparsebench.errors import PluginError
from sparsebench.registry import METHODS, Registry

PLUGINS = Path(__file__).resolve().parent / "plugins"
PLUGIN_MODULES = ("sbplugin_demo", "sbplugin_broken", "sbplugin_gone", "sbplugin_abstract", "sbplugin_exits")
BROKEN = {
    "broken_method",
    "gone_method",
    "abstract_method",
    "function_method",
    "exiting_method",
    "renamed_topk",
}


@pytest.fixture(scope="module")
def site() -> Path:
    return PLUGINS / "site"


def sparsebench(site: Path, *argv: object) -> subprocess.CompletedProcess[str]:
    """``python -m sparsebench ...`` in a fresh interpreter that sees the plugins in ``site``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "sparsebench", *map(str, argv)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_list_shows_plugins_with_origin_and_broken_ones_apart(site: Path) -> None:
    proc = sparsebench(site, "list", "methods", "--verbose")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "methods:"
    entries = {
        line.split()[0]: line for line in lines if line.startswith("  ") and not line.startswith("    ")
    }
    assert {"dense", "sparse_vd", "demo_topk"} <= entries.keys()
    assert entries["demo_topk"].split(None, 1)[1] == "keep the largest weights of each layer (plugin test)"
    block = lines[lines.index(entries["demo_topk"]) + 1 :][:3]
    assert block[0].split() == ["paper:", "none", "(test", "plugin)"]
    assert block[1].strip() == "origin: distribution sbplugin-demo 0.1"
    assert (
        block[2].strip()
        == "method.keep_fraction = 0.5  # fraction of each layer's weights kept, by magnitude"
    )
    # Broken plugins are named with their distribution and error, after the working ones.
    assert "BROKEN plugin: sbplugin-broken 0.1: RuntimeError: broken on purpose" in entries["broken_method"]
    assert "BROKEN plugin: sbplugin-gone 0.1: ModuleNotFoundError" in entries["gone_method"]
    assert (
        "BROKEN plugin: sbplugin-exits 0.1: SystemExit: a plugin called sys.exit" in entries["exiting_method"]
    )
    assert "does not implement masks" in entries["abstract_method"]
    assert "not a subclass of SparsityMethod" in entries["function_method"]
    assert "'topk_by_another_name'" in entries["renamed_topk"] and "'renamed_topk'" in entries["renamed_topk"]
    # Built-ins keep their file origin.
    sparse_vd = lines.index(entries["sparse_vd"])
    assert lines[sparse_vd + 2].strip().startswith("origin: file ")
    assert lines[sparse_vd + 2].strip().endswith(str(Path("sparse_vd", "method.py")))


def test_plugin_method_runs_end_to_end(site: Path, mnist_dir: Path, quick_tracking_uri: str) -> None:
    proc = sparsebench(
        site, "run", "--method", "demo-topk", "--task", "lenet300_100", "--data-dir", mnist_dir,
        "--tracking-uri", quick_tracking_uri, "--set", "train.epochs=1", "--set", "train.val_size=200",
        "--set", "method.keep_fraction=0.25", "--no-progress", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    # A quarter of every layer survives: 58,800 + 7,500 + 250 of 266,200 weights, exactly 4x.
    assert result["nonzeros"] == 66_550 and result["compression"] == 4.0
    assert result["row"].startswith("lenet300_100 demo_topk ") and result["row"].endswith(
        " 75.0-75.0-75.0 4.0x"
    )
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=quick_tracking_uri).get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["method.name"] == "demo_topk" and run.data.params["method.keep_fraction"] == "0.25"


@pytest.fixture()
def plugin_registry(site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Registry]:
    """A fresh method registry of this process, with ``site`` on sys.path.

    Built-ins register on import into the global ``METHODS``, so this one holds only the plugins.
    """
    monkeypatch.syspath_prepend(str(site))
    yield Registry("method", "sparsebench.methods", "sparsebench.methods", base=METHODS.base)
    for name in PLUGIN_MODULES:
        sys.modules.pop(name, None)


def test_broken_plugin_is_an_error_only_when_used(plugin_registry: Registry) -> None:
    assert plugin_registry.get("demo_topk").__name__ == "TopK"
    assert set(plugin_registry.broken) == BROKEN
    with pytest.raises(
        PluginError, match="method plugin 'broken_method' failed to load: sbplugin-broken 0.1"
    ):
        plugin_registry.get("broken_method")
    origins = {e.name: e.origin for e in plugin_registry.entries()}
    assert origins["demo_topk"] == "distribution sbplugin-demo 0.1"


def test_name_clash_between_plugins_is_reported_not_fatal(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(PLUGINS / "clash"))
    registry = Registry("method", "sparsebench.methods", "sparsebench.methods", base=METHODS.base)
    try:
        names = [e.name for e in registry.entries()]
    finally:
        for name in (*PLUGIN_MODULES, "sbplugin_clash"):
            sys.modules.pop(name, None)
    assert names.count("demo_topk") == 1
    assert "demo_topk" in registry.broken, "the second distribution's demo_topk was dropped without a word"
    assert (
        "sbplugin-clash" in registry.broken["demo_topk"] and "sbplugin-demo" in registry.broken["demo_topk"]
    )


def test_plugins_in_the_environment_leave_the_built_in_list_alone(plugin_registry: Registry) -> None:
    """The project's own tests cover ``builtin_names()``: a plugin, working or broken, is not in it."""
    assert "demo_topk" in plugin_registry.names()
    assert "demo_topk" not in plugin_registry.builtin_names()
    builtin = {e.name: e.obj for e in METHODS.entries() if e.builtin}
    assert {"sparse_vd", "dense", "magnitude"} <= builtin.keys()
    assert all(cls.__module__.startswith("sparsebench.methods.") for cls in builtin.values())
