"""Run ids as users type them: the full id or the short prefix that tables and logs print."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from sparsebench import tracking
from sparsebench.errors import ConfigError, RunNotFoundError
from sparsebench.tracking import reader


@pytest.fixture()
def client(quick_tracking_uri: str):
    return tracking.open_store(quick_tracking_uri)


def new_run_ids(store, count: int) -> list[str]:
    experiment = store.experiment_id("sparsebench")
    return [store.client.create_run(experiment).info.run_id for _ in range(count)]


def test_a_full_id_or_a_unique_prefix_names_the_run(client) -> None:
    first, second = new_run_ids(client, 2)
    assert tracking.resolve_run_id(client, first) == first
    prefix = next(first[:n] for n in range(8, 33) if not second.startswith(first[:n]))
    assert tracking.resolve_run_id(client, prefix) == first
    assert tracking.resolve_run_id(client, prefix.upper()) == first


def test_a_shared_prefix_is_ambiguous_and_lists_the_candidates(client, monkeypatch) -> None:
    monkeypatch.setattr(reader, "MIN_RUN_PREFIX", 1)
    runs = new_run_ids(client, 17)  # 17 ids, 16 hex digits: two share a first character
    digit, count = Counter(r[0] for r in runs).most_common(1)[0]
    assert count >= 2
    with pytest.raises(ConfigError, match=f"--init-from {digit} is ambiguous") as error:
        tracking.resolve_run_id(client, digit, "--init-from")
    listed = set(re.findall(r"[0-9a-f]{32}", str(error.value)))
    assert len(listed) >= 2 and listed <= {r for r in runs if r.startswith(digit)}


@pytest.mark.parametrize("typed", ["0123456789abcdef", "zzzzzzzz", "abc"])
def test_an_unknown_id_or_a_too_short_prefix_says_what_to_give(client, typed: str) -> None:
    (run,) = new_run_ids(client, 1)
    typed = run[:3] if typed == "abc" else typed  # a real run's prefix, below the minimum length
    with pytest.raises(RunNotFoundError, match=f"--resume {typed}: no such MLflow run .*first 6"):
        tracking.resolve_run_id(client, typed, "--resume")


def test_resume_ids_are_matched_against_the_checkpoint_folders(tmp_path) -> None:
    from sparsebench.run import checkpoint

    for run in ("aaaaaa11" + "0" * 24, "aaaaaa22" + "0" * 24, "bbbbbb33" + "0" * 24):
        (tmp_path / run).mkdir()
        (tmp_path / run / "checkpoint.pt").write_bytes(b"")
    assert checkpoint.full_run_id("bbbbbb", tmp_path) == "bbbbbb33" + "0" * 24
    assert checkpoint.full_run_id("aaaaaa22", tmp_path) == "aaaaaa22" + "0" * 24
    with pytest.raises(ConfigError, match="run aaaaaa is ambiguous"):
        checkpoint.full_run_id("aaaaaa", tmp_path)
    with pytest.raises(RunNotFoundError, match="no checkpoint for run cccccc"):  # no such run
        checkpoint.full_run_id("cccccc", tmp_path)
    for typed in ("aaaaa", "*", "../aaaaaa11"):  # too short, a pattern, a path: never globbed or opened
        with pytest.raises(ConfigError, match="is not a run id"):
            checkpoint.full_run_id(typed, tmp_path)
