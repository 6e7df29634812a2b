"""Third-party methods arrive through the ``sparsebench.methods`` entry-point group.

The plugins here are real distributions on disk (a package plus a ``.dist-info`` folder), found by
``importlib.metadata`` through ``PYTHONPATH`` exactly as an installed wheel would be.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from sparsebench.errors import PluginError
from sparsebench.registry import Registry

TOPK = '''
"""Keep the largest weights of each layer: a stand-in third-party method for the plugin tests."""

from dataclasses import dataclass

import torch
from torch import nn

from sparsebench.config import option
from sparsebench.method import SparsityMethod


@dataclass
class TopKConfig:
    keep_fraction: float = option(0.5, "fraction of each layer's weights kept, by magnitude")


class TopK(SparsityMethod):
    description = "keep the largest weights of each layer (plugin test)"
    paper = "none (test plugin)"
    Config = TopKConfig

    def masks(self, model):
        masks = {}
        for path, m in model.named_modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                w = m.weight.detach().abs().flatten()
                keep = torch.zeros_like(w, dtype=torch.bool)
                keep[w.topk(round(self.config.keep_fraction * w.numel())).indices] = True
                masks[path] = keep.view_as(m.weight)
        return masks
'''


def write_distribution(
    site: Path, dist: str, package: str, source: str, entry_points: dict[str, str]
) -> None:
    """A minimal installed distribution: the package, and its dist-info declaring the entry points."""
    (site / package).mkdir()
    (site / package / "__init__.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[sparsebench.methods]\n{lines}")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding one working and two broken plugin distributions."""
    site = tmp_path_factory.mktemp("site")
    write_distribution(site, "sbplugin-demo", "sbplugin_demo", TOPK, {"demo_topk": "sbplugin_demo:TopK"})
    write_distribution(
        site,
        "sbplugin-broken",
        "sbplugin_broken",
        'raise RuntimeError("broken on purpose")\n',
        {"broken_method": "sbplugin_broken:Method"},
    )
    write_distribution(
        site, "sbplugin-gone", "sbplugin_gone", "", {"gone_method": "sbplugin_gone_typo:Method"}
    )
    return site


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
    yield Registry("method", "sparsebench.methods", "sparsebench.methods")
    for name in ("sbplugin_demo", "sbplugin_broken", "sbplugin_gone"):
        sys.modules.pop(name, None)


def test_broken_plugin_is_an_error_only_when_used(plugin_registry: Registry) -> None:
    assert plugin_registry.get("demo_topk").__name__ == "TopK"
    assert set(plugin_registry.broken) == {"broken_method", "gone_method"}
    with pytest.raises(
        PluginError, match="method plugin 'broken_method' failed to load: sbplugin-broken 0.1"
    ):
        plugin_registry.get("broken_method")
    origins = {e.name: e.origin for e in plugin_registry.entries()}
    assert origins["demo_topk"] == "distribution sbplugin-demo 0.1"


def test_name_clash_between_plugins_is_reported_not_fatal(
    tmp_path: Path, site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clash = tmp_path / "clash"
    clash.mkdir()
    write_distribution(clash, "sbplugin-clash", "sbplugin_clash", TOPK, {"demo_topk": "sbplugin_clash:TopK"})
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(clash))
    registry = Registry("method", "sparsebench.methods", "sparsebench.methods")
    try:
        names = [e.name for e in registry.entries()]
    finally:
        for name in ("sbplugin_demo", "sbplugin_broken", "sbplugin_gone", "sbplugin_clash"):
            sys.modules.pop(name, None)
    assert names.count("demo_topk") == 1
    assert "demo_topk" in registry.broken, "the second distribution's demo_topk was dropped without a word"
    assert (
        "sbplugin-clash" in registry.broken["demo_topk"] and "sbplugin-demo" in registry.broken["demo_topk"]
    )
