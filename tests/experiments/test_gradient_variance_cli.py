"""``sparsebench experiment gradient-variance`` end to end on a tiny generated MNIST."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

TINY = ["--width", "16", "--hidden-layers", "2", "--repeats", "4", "--separate-repeats", "4",
        "--groups", "2", "--batch-size", "50", "--train-batch-size", "100", "--val-size", "200",
        "--threads", "1"]  # fmt: skip


def test_the_command_writes_the_record_and_the_table(run_cli, mnist_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "gv"
    result = run_cli("experiment", "gradient-variance", "--epochs", "1", "2", *TINY,
                     "--data-dir", mnist_dir, "--out", out)  # fmt: skip
    assert result.code == 0, result.err
    rec = json.loads((out / "gradient_variance.json").read_text())
    assert rec["finished"] and rec["version"] == 1
    assert [p["epoch"] for p in rec["points"]] == [1, 2]
    assert rec["config"]["epochs"] == [1, 2] and rec["config"]["network"] == "784-16-16-10 ReLU"
    stems = (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )
    assert set(rec["data"]) == {f"mnist/{s}" for s in stems}
    cells = rec["points"][0]["cells"]
    assert {(c["estimator"], c["layer"]) for c in cells} == {
        (e, layer) for e in ("lrt", "separate", "single", "none") for layer in ("top", "bottom")
    }
    assert all(c["variance"] > 0 and len(c["group_variances"]) == 2 for c in cells)
    table = pd.read_csv(out / "table.csv")
    assert len(table) == 16 and set(table["paper_epochs"]) == {10}
    assert "Gradient variance (Kingma, Salimans, Welling 2015, Table 1)" in (out / "table.md").read_text()
    assert "local reparameterization" in result.out
    again = run_cli("experiment", "gradient-variance", "--epochs", "1", *TINY, "--data-dir", mnist_dir,
                    "--out", out)  # fmt: skip
    assert again.code == 2 and "--overwrite" in again.err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--epochs", "10", "5"], "increasing"),
        (["--epochs", "ten"], "--epochs expects an integer"),
        (["--repeats", "3", "--groups", "2"], "cannot fill 2 groups"),
        (["--p-hidden", "0.7"], "(0, 0.5]"),
        (["--lr", "fast"], "--lr expects a number"),
        (["--threads", "-1"], "--threads must be at least 0"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(run_cli, tmp_path: Path, flags: list[str], message: str) -> None:
    result = run_cli("experiment", "gradient-variance", *flags, "--out", tmp_path / "gv")
    assert result.code == 2
    assert message in result.err and result.err.count("\n") == 1


def test_missing_data_says_so(run_cli, tmp_path: Path) -> None:
    result = run_cli("experiment", "gradient-variance", *TINY, "--epochs", "1",
                     "--data-dir", tmp_path / "nothing", "--out", tmp_path / "gv")  # fmt: skip
    assert result.code == 2
    assert "train-images-idx3-ubyte" in result.err
    assert not (tmp_path / "gv" / "gradient_variance.json").exists()
