"""Sweep specs: every mistake is a one-line error naming the key (exit code 2), before anything runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest
import yaml

from sparsebench.errors import ConfigError, UnknownNameError
from sparsebench.registry import METHODS
from sparsebench.sweep.spec import (
    EXAMPLE,
    ParamSpec,
    build_pruner,
    build_sampler,
    default_spec,
    load_spec,
    spec_from_dict,
)
from tests.sweeps import sweep_cli

SWEEPS = Path(__file__).resolve().parents[2] / "sweeps"
SHIPPED = sorted(SWEEPS.glob("*.yaml"))
BASE = "task: lenet300_100\nmethod: sparse_vd\nn_trials: 3\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("task: [lenet300_100\nmethod: sparse_vd\n", "line 2: not valid YAML"),
        ("- just\n- a list\n", "a sweep spec is a YAML mapping"),
        (BASE + "n_trails: 5\n", "unknown key n_trails"),
        (BASE + "budget: {epochs: 2, wallclock: 60}\n", "unknown key budget.wallclock"),
        (
            BASE + "space:\n  method.threshold: {type: float, low: 4, hgih: 5}\n",
            "unknown key space.method.threshold.hgih",
        ),
        (
            BASE + "space:\n  method.threshold: {type: float, low: 4.0, high: 1.0}\n",
            "space.method.threshold: empty range",
        ),
        (BASE + "space:\n  method.kl_weight: {type: log, low: 0, high: 1}\n", "a log range needs low > 0"),
        (
            BASE + "space:\n  method.kl_weight: {type: uniform, low: 0, high: 1}\n",
            "space.method.kl_weight.type",
        ),
        (
            BASE + "space:\n  method.train_mask: {type: categorical, choices: []}\n",
            "choices must be a non-empty list",
        ),
        (
            BASE + "space:\n  method.thresh: {type: float, low: 1, high: 2}\n",
            "space.method.thresh: unknown config key",
        ),
        (
            BASE + "space:\n  train.batch_size: {type: float, low: 50, high: 200}\n",
            "train.batch_size must be an integer",
        ),
        (BASE + "space:\n  method.variance_from: [clamped_alpha, sigma3]\n", "variance_from must be one of"),
        (BASE + "fixed: {train.epochs: 2}\nbudget: {epochs: 3}\n", "train.epochs is set twice"),
        (BASE + "fixed: {train.optimiser: sgd}\n", "unknown config key 'train.optimiser'"),
        (BASE + "objectives: [{minimize: test_metric}]\n", "test split, which is reported but never used"),
        (BASE + "objectives: [{minimise: val_metric}]\n", "objectives[0]: unknown key 'minimise'"),
        (BASE + "objectives: [{minimize: accuracy}]\n", "unknown metric 'accuracy'"),
        (
            BASE + "objectives: [{minimize: val_metric}, {maximize: compression}]\npruner: median\n",
            "cannot prune",
        ),
        (BASE + "sampler: {name: tpe, sed: 1}\n", "sampler.sed: TPESampler takes no argument"),
        (BASE + "sampler: annealing\n", "sampler.name: unknown optuna sampler 'annealing'"),
        (BASE + "pruner: {name: percentile, percentile: 150}\n", "pruner: PercentilePruner"),
        ("task: lenet5\nmethod: dense\nn_trials: 0\n", "n_trials must be at least 1"),
        (BASE + "seeds: [1, 1]\n", "distinct seeds"),
        (BASE + "heartbeat: {interval: 10, grace_period: 5}\n", "grace_period must exceed"),
        (
            BASE + "space:\n  method.threshold: {type: float, low: 1, high: 2}\n"
            "enqueue: [{method.threshold: 3.0}]\n",
            "enqueue[0].method.threshold = 3.0 lies outside",
        ),
        # Non-finite values pass the config's types, then every trial crashes (and is re-queued).
        (BASE + "fixed: {train.lr: .nan}\n", "fixed.train.lr must be a finite number, got nan"),
        (BASE + "fixed: {method.threshold: -.inf}\n", "fixed.method.threshold must be a finite number"),
        (BASE + "fixed: {train.lr: 'inf'}\n", "fixed.train.lr must be a finite number, got 'inf'"),
        (
            BASE + "space:\n  method.threshold: {type: float, low: 1, high: 4}\n"
            "enqueue: [{method.threshold: .nan}]\n",
            "enqueue[0].method.threshold must be a finite number",
        ),
        (
            BASE + "space:\n  method.threshold: [1.0, .nan]\n",
            "space.method.threshold.choices[1] must be a finite",
        ),
        (BASE + "space:\n  method.threshold: {type: float, low: 1, high: .inf}\n", "high must be a finite"),
        (BASE + "sampler: {name: tpe, seed: .nan}\n", "sampler.seed must be a finite number"),
        (BASE + "budget: {timeout: .inf}\n", "budget.timeout must be a finite number"),
        (BASE + "budget: {timeout: -5}\n", "budget.timeout must be greater than 0"),
        (BASE + "budget: {epochs: 0}\n", "budget.epochs must be at least 1"),
        (BASE + "seeds: [-1]\n", "seeds[0] must be at least 0"),
        (BASE + "heartbeat: {max_retry: -1}\n", "heartbeat.max_retry must be at least 0"),
        (BASE + "n_trials: true\n", "n_trials must be a number"),
    ],
)
def test_a_bad_spec_is_a_one_line_error_naming_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text(text)
    result = sweep_cli("bad.yaml")
    assert result.code == 2
    assert message in result.err
    assert result.err.startswith("sparsebench: error: bad.yaml")
    assert len(result.err.strip().splitlines()) == 1
    assert "Traceback" not in result.err
    assert not (tmp_path / "mlruns").exists(), "nothing may be created before the spec is valid"


def test_an_unknown_method_suggests_the_close_name(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("task: lenet5\nmethod: sparse_vdd\nn_trials: 2\n")
    with pytest.raises(UnknownNameError, match="did you mean sparse_vd"):
        load_spec(path)
    result = sweep_cli(path)
    assert result.code == 2 and "unknown method 'sparse_vdd'" in result.err


def test_command_line_mistakes_exit_with_code_2(tmp_path: Path) -> None:
    assert "dense declares no search space" in sweep_cli("--method", "dense", "--task", "lenet5").err
    nan = sweep_cli("--method", "sparse_vd", "--task", "lenet5", "--set", "train.lr=nan")
    assert nan.code == 2 and "fixed.train.lr must be a finite number, got 'nan'" in nan.err
    assert "not found" in sweep_cli(tmp_path / "missing.yaml").err
    assert sweep_cli("--method", "sparse_vd").code == 2  # --task missing
    assert (
        "n_trials must be at least 1"
        in sweep_cli("--method", "random", "--task", "lenet5", "--n-trials", "0").err
    )
    assert (
        "unknown config key"
        in sweep_cli("--method", "random", "--task", "lenet5", "--set", "train.nope=1").err
    )


def test_yaml_numbers_without_a_dot_are_numbers() -> None:
    # PyYAML reads 1e-4 as the string "1e-4"; a spec must not care.
    spec = spec_from_dict(yaml.safe_load(BASE + "space:\n  train.lr: {type: log, low: 1e-4, high: 1e-2}\n"))
    assert spec.space == (ParamSpec("train.lr", "float", 1e-4, 1e-2, log=True),)


def test_params_map_to_optuna_distributions() -> None:
    spec = spec_from_dict(
        yaml.safe_load(
            BASE
            + "space:\n"
            + "  train.lr: {type: log, low: 1.0e-4, high: 1.0e-2}\n"
            + "  train.batch_size: {type: int, low: 50, high: 200, step: 50}\n"
            + "  method.threshold: {type: float, low: 1, high: 4}\n"
            + "  method.variance_from: [clamped_alpha, sigma2]\n"
        )
    )
    trial = optuna.create_study(storage=optuna.storages.InMemoryStorage()).ask()
    values = {p.key: p.suggest(trial) for p in spec.space}
    d = trial.distributions
    assert d["train.lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    assert d["train.batch_size"] == optuna.distributions.IntDistribution(50, 200, step=50)
    assert d["method.threshold"] == optuna.distributions.FloatDistribution(1.0, 4.0)
    assert d["method.variance_from"] == optuna.distributions.CategoricalDistribution(
        ["clamped_alpha", "sigma2"]
    )
    assert values["train.batch_size"] in (50, 100, 150, 200)


def test_the_documented_example_is_a_valid_spec() -> None:
    spec = spec_from_dict(yaml.safe_load(EXAMPLE))
    assert spec.storage.startswith("postgresql") and spec.heartbeat.grace_period == 180
    assert spec.space[2] == ParamSpec("method.train_mask", "categorical", choices=(True, False))


def test_defaults_and_round_trip() -> None:
    spec = spec_from_dict(yaml.safe_load(BASE + "seeds: 3\nfixed: {train.seed: 10}\nbudget: {epochs: 4}\n"))
    assert spec.study == "sparse_vd-lenet300_100"
    assert spec.seeds == (10, 11, 12)
    assert spec.overrides() == {"train.epochs": 4}  # train.seed belongs to the seeds
    assert [(o.direction, o.metric) for o in spec.objectives] == [("minimize", "val_metric")]
    assert spec.space is None  # the plugin's own search space
    assert spec_from_dict(spec.to_dict()) == spec
    full = load_spec(SWEEPS / "sparse_vd_lenet300_100.yaml")
    assert spec_from_dict(full.to_dict()) == full


def test_samplers_and_pruners_are_optuna_classes_by_short_name() -> None:
    multi = spec_from_dict(
        yaml.safe_load(
            BASE + "objectives: [{minimize: val_metric}, {maximize: compression}]\nsampler: nsga-ii\n"
        )
    )
    assert isinstance(build_sampler(multi), optuna.samplers.NSGAIISampler)
    assert isinstance(build_pruner(multi), optuna.pruners.NopPruner)  # optuna cannot prune several objectives
    single = spec_from_dict(
        yaml.safe_load(BASE + "pruner: {name: SuccessiveHalvingPruner, min_resource: 2}\n")
    )
    assert isinstance(build_pruner(single), optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(build_pruner(spec_from_dict(yaml.safe_load(BASE))), optuna.pruners.MedianPruner)


def test_a_seeded_sampler_differs_between_workers_and_restarts() -> None:
    spec = spec_from_dict(yaml.safe_load(BASE + "sampler: {name: random, seed: 7}\n"))

    def first_draw(salt: tuple[int, ...]) -> float:
        study = optuna.create_study(
            sampler=build_sampler(spec, salt), storage=optuna.storages.InMemoryStorage()
        )
        return study.ask().suggest_float("x", 0.0, 1.0)

    assert first_draw((0, 0)) == first_draw((0, 0))  # reproducible
    assert len({first_draw((0, 0)), first_draw((1, 0)), first_draw((0, 5))}) == 3  # worker, then trial count


def test_default_spec_uses_the_plugins_search_space() -> None:
    spec = default_spec("sparse_vd", "lenet5", n_trials=5)
    assert spec.space is None and spec.n_trials == 5 and spec.study == "sparse_vd-lenet5"
    assert [o.metric for o in spec.objectives] == ["val_metric", "compression"]


def _method_of(path: Path) -> str:
    return yaml.safe_load(path.read_text())["method"]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_specs_validate(path: Path) -> None:
    if _method_of(path) not in METHODS:
        pytest.skip(f"method {_method_of(path)} is not registered yet")
    spec = load_spec(path)
    assert path.stem == f"{spec.method}_{spec.task}"
    for params in spec.enqueue:  # the published defaults are valid points of the space
        assert set(params) == {p.key for p in spec.space}


def test_shipped_specs_start_with_their_usage_and_share_one_budget_per_task() -> None:
    assert len(SHIPPED) >= 18
    budgets: dict[str, set[str]] = {}
    for path in SHIPPED:
        text = path.read_text()
        assert text.startswith(f"# Usage: sparsebench sweep {path.stem} "), path.name
        data = yaml.safe_load(text)
        budget = {k: data.get(k) for k in ("n_trials", "seeds", "budget", "objectives", "sampler")}
        budgets.setdefault(data["task"], set()).add(yaml.safe_dump(budget))
    assert set(budgets) >= {"lenet300_100", "lenet5"}
    for task, kinds in budgets.items():
        assert len(kinds) == 1, f"{task} specs differ in budget: {kinds}"
    methods = {
        (yaml.safe_load(p.read_text())["method"], yaml.safe_load(p.read_text())["task"]) for p in SHIPPED
    }
    for method in ("sparse_vd", "dense", "group_nj", "group_hs", "magnitude", "random", "binary_dropout"):
        assert {(method, "lenet300_100"), (method, "lenet5")} <= methods


def test_spec_dataclasses_are_frozen() -> None:
    spec = spec_from_dict(yaml.safe_load(BASE))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.n_trials = 5  # type: ignore[misc]
    with pytest.raises(ConfigError):
        spec_from_dict(yaml.safe_load(BASE + "storage: ''\n"))


def test_a_shipped_spec_is_addressed_by_name_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no sweeps/ folder here, as for a user of the wheel
    assert load_spec("sparse_vd_lenet300_100") == load_spec(SWEEPS / "sparse_vd_lenet300_100.yaml")
    assert load_spec("sparse_vd_lenet300_100.yaml").study == "sparse_vd-lenet300_100"
    storage = tmp_path / "none.log"
    result = sweep_cli("status", "sparse_vd_lenet300_100", "--storage", storage)
    assert result.code == 2 and "no sweep has run" in result.err  # the name resolved to a spec
    shown = sweep_cli("sparse_vd_lenet5", "--show")
    assert shown.code == 0 and shown.out == (SWEEPS / "sparse_vd_lenet5.yaml").read_text()


def test_a_file_of_the_same_name_wins_over_the_shipped_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dense_lenet5").write_text(BASE)
    assert load_spec("dense_lenet5").method == "sparse_vd"


def test_list_shows_every_shipped_spec_and_errors_point_to_it(tmp_path: Path) -> None:
    listed = sweep_cli("--list")
    assert listed.code == 0
    names = [line.split()[0] for line in listed.out.splitlines()[1:] if line and not line.startswith("run ")]
    assert names == [p.stem for p in SHIPPED]
    assert "Sparse VD: KL weight" in listed.out
    as_json = yaml.safe_load(sweep_cli("--list", "--json").out)
    assert {e["name"]: (e["task"], e["method"]) for e in as_json}["group_nj_lenet5"] == ("lenet5", "group_nj")

    typo = sweep_cli("sparse_vd_lenet5_")  # a name, misspelt: the close name and the list
    assert typo.code == 2 and "`sparsebench sweep sparse_vd_lenet5`" in typo.err
    assert "`sparsebench sweep --list`" in typo.err
    missing = sweep_cli(tmp_path / "missing.yaml")
    assert "not found" in missing.err and "`sparsebench sweep --list`" in missing.err
    nothing = sweep_cli()
    assert nothing.code == 2 and "`sparsebench sweep --list`" in nothing.err
    # A method without a search space is sent to its shipped spec, by the name --list shows.
    no_space = sweep_cli("--method", "dense", "--task", "lenet5").err
    assert "dense_lenet5" in no_space and "dense_lenet5" in names and "sweeps/" not in no_space
