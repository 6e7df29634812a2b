"""The MNIST downloader against a local HTTP mirror serving generated files."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sparsebench.cli import main
from sparsebench.data import mnist
from sparsebench.data.download import MIRROR_ENV, download, download_mnist
from sparsebench.data.mnist import load_mnist
from sparsebench.errors import DataError, UnknownNameError
from tests.conftest import make_mnist, write_idx


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        self.requests.append(self.path)
        super().do_GET()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, list[str]]]:
    """(mirror URL, folder it serves, request log): a tiny MNIST served from 127.0.0.1."""
    folder = make_mnist(tmp_path_factory.mktemp("mirror"), n_train=40, n_test=20, seed=3) / "mnist"
    requests: list[str] = []
    handler = type("Handler", (QuietHandler,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", folder, requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(autouse=True)
def _local_files(served: tuple[str, Path, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Point FILES at the served files' sizes and md5s, and keep any proxy away from 127.0.0.1."""
    _, folder, requests = served
    files = {}
    for stem in mnist.FILES:
        data = gzip.decompress((folder / f"{stem}.gz").read_bytes())
        files[stem] = (len(data), hashlib.md5(data).hexdigest())
    monkeypatch.setattr(mnist, "FILES", files)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    requests.clear()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def assert_same_dataset(root: Path, reference: Path) -> None:
    got, want = load_mnist(root), load_mnist(reference.parent)
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(got, name).numpy(), getattr(want, name).numpy())


def test_files_land_verified_and_readable(tmp_path: Path, served: tuple[str, Path, list[str]]) -> None:
    url, folder, requests = served
    paths = download_mnist(tmp_path, mirrors=(url,))
    assert paths == [tmp_path / "mnist" / f"{stem}.gz" for stem in mnist.FILES]
    for path in paths:
        assert path.read_bytes() == (folder / path.name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == sorted(p.name for p in paths)
    assert_same_dataset(tmp_path, folder)
    assert len(requests) == 4


def test_verified_files_are_not_fetched_again(tmp_path: Path, served: tuple[str, Path, list[str]]) -> None:
    url, _, requests = served
    first = download_mnist(tmp_path, mirrors=(url,))
    # A second call needs no mirror at all: every file on disk already verifies.
    assert download_mnist(tmp_path, mirrors=(closed_port_url(),)) == first
    assert len(requests) == 4


def test_environment_variable_selects_the_mirror(
    tmp_path: Path, served: tuple[str, Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, folder, _ = served
    monkeypatch.setenv(MIRROR_ENV, url)
    assert len(download("mnist", tmp_path)) == 4
    assert_same_dataset(tmp_path, folder)


def test_a_dead_mirror_falls_through_to_the_next(tmp_path: Path, served: tuple[str, Path, list[str]]) -> None:
    url, folder, requests = served
    download_mnist(tmp_path, mirrors=(closed_port_url(), url + "no-such-folder/", url))
    assert_same_dataset(tmp_path, folder)
    assert sum(r.startswith("/no-such-folder/") for r in requests) == 4  # each 404 was tried, then skipped


def test_checksum_mismatch_is_rejected_and_leaves_no_file(
    tmp_path: Path, served: tuple[str, Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _, _ = served
    stem = "train-labels-idx1-ubyte"
    size, _ = mnist.FILES[stem]
    monkeypatch.setitem(mnist.FILES, stem, (size, "0" * 32))
    with pytest.raises(
        DataError, match=rf"{stem}.gz has {size} bytes and md5 \w+ \(expected {size} and 0{{32}}\)"
    ):
        download_mnist(tmp_path, mirrors=(url,))
    # The file before it in FILES verified and stays; the rejected one and its temporary never appear.
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == ["train-images-idx3-ubyte.gz"]


def test_size_mismatch_is_rejected(
    tmp_path: Path, served: tuple[str, Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _, _ = served
    stem = "train-images-idx3-ubyte"
    size, checksum = mnist.FILES[stem]
    monkeypatch.setitem(mnist.FILES, stem, (size + 1, checksum))
    with pytest.raises(DataError, match="the mirror serves a different file"):
        download_mnist(tmp_path, mirrors=(url,))
    assert list((tmp_path / "mnist").iterdir()) == []


def test_unreachable_mirror_is_a_clear_error(tmp_path: Path) -> None:
    dead = closed_port_url()
    with pytest.raises(DataError) as info:
        download_mnist(tmp_path, mirrors=(dead,))
    message = str(info.value)
    assert "\n" not in message
    assert f"could not download train-images-idx3-ubyte.gz from any mirror ({dead}train-images" in message
    assert MIRROR_ENV in message and str(tmp_path / "mnist") in message
    assert list((tmp_path / "mnist").iterdir()) == []


def test_malformed_mirror_url_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="could not download .* from any mirror"):
        download_mnist(tmp_path, mirrors=("not a url",))


def test_corrupt_local_file_is_replaced(tmp_path: Path, served: tuple[str, Path, list[str]]) -> None:
    url, folder, _ = served
    target = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    target.parent.mkdir()
    target.write_bytes(b"\x1f\x8b broken")
    download_mnist(tmp_path, mirrors=(url,))
    assert target.read_bytes() == (folder / target.name).read_bytes()
    assert_same_dataset(tmp_path, folder)


def test_stale_uncompressed_file_does_not_shadow_the_download(
    tmp_path: Path, served: tuple[str, Path, list[str]]
) -> None:
    # The reader prefers an uncompressed file, so a wrong one left in place would be read instead.
    url, folder, _ = served
    (tmp_path / "mnist").mkdir()
    stale = tmp_path / "mnist" / "train-labels-idx1-ubyte"
    write_idx(stale, np.zeros(40, dtype=np.uint8), 2049, compress=False)
    download_mnist(tmp_path, mirrors=(url,))
    assert not stale.exists()
    assert_same_dataset(tmp_path, folder)


def test_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="no downloader for 'imagenet'; available: mnist"):
        download("imagenet", tmp_path)


def test_cli_download(
    tmp_path: Path,
    served: tuple[str, Path, list[str]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, folder, _ = served
    monkeypatch.setenv(MIRROR_ENV, url)
    monkeypatch.setenv("SPARSEBENCH_DATA", str(tmp_path / "not-here"))
    assert main(["data", "download", "mnist", "--data-dir", str(tmp_path / "root")]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [str(tmp_path / "root" / "mnist" / f"{stem}.gz") for stem in mnist.FILES]
    assert "4 files verified" in err
    assert not (tmp_path / "not-here").exists()
    assert_same_dataset(tmp_path / "root", folder)


def test_cli_download_failure_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(MIRROR_ENV, closed_port_url())
    assert main(["data", "download", "mnist", "--data-dir", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1 and err.startswith("sparsebench: error: could not download")
