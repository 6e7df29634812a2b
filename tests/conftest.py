"""Shared fixtures: small datasets written in the real file formats, so the real readers are tested."""

from __future__ import annotations

import contextlib
import gzip
import io
import shutil
import signal
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


def write_idx(path: Path, array: np.ndarray, magic: int, compress: bool) -> None:
    """Write a uint8 array as an IDX file (big-endian header), optionally gzipped."""
    header = struct.pack(">i", magic) + struct.pack(">" + "i" * array.ndim, *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def make_mnist(
    root: Path, n_train: int = 1200, n_test: int = 300, compress: bool = True, seed: int = 0
) -> Path:
    """An MNIST look-alike whose classes are learnable: each label lights up its own 2 rows of pixels."""
    rng = np.random.default_rng(seed)
    folder = root / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, 2 + 2 * label : 4 + 2 * label, 4:24] = 255
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, 2051, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, 2049, compress)
    return root


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding a small gzipped MNIST in ``mnist/`` (1,200 train / 300 test)."""
    return make_mnist(tmp_path_factory.mktemp("data"))


@pytest.fixture()
def tracking_uri(tmp_path: Path) -> str:
    """A fresh sqlite MLflow store for one test."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(autouse=True, scope="session")
def _sigint_as_a_terminal_sends_it() -> Iterator[None]:
    """Ctrl-C handling is tested as users meet it: SIGINT raising KeyboardInterrupt.

    A suite started in the background by a script (``cmd &`` without job control) inherits SIGINT
    ignored, and Python then installs no handler; the interrupt tests, and every child process they
    start (exec keeps an ignored signal ignored), would test an environment no user has.
    """
    inherited = signal.getsignal(signal.SIGINT)
    if inherited == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, inherited)


@pytest.fixture(autouse=True)
def _isolated_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARSEBENCH_CHECKPOINTS", str(tmp_path / "checkpoints"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@dataclass
class CliResult:
    """What one in-process ``sparsebench`` command returned and printed."""

    code: int
    out: str
    err: str


def _run_cli(*argv: object) -> CliResult:
    from sparsebench.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def run_cli() -> Callable[..., CliResult]:
    """``run_cli("run", "--method", ...)``: call ``sparsebench.cli.main`` in-process, capturing its output.

    Session-scoped (it holds no state) so module-scoped fixtures can train once and share the run.
    """
    return _run_cli


@pytest.fixture()
def temporary_method() -> Iterator[Callable[[str, type], type]]:
    """Register test-only method classes under a name; they are removed from the registry afterwards."""
    from sparsebench.registry import METHODS, normalize_name

    added: list[str] = []

    def register(name: str, cls: type) -> type:
        METHODS.register(name)(cls)
        added.append(normalize_name(name))
        return cls

    yield register
    for key in added:
        METHODS._entries.pop(key, None)


@pytest.fixture(scope="session")
def empty_tracking_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An sqlite MLflow store with its schema already created, to be copied, never written to.

    Creating the schema runs every MLflow migration: about a second of CPU and, on a busy disk,
    ten seconds of fsyncs. Copying the finished file costs nothing.
    """
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


def copy_tracking_store(template: Path, folder: Path) -> str:
    """A fresh tracking URI in ``folder`` whose database starts as a copy of ``template``."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, folder / "mlflow.db")
    return f"sqlite:///{folder / 'mlflow.db'}"


@pytest.fixture()
def quick_tracking_uri(empty_tracking_store: Path, tmp_path: Path) -> str:
    """Like ``tracking_uri`` (a fresh store for one test) but copied from ``empty_tracking_store``."""
    return copy_tracking_store(empty_tracking_store, tmp_path)
