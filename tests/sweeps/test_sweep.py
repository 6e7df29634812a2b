"""Sweeps on the generated MNIST: optuna trials become MLflow child runs, resume, fail, prune, parallelise."""

from __future__ import annotations

import json
import os
import shlex
import statistics
import sys
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from sparsebench.env import Env
from sparsebench.run.plan import RunResult
from sparsebench.sweep import objective, workers
from sparsebench.sweep.objective import TrialObjective
from sparsebench.sweep.spec import spec_from_dict
from sparsebench.sweep.study import Progress, best_trials, progress
from tests.sweeps import (
    budget_trials,
    kill_mid_trial,
    load_study,
    mlflow_runs,
    mlflow_store,  # noqa: F401 - a fixture
    optuna_log,  # noqa: F401 - a fixture
    sweep_cli,
    worker_process,
    write_spec,
)

pytestmark = pytest.mark.usefixtures("mlflow_store")


def _args(spec: Path, mnist_dir: Path, store: str, experiment: str) -> list[object]:
    return [spec, "--data-dir", mnist_dir, "--tracking-uri", store, "--experiment", experiment]


def test_trials_are_mlflow_children_and_a_rerun_resumes(
    tmp_path: Path,
    mnist_dir: Path,
    mlflow_store: str,  # noqa: F811
) -> None:
    storage = str(tmp_path / "journal.log")
    spec = write_spec(tmp_path, storage=storage, n_trials=2, budget={"epochs": 2})
    args = _args(spec, mnist_dir, mlflow_store, "resume")
    assert (first := sweep_cli(*args)).code == 0, first.err
    study = load_study(storage, "dense-lenet300_100")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    before = {t.number: (t.datetime_complete, t.user_attrs["mlflow_run_id"]) for t in study.trials}

    (parent,) = mlflow_runs(mlflow_store, "resume", "tags.`sweep.role` = 'parent'")
    children = mlflow_runs(mlflow_store, "resume", f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.data.tags["sweep.trial"] for r in children) == ["0", "1"]
    client = MlflowClient(mlflow_store)
    for trial in study.trials:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.tags["sweep.trial"] == str(trial.number)  # each points at the other
        assert float(run.data.params["train.lr"]) == pytest.approx(trial.params["train.lr"], rel=1e-12)
        assert run.data.params["train.epochs"] == "2" and run.data.params["train.val_size"] == "200"
        assert run.data.metrics["final_val_metric"] == trial.value  # the objective is the logged number
        assert run.data.metrics["test_metric"] == trial.user_attrs["test_metric"]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_metric")] == [1, 2]
        assert "per_layer.csv" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"

    again = sweep_cli(*args)  # the same command: the study is complete, nothing runs
    assert again.code == 0 and "2 done" in again.out
    assert len(load_study(storage, "dense-lenet300_100").trials) == 2

    more = sweep_cli(*args, "--n-trials", "3")  # a larger budget continues, never repeats
    assert more.code == 0, more.err
    trials = load_study(storage, "dense-lenet300_100").trials
    assert [t.number for t in trials] == [0, 1, 2] and all(t.state == TrialState.COMPLETE for t in trials)
    assert {t.number: (t.datetime_complete, t.user_attrs["mlflow_run_id"]) for t in trials[:2]} == before
    children = mlflow_runs(mlflow_store, "resume", f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.data.tags["sweep.trial"] for r in children) == ["0", "1", "2"]


def test_a_diverging_trial_fails_with_its_reason_and_the_study_completes(
    tmp_path: Path,
    mnist_dir: Path,
    mlflow_store: str,  # noqa: F811
    optuna_log: list[str],  # noqa: F811
) -> None:
    storage = str(tmp_path / "journal.log")
    spec = write_spec(
        tmp_path,
        storage=storage,
        n_trials=3,
        fixed={"train.val_size": 200, "train.optimizer": "sgd"},
        space={"train.lr": [0.01, 1000000.0]},  # SGD at lr 1e6 reaches NaN within one epoch
        enqueue=[{"train.lr": 1000000.0}],
    )
    result = sweep_cli(*_args(spec, mnist_dir, mlflow_store, "nan"))
    assert result.code == 0, result.err
    (logged,) = [line for line in optuna_log if "Trial 0 failed with parameters" in line]
    assert "loss became nan" in logged and "Traceback" not in logged  # a result, stated in one line
    trials = load_study(storage, "dense-lenet300_100").trials
    assert len(trials) == 3 and trials[0].params["train.lr"] == 1e6
    for trial in trials:  # a trial fails exactly when its learning rate is absurd
        diverges = trial.params["train.lr"] == 1e6
        assert trial.state == (TrialState.FAIL if diverges else TrialState.COMPLETE)
        assert ("loss became nan" in trial.user_attrs.get("failure", "")) == diverges
    assert "trial 0 failed: loss became nan" in result.out
    (run,) = mlflow_runs(mlflow_store, "nan", "tags.`sweep.trial` = '0'")
    assert run.info.status == "FAILED" and run.data.tags["sweep.state"] == "failed"


def test_a_pruned_trial_stops_early_and_its_run_says_so(
    tmp_path: Path,
    mnist_dir: Path,
    mlflow_store: str,  # noqa: F811
) -> None:
    storage = str(tmp_path / "journal.log")
    # A validation error is never below -1, so optuna's ThresholdPruner stops every trial after epoch 1.
    spec = write_spec(
        tmp_path, storage=storage, budget={"epochs": 3}, pruner={"name": "threshold", "upper": -1.0}
    )
    assert sweep_cli(*_args(spec, mnist_dir, mlflow_store, "prune")).code == 0
    trials = load_study(storage, "dense-lenet300_100").trials
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    assert all(list(t.intermediate_values) == [1] for t in trials)
    client = MlflowClient(mlflow_store)
    runs = [r for r in mlflow_runs(mlflow_store, "prune") if "sweep.trial" in r.data.tags]
    assert len(runs) == 2
    for run in runs:
        assert run.info.status == "KILLED" and run.data.tags["sweep.state"] == "pruned"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_metric")] == [1]


def test_seeds_are_averaged_under_one_trial_run(
    tmp_path: Path,
    mnist_dir: Path,
    mlflow_store: str,  # noqa: F811
) -> None:
    storage = str(tmp_path / "journal.log")
    objectives = [{"minimize": "val_metric"}, {"maximize": "compression"}]
    spec = write_spec(tmp_path, storage=storage, n_trials=1, seeds=2, objectives=objectives)
    assert sweep_cli(*_args(spec, mnist_dir, mlflow_store, "seeds")).code == 0
    (trial,) = load_study(storage, "dense-lenet300_100").trials
    trial_run = MlflowClient(mlflow_store).get_run(trial.user_attrs["mlflow_run_id"])
    seeds = mlflow_runs(mlflow_store, "seeds", f"tags.mlflow.parentRunId = '{trial_run.info.run_id}'")
    assert sorted(r.data.params["train.seed"] for r in seeds) == ["0", "1"]
    mean = statistics.fmean(r.data.metrics["final_val_metric"] for r in seeds)
    assert trial.values == pytest.approx([mean, 1.0], abs=1e-12)  # dense: compression 1
    assert trial_run.data.metrics["final_val_metric"] == pytest.approx(mean, abs=1e-12)

    status = sweep_cli("status", *_args(spec, mnist_dir, mlflow_store, "seeds"), "--json")
    report = json.loads(status.out)
    assert report["counts"] == {
        "complete": 1,
        "pruned": 0,
        "failed": 0,
        "lost": 0,
        "running": 0,
        "waiting": 0,
    }
    (best,) = report["best"]  # a Pareto front of one
    assert best["number"] == 0 and best["val_metric"] == pytest.approx(mean, abs=1e-12)
    assert best["test_metric"] == trial.user_attrs["test_metric"] and best["compression"] == 1.0
    assert report["dashboard"] == f"optuna-dashboard {storage}"
    assert report["mlflow_ui"] == f"mlflow ui --backend-store-uri {mlflow_store}"
    text = sweep_cli("status", *_args(spec, mnist_dir, mlflow_store, "seeds")).out
    assert "Pareto front" in text and "1 done" in text and "optuna-dashboard" in text


def test_status_of_a_sweep_that_never_ran_is_an_error(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, storage=str(tmp_path / "none.log"))
    result = sweep_cli("status", spec)
    assert result.code == 2 and "no sweep has run" in result.err
    assert not (tmp_path / "none.log").exists()


def test_ctrl_c_stops_the_sweep_and_a_rerun_replaces_the_interrupted_trial(
    tmp_path: Path,
    mnist_dir: Path,
    mlflow_store: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    storage = str(tmp_path / "journal.log")
    spec = write_spec(tmp_path, storage=storage, n_trials=1)
    args = _args(spec, mnist_dir, mlflow_store, "interrupt")
    # The runner answers Ctrl-C by closing its run as KILLED and returning; the sweep must stop.
    with monkeypatch.context() as patch:
        patch.setattr(objective, "train", lambda request: RunResult("no-run", "KILLED"))
        assert sweep_cli(*args).code == 130
    (interrupted,) = load_study(storage, "dense-lenet300_100").trials
    assert interrupted.state == TrialState.FAIL and interrupted.user_attrs["interrupted"]
    assert sweep_cli(*args).code == 0  # the interrupted trial does not use up the budget
    trials = load_study(storage, "dense-lenet300_100").trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]


def test_ctrl_c_in_a_trial_says_what_was_kept_and_how_to_continue_the_sweep(
    tmp_path: Path,
    mnist_dir: Path,
    mlflow_store: str,  # noqa: F811
    optuna_log: list[str],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    storage = str(tmp_path / "journal.log")
    spec = write_spec(tmp_path, storage=storage, n_trials=2, budget={"epochs": 2})
    args = [*_args(spec, mnist_dir, mlflow_store, "ctrl-c"), "--set", "train.threads=1"]
    assert sweep_cli(*args, "--n-trials", "1").code == 0  # one trial done before the interruption

    def ctrl_c_after_epoch_1(trial: optuna.Trial) -> object:
        def report(epoch: int, val_metric: float) -> None:
            raise KeyboardInterrupt  # as if Ctrl-C came right after the first checkpoint

        return report

    with monkeypatch.context() as patch:
        patch.setattr(objective, "_reporter", ctrl_c_after_epoch_1)
        result = sweep_cli(*args)
    assert result.code == 130
    assert "run --resume" not in result.err  # the trial's run continued alone would not report back
    assert not any("KeyboardInterrupt" in line or "Traceback" in line for line in optuna_log)
    assert "1 of 2 trials finished (1 complete, 0 pruned, 0 diverged) and are kept in study " in result.err
    (interrupted,) = [t for t in load_study(storage, "dense-lenet300_100").trials if t.number == 1]
    assert interrupted.state == TrialState.FAIL and interrupted.user_attrs["interrupted"]
    (run,) = mlflow_runs(mlflow_store, "ctrl-c", "tags.`sweep.trial` = '1'")
    assert run.info.status == "KILLED"

    command = result.err.rsplit("Continue the sweep with: ", 1)[1].strip()
    words = shlex.split(command)
    assert words[:3] == ["sparsebench", "sweep", str(spec)] and words[3:] == [str(a) for a in args[1:]]
    assert sweep_cli(*words[2:]).code == 0  # the command it gives finishes the sweep
    trials = load_study(storage, "dense-lenet300_100").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]


def test_a_worker_killed_by_a_signal_fails_the_sweep(
    tmp_path: Path,
    mnist_dir: Path,
    mlflow_store: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    storage = str(tmp_path / "journal.log")
    spec = write_spec(tmp_path, storage=storage, n_trials=1)
    real_command = workers.worker_command

    def second_worker_killed(spec_path: Path, env: object, index: int) -> list[str]:
        if index == 1:  # e.g. the kernel's OOM killer
            return [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
        return real_command(spec_path, env, index)

    monkeypatch.setattr(workers, "worker_command", second_worker_killed)
    args = [*_args(spec, mnist_dir, mlflow_store, "killed-worker"), "--workers", "2", "--device", "cpu"]
    result = sweep_cli(*args)
    assert result.code == 128 + 9, result.err  # as a shell reports a command killed by SIGKILL
    assert "worker 1 was killed by SIGKILL" in result.err
    assert [t.state for t in load_study(storage, "dense-lenet300_100").trials] == [TrialState.COMPLETE]


def test_exit_status_ranks_a_signal_above_success() -> None:
    assert workers.exit_status([]) == 0 and workers.exit_status([0, 0]) == 0
    assert workers.exit_status([0, -9]) == 137 and workers.exit_status([-15, 2]) == 143
    assert workers.exit_status([0, 2]) == 2
    assert workers.worker_problems([0, -9, 3]) == [
        "worker 1 was killed by SIGKILL",
        "worker 2 exited with code 3",
    ]


def test_two_workers_share_one_study(
    tmp_path: Path,
    mnist_dir: Path,
    mlflow_store: str,  # noqa: F811
) -> None:
    storage = str(tmp_path / "journal.log")
    spec = write_spec(tmp_path, storage=storage, n_trials=4)
    result = sweep_cli(*_args(spec, mnist_dir, mlflow_store, "workers"), "--workers", "2", "--device", "cpu")
    assert result.code == 0, result.err
    trials = budget_trials(load_study(storage, "dense-lenet300_100").trials, 4)
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    workers = {t.user_attrs["worker"].rsplit(":", 1)[1] for t in trials}
    assert str(os.getpid()) not in workers  # trials ran in the worker processes
    runs = [r for r in mlflow_runs(mlflow_store, "workers") if "sweep.trial" in r.data.tags]
    assert sorted(r.data.tags["sweep.trial"] for r in runs) == ["0", "1", "2", "3"]
    expected_threads = str(max(1, len(os.sched_getaffinity(0)) // 2))  # the cores are split
    assert {r.data.params["train.threads"] for r in runs} == {expected_threads}


def test_a_killed_local_worker_s_trial_is_retried_on_rerun(
    tmp_path: Path,
    mnist_dir: Path,
    mlflow_store: str,  # noqa: F811
) -> None:
    storage = str(tmp_path / "journal.log")
    spec = write_spec(tmp_path, storage=storage, n_trials=1, budget={"epochs": 15})
    args = _args(spec, mnist_dir, mlflow_store, "killed")
    victim = worker_process(*args)
    _, lost = kill_mid_trial([victim], storage, "dense-lenet300_100", (mlflow_store, "killed"))
    assert sweep_cli(*args).code == 0  # the same command again: the dead worker's trial is re-queued
    trials = load_study(storage, "dense-lenet300_100").trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    retried = trials[1]
    assert retried.system_attrs["failed_trial"] == lost == 0
    assert retried.params == trials[0].params
    (lost_run,) = mlflow_runs(mlflow_store, "killed", f"tags.`sweep.trial` = '{lost}'")
    assert lost_run.info.status == "KILLED" and lost_run.data.tags["sweep.state"] == "lost"
    assert lost_run.data.tags["sweep.retried_as"] == "1"
    assert progress(load_study(storage, "dense-lenet300_100")) == Progress(complete=1, lost=1)


def _trial(
    number: int, state: TrialState, values: list[float] | None, **attrs: object
) -> optuna.trial.FrozenTrial:
    dist = optuna.distributions.FloatDistribution(0, 1)
    return optuna.trial.create_trial(
        state=state, values=values, params={"x": 0.5}, distributions={"x": dist}, user_attrs=attrs
    )


def test_progress_counts_what_uses_the_budget() -> None:
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    study.add_trial(_trial(0, TrialState.COMPLETE, [1.0]))
    study.add_trial(_trial(1, TrialState.PRUNED, None))
    study.add_trial(_trial(2, TrialState.FAIL, None, failure="loss became nan"))
    study.add_trial(_trial(3, TrialState.FAIL, None))  # a dead worker's attempt
    study.add_trial(_trial(4, TrialState.WAITING, None))
    study.add_trial(_trial(5, TrialState.FAIL, None, skipped="budget taken"))  # never ran
    counts = progress(study)
    assert counts == Progress(complete=1, pruned=1, failed=1, lost=1, waiting=1)
    assert counts.used == 4 and counts.finished == 3


def test_of_two_trials_started_together_for_the_last_slot_the_later_steps_back() -> None:
    spec = spec_from_dict({"task": "lenet300_100", "method": "random", "n_trials": 1})
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    study.ask()  # trial 0: another worker took the only slot a moment earlier
    trial_objective = TrialObjective(spec, Env.resolve(), "no-parent", "no-key")
    study.optimize(trial_objective, n_trials=1, catch=trial_objective.expected_failures)
    late = study.trials[1]
    assert late.state == TrialState.FAIL and "skipped" in late.user_attrs and not late.params
    assert progress(study) == Progress(running=1)


def test_selection_uses_validation_only() -> None:
    study = optuna.create_study(
        directions=["minimize", "maximize"], storage=optuna.storages.InMemoryStorage()
    )
    for val, compression, test in [(1.0, 10, 9.0), (2.0, 20, 9.0), (1.5, 5, 0.1), (3.0, 20, 0.1)]:
        study.add_trial(_trial(0, TrialState.COMPLETE, [val, compression], test_metric=test))
    # (1.5, 5) and (3.0, 20) are dominated on validation, whatever their test error.
    assert [t.values for t in best_trials(study)] == [[1.0, 10], [2.0, 20]]
    single = optuna.create_study(direction="minimize", storage=optuna.storages.InMemoryStorage())
    for val, test in [(2.0, 0.0), (1.0, 5.0), (3.0, 0.0)]:
        single.add_trial(_trial(0, TrialState.COMPLETE, [val], test_metric=test))
    assert [t.value for t in best_trials(single, top=2)] == [1.0, 2.0]


def test_without_a_file_the_method_plugin_s_search_space_is_swept(
    tmp_path: Path,
    mnist_dir: Path,
    mlflow_store: str,  # noqa: F811
) -> None:
    storage = str(tmp_path / "journal.log")
    options = ["--n-trials", "1", "--epochs", "1", "--set", "train.val_size=200", "--storage", storage]
    where = ["--data-dir", mnist_dir, "--tracking-uri", mlflow_store, "--experiment", "plugin"]
    result = sweep_cli("--method", "sparse_vd", "--task", "lenet300_100", *options, *where)
    assert result.code == 0, result.err
    (trial,) = load_study(storage, "sparse_vd-lenet300_100").trials
    assert set(trial.params) == {"method.kl_weight", "method.threshold"}  # SparseVD.search_space
    run = MlflowClient(mlflow_store).get_run(trial.user_attrs["mlflow_run_id"])
    assert float(run.data.params["method.threshold"]) == pytest.approx(
        trial.params["method.threshold"], rel=1e-12
    )
    assert trial.values[1] == pytest.approx(run.data.metrics["compression"], rel=1e-12)


def test_scaling_runs_each_worker_count_as_a_fresh_study(
    tmp_path: Path,
    mnist_dir: Path,
    mlflow_store: str,  # noqa: F811
) -> None:
    spec = write_spec(tmp_path, storage=str(tmp_path / "real.log"), n_trials=2)
    args = _args(spec, mnist_dir, mlflow_store, "scale")
    result = sweep_cli(*args, "--scaling", "1", "2", "--device", "cpu", "--json")
    assert result.code == 0, result.err
    table = json.loads(result.out)
    assert [row["workers"] for row in table] == [1, 2]
    assert all(row["trials"] == 2 for row in table)  # each count ran the whole budget afresh
    assert table[0]["ratio"] == 1.0
    assert table[1]["ratio"] == pytest.approx(table[1]["trials_per_hour"] / table[0]["trials_per_hour"])
    assert all(row["wall_seconds"] > row["seconds_per_trial"] > 0 for row in table)
    assert not (tmp_path / "real.log").exists()  # the spec's own study is left alone
    runs = [r for r in mlflow_runs(mlflow_store, "scale-scaling") if "sweep.trial" in r.data.tags]
    assert len(runs) == 4
