"""Campaign specs: the shipped MNIST campaign against the real plugins, and one-line errors up front."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from sparsebench.campaign.cells import SPEC_COPY, spec_copy_text
from sparsebench.campaign.spec import campaign_from_dict, load_campaign, shipped_names
from sparsebench.errors import ConfigError, UnknownNameError
from tests.campaign import write_campaign

ROOT = Path(__file__).resolve().parents[2]


def base(**fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "c",
        "results": "reports/c",
        "rows": [{"name": "a", "task": "lenet300_100", "method": "dense"}],
    }
    data.update(fields)
    return data


def row(**fields: Any) -> dict[str, Any]:
    return {"name": "b", "task": "lenet300_100", "method": "dense", **fields}


def test_the_shipped_mnist_campaign_declares_the_issue_rows_with_three_seeds() -> None:
    assert "mnist" in shipped_names()
    spec = load_campaign("mnist")
    assert spec.results == Path("reports/mnist")
    names = {r.name for r in spec.rows}
    for method in ("dense", "sparse_vd", "group_nj", "group_hs", "binary_dropout", "gaussian_dropout"):
        assert f"lenet300_100-{method}" in names
    assert {"lenet300_100-group_nj-kl3", "lenet300_100-group_hs-kl3"} <= names
    assert {f"lenet300_100-{m}-{x}" for m in ("magnitude", "random") for x in ("12x", "50x")} <= names
    assert {f"lenet300_100-variational_dropout-{v}" for v in ("A", "A2", "B")} <= names
    assert {"lenet5-dense", "lenet5-sparse_vd", "lenet5-group_nj", "lenet5-group_hs"} <= names
    assert all(r.seeds == (0, 1, 2) for r in spec.rows)
    assert spec.row("lenet5-sparse_vd").init_from_row == "lenet5-dense-20ep"
    assert spec.row("lenet300_100-magnitude-50x").config["method.sparsity"] == 0.98
    assert spec.row("lenet300_100-group_nj-kl3").config == {"method.kl_weight": 3.0}
    assert spec.row("lenet5-group_hs").paper.compression_precision == 419.0
    assert spec.row("lenet300_100-variational_dropout-A2").config == {"method.variant": "A2"}


def test_the_shipped_matched_sparsity_campaign_labels_every_row_with_its_targets() -> None:
    """Issue 20: four methods, three seeds, five targets on LeNet-300-100 and four on LeNet-5, and as
    many training runs per method and seed as there are targets (docs/matched-sparsity.md)."""
    spec = load_campaign("matched-sparsity")
    assert spec.results == Path("reports/matched-sparsity") and spec.raw.analyses == ["matched_sparsity"]
    assert all(r.seeds == (0, 1, 2) for r in spec.rows)
    targets = {"lenet300_100": [0.9, 0.95, 0.98, 0.99, 0.995], "lenet5": [0.9, 0.95, 0.98, 0.99]}
    for task, wanted in targets.items():
        for method in ("magnitude", "random", "sparse_vd", "l0"):
            rows = [r for r in spec.rows if r.task == task and r.method == method]
            assert len(rows) == len(wanted), (task, method)  # the equal budget
            if method in ("magnitude", "random"):
                assert sorted(r.labels["target"] for r in rows) == wanted
                assert all(r.config["method.sparsity"] == r.labels["target"] for r in rows)
            else:
                assert all(r.labels["targets"] == wanted == r.config["method.curve_sparsities"] for r in rows)
                assert all(r.config["method.sparsity"] == max(wanted) for r in rows)


@pytest.mark.parametrize("name", ["mnist", "matched-sparsity"])
def test_every_shipped_row_builds_converts_and_starts_from_its_parent(name: str) -> None:
    """Beyond the config check the loader makes: each row's model and method really go together."""
    from sparsebench.run.plan import plan_run

    spec = load_campaign(ROOT / "sweeps" / "campaigns" / f"{name}.yaml")
    exported = {}  # a row's plain model, as its export would look to a child row
    for r in spec.rows:
        plan = plan_run(r.task, r.method, r.overrides(r.seeds[0]))
        torch.manual_seed(0)
        model = plan.task.build_model()
        exported[r.name] = model.state_dict()
        if r.init_from_row:  # the runner loads the parent's model before the method converts it
            model.load_state_dict(exported[r.init_from_row])
        assert plan.method.not_applicable(model) is None, r.name
        plan.method.convert(model)  # the methods' own checks (e.g. magnitude's sparsity and scope)


def test_the_shipped_file_and_the_name_are_the_same_campaign(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.chdir(tmp_path)
    assert (
        load_campaign("mnist").public_dict()["rows"]
        == load_campaign(ROOT / "sweeps/campaigns/mnist.yaml").public_dict()["rows"]
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rowz": []}, "unknown key rowz"),
        ({"results": "/abs/reports/x"}, "results must be a folder under reports/"),
        ({"results": "elsewhere/x"}, "results must be a folder under reports/"),
        ({"results": "reports/../x"}, "results must be a folder under reports/"),
        ({"seeds": [0, 0]}, "distinct seeds"),
        ({"seeds": [-1]}, "seeds[0] must be at least 0"),
        ({"name": "has space"}, "name"),
        ({"rows": []}, "rows must be a non-empty list"),
        ({"rows": [row(confg={})]}, "unknown key rows[0].confg"),
        ({"rows": [row(config={"train.lr": math.nan})]}, "must be a finite number"),
        ({"rows": [row(config={"train.lr": -1.0})]}, "train.lr must be"),
        ({"rows": [row(config={"train.seed": 3})]}, "train.seed is set by the row's seeds"),
        ({"rows": [row(config={"method.nope": 1})]}, "rows.b: unknown config key 'method.nope'"),
        ({"rows": [row(), row()]}, "row names must be distinct; repeated: b"),
        ({"rows": [row(init_from_row="zz")]}, "rows.b.init_from_row names no row 'zz'"),
        ({"rows": [row(init_from_row="b")]}, "rows.b.init_from_row names itself"),
        ({"rows": [row(paper={"error": math.inf, "citation": "x"})]}, "rows[0].paper.error must be a finite"),
        ({"rows": [row(paper={"error": 1.0})]}, "rows[0].paper.citation is required"),
        ({"heartbeat": {"interval": 5, "grace_period": 5}}, "grace_period must exceed"),
    ],
)
def test_a_bad_spec_is_one_line_naming_the_key(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        campaign_from_dict(base(**change))
    text = str(caught.value)
    assert message in text and "\n" not in text


def test_an_unknown_method_is_named_with_a_suggestion() -> None:
    with pytest.raises(UnknownNameError, match="rows.b: .*sparse_vd"):
        campaign_from_dict(base(rows=[row(method="sparse_vdd")]))


def test_init_from_row_needs_the_same_task_every_seed_and_no_cycle() -> None:
    other_task = [row(name="p", task="lenet5"), row(init_from_row="p")]
    with pytest.raises(ConfigError, match="rows.b.init_from_row: p trains lenet5, not lenet300_100"):
        campaign_from_dict(base(rows=other_task))
    fewer_seeds = [row(name="p", seeds=[0]), row(init_from_row="p", seeds=[0, 1])]
    with pytest.raises(ConfigError, match="rows.b.init_from_row: p has no seed 1"):
        campaign_from_dict(base(rows=fewer_seeds))
    cycle = [row(name="p", init_from_row="b"), row(init_from_row="p")]
    with pytest.raises(ConfigError, match="cycle"):
        campaign_from_dict(base(rows=cycle))


def test_from_sweep_names_a_sweep_of_the_same_task_and_method() -> None:
    frozen = {"method.kl_weight": 2.0, "method.threshold": 3.0}
    spec = campaign_from_dict(
        base(rows=[row(method="sparse_vd", from_sweep={"spec": "sparse_vd_lenet300_100", "frozen": frozen})])
    )
    assert spec.row("b").config == frozen  # the frozen values are the row's configuration
    with pytest.raises(ConfigError, match="tunes lenet5 / sparse_vd, not lenet300_100 / sparse_vd"):
        campaign_from_dict(
            base(rows=[row(method="sparse_vd", from_sweep={"spec": "sparse_vd_lenet5", "frozen": frozen})])
        )
    with pytest.raises(ConfigError, match="not searched nor fixed"):
        bad = {"spec": "sparse_vd_lenet300_100", "frozen": {"train.batch_size": 50}}
        campaign_from_dict(base(rows=[row(method="sparse_vd", from_sweep=bad)]))
    with pytest.raises(ConfigError, match="set in both config and from_sweep.frozen"):
        both = {"spec": "sparse_vd_lenet300_100", "frozen": frozen}
        campaign_from_dict(base(rows=[row(method="sparse_vd", config=frozen, from_sweep=both)]))


def test_rows_are_selected_by_name_with_a_suggestion(tmp_path: Path) -> None:
    spec = load_campaign(write_campaign(tmp_path))
    assert [r.name for r in spec.select(["svd"])] == ["svd"]
    assert [r.name for r in spec.select(None)] == ["dense", "svd"]
    with pytest.raises(ConfigError, match="no row 'svdd'; did you mean svd"):
        spec.select(["svdd"])


def test_the_spec_copy_has_resolved_seeds_and_no_storage_password(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, storage="postgresql://user:secret@host/db")
    data = load_campaign(path).public_dict()
    assert [r["seeds"] for r in data["rows"]] == [[0, 1], [0, 1]]
    assert "secret" not in yaml.safe_dump(data)


@pytest.mark.parametrize("name", shipped_names())
def test_each_committed_spec_copy_matches_its_spec(name: str, monkeypatch) -> None:  # noqa: ANN001
    """Reports read ``campaign.json`` (row order, paper numbers): an edited spec must be copied there."""
    monkeypatch.chdir(ROOT)
    spec = load_campaign(ROOT / "sweeps" / "campaigns" / f"{name}.yaml")
    copy = spec.results / SPEC_COPY
    if not copy.is_file():
        pytest.skip(f"{name} has no results yet")
    assert copy.read_text() == spec_copy_text(spec), f"run: sparsebench campaign check {name} --update-copy"


def test_cli_check_says_when_the_copy_is_stale_and_updates_it(tmp_path: Path, run_cli, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.chdir(tmp_path)
    path = write_campaign(tmp_path)
    assert "none yet" in run_cli("campaign", "check", path).out
    assert "written" in run_cli("campaign", "check", path, "--update-copy").out
    assert "up to date" in run_cli("campaign", "check", path).out
    copy = load_campaign(path).results / SPEC_COPY
    copy.write_text("{}\n")
    assert "--update-copy" in run_cli("campaign", "check", path).out
    run_cli("campaign", "check", path, "--update-copy")
    assert copy.read_text() == spec_copy_text(load_campaign(path))


def test_cli_check_lists_cells_and_errors_are_exit_2(tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    result = run_cli("campaign", "check", write_campaign(tmp_path))
    assert result.code == 0, result.err
    assert "2 rows, 4 cells" in result.out and "from dense" in result.out
    missing = run_cli("campaign", "check", tmp_path / "nope.yaml")
    assert missing.code == 2 and "not found" in missing.err and len(missing.err.strip().splitlines()) == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\nresults: reports/x\nrows: [{name: a, task: lenet300_100, method: dense, seeds: [1, 1]}]\n"
    )
    result = run_cli("campaign", "run", bad)
    assert result.code == 2 and "distinct seeds" in result.err
