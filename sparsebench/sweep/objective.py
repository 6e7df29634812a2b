"""One optuna trial = one sparsebench training run per seed of the suggested config.

Runs are logged to MLflow as children of the sweep's run. Ctrl-C inside a trial is the runner's to
record (it closes its run as KILLED); the sweep then stops, and says itself what was kept and how to
continue: the runner's own advice (``sparsebench run --resume``) would continue the run outside the
study, so it is kept off a trial's stderr.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
from collections.abc import Iterator
from typing import Any, TextIO

import optuna
from optuna.trial import TrialState

from sparsebench.env import Env
from sparsebench.errors import TrainingDivergedError
from sparsebench.run.plan import RunRequest, RunResult
from sparsebench.run.train import train
from sparsebench.sweep.components import prunable
from sparsebench.sweep.runs import close_runs, trial_runs
from sparsebench.sweep.spec import SweepSpec
from sparsebench.sweep.study import BudgetTaken, uses_budget, worker_id
from sparsebench.tracking import Tracker


class TrialObjective:
    """One optuna trial = one training run per seed of the suggested config, logged under the sweep run.

    With one seed the training run is the trial's MLflow run; with several, a trial run holds the
    means and the seed runs are nested under it. Runs carry ``sweep.trial`` (the trial number) and
    the trial keeps ``mlflow_run_id``, so either finds the other.
    """

    expected_failures = (TrainingDivergedError, BudgetTaken)
    """Failures that end one trial, not the sweep (optuna marks the trial FAIL and goes on)."""

    def __init__(self, spec: SweepSpec, env: Env, parent_run_id: str, key: str) -> None:
        self.spec, self.env, self.parent_run_id, self.key = spec, env, parent_run_id, key

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        trial.set_user_attr("worker", worker_id())
        # Workers check the budget before asking for a trial, but two can ask at the same moment;
        # the trial numbers (handed out by the storage) settle which one runs.
        counted = sorted(t.number for t in trial.study.get_trials(deepcopy=False) if uses_budget(t))
        if trial.number not in counted[: self.spec.n_trials]:
            trial.set_user_attr("skipped", "another worker started the last trial of the budget")
            raise BudgetTaken(f"trial {trial.number} is beyond n_trials={self.spec.n_trials}")
        self._retire_lost_attempts(trial)
        overrides = {**self.spec.overrides(), **self.suggest(trial)}
        tags = {"sweep.key": self.key, "sweep.study": self.spec.study, "sweep.trial": str(trial.number)}
        name = f"{self.spec.study}-trial-{trial.number}"
        if len(self.spec.seeds) == 1:
            results = [self._train(trial, overrides, self.spec.seeds[0], self.parent_run_id, tags, name)]
            trial.set_user_attr("mlflow_run_id", results[0].run_id)
        else:
            results = self._train_seeds(trial, overrides, tags, name)
        values = [statistics.fmean(_metric(r, o.metric) for r in results) for o in self.spec.objectives]
        trial.set_user_attr("val_metric", statistics.fmean(r.val_metric for r in results))
        trial.set_user_attr("test_metric", statistics.fmean(r.test_metric for r in results))  # reported only
        trial.set_user_attr("compression", statistics.fmean(r.summary["compression"] for r in results))
        return values[0] if len(values) == 1 else values

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """The trial's config overrides: the spec's space, else the method plugin's own."""
        if self.spec.space is not None:
            return {p.key: p.suggest(trial) for p in self.spec.space}
        from sparsebench.registry import METHODS

        method_cls = METHODS.get(self.spec.method)
        return method_cls(method_cls.Config()).search_space(trial)

    def _train_seeds(
        self, trial: optuna.Trial, overrides: dict[str, Any], tags: dict[str, str], name: str
    ) -> list[RunResult]:
        tracker = Tracker.open(
            self.env.tracking_uri,
            self.env.experiment,
            tags={"task": self.spec.task, "method": self.spec.method, **tags},
            run_name=name,
            parent_run_id=self.parent_run_id,
        )
        trial.set_user_attr("mlflow_run_id", tracker.run_id)
        tracker.log_params({**overrides, "sweep.seeds": list(self.spec.seeds)})
        status = "FAILED"
        try:
            results = [
                self._train(trial, overrides, seed, tracker.run_id, tags, f"{name}-seed-{seed}")
                for seed in self.spec.seeds
            ]
            means = {k: statistics.fmean(r.summary[k] for r in results) for k in results[0].summary}
            final_val = statistics.fmean(r.val_metric for r in results)
            test = statistics.fmean(r.test_metric for r in results)
            tracker.log_metrics({"final_val_metric": final_val, "test_metric": test, **means})
            status = "FINISHED"
            return results
        except optuna.TrialPruned:
            tracker.set_tags({"sweep.state": "pruned"})
            status = "KILLED"
            raise
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            tracker.finish(status)

    def _train(
        self,
        trial: optuna.Trial,
        overrides: dict[str, Any],
        seed: int,
        parent: str,
        tags: dict[str, str],
        name: str,
    ) -> RunResult:
        first_seed = seed == self.spec.seeds[0]
        request = RunRequest(
            task=self.spec.task,
            method=self.spec.method,
            overrides={**overrides, "train.seed": seed},
            env=self.env,
            progress=False,
            parent_run_id=parent,
            run_name=name,
            tags={**tags, "sweep.seed": str(seed)},
            # Optuna prunes on one curve per trial; with several seeds that is the first seed's.
            on_epoch=_reporter(trial) if first_seed and prunable(self.spec) else None,
        )
        try:
            with without_run_advice():
                result = train(request)
        except optuna.TrialPruned:
            self._close_seed_run(trial.number, seed, "KILLED", {"sweep.state": "pruned"})
            raise
        except TrainingDivergedError as exc:
            trial.set_user_attr("failure", str(exc))
            self._close_seed_run(trial.number, seed, "FAILED", {"sweep.state": "failed"})
            raise
        if result.status != "FINISHED":  # the runner turned Ctrl-C into a KILLED run; stop the sweep
            trial.set_user_attr("interrupted", True)
            raise KeyboardInterrupt
        return result

    def _close_seed_run(self, number: int, seed: int, status: str, tags: dict[str, str]) -> None:
        """Set the state the runner could not know (pruned) on the training run of one seed."""
        close_runs(self.env, trial_runs(self.env, self.key, number, seed), status, tags)

    def _retire_lost_attempts(self, trial: optuna.Trial) -> None:
        """A retried trial: close the MLflow runs its dead worker left RUNNING."""
        frozen = next(
            t
            for t in trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.number == trial.number
        )
        for number in frozen.system_attrs.get("retry_history", []):
            running = [r for r in trial_runs(self.env, self.key, number) if r.info.status == "RUNNING"]
            tags = {"sweep.state": "lost", "sweep.retried_as": str(trial.number)}
            close_runs(self.env, running, "KILLED", tags)


def _reporter(trial: optuna.Trial) -> Any:
    def report(epoch: int, val_metric: float) -> None:
        trial.report(val_metric, step=epoch + 1)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch + 1} (validation {val_metric:.3f})")

    return report


def _metric(result: RunResult, name: str) -> float:
    return result.val_metric if name == "val_metric" else float(result.summary[name])


RUN_ADVICE = ("sparsebench run --resume", "interrupted in epoch")
"""The runner's lines about continuing an interrupted run by itself, which a trial must not suggest."""


class _WithoutRunAdvice:
    """A stderr that passes every line through except the runner's advice on continuing a run (and
    the blank lines before it)."""

    def __init__(self, target: TextIO) -> None:
        self.target = target
        self.pending = ""
        self.blank = 0

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if not line.strip():
                self.blank += 1
            elif any(advice in line for advice in RUN_ADVICE):
                self.blank = 0
            else:
                self.target.write("\n" * self.blank + line + "\n")
                self.blank = 0
        return len(text)

    def flush(self) -> None:
        if self.pending and not any(advice in self.pending for advice in RUN_ADVICE):
            self.target.write("\n" * self.blank + self.pending)
        elif self.blank:
            self.target.write("\n" * self.blank)
        self.pending, self.blank = "", 0
        self.target.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)


@contextlib.contextmanager
def without_run_advice() -> Iterator[None]:
    """Keep the runner's ``sparsebench run --resume`` advice off stderr while a trial trains."""
    original = sys.stderr
    proxy = _WithoutRunAdvice(original)
    sys.stderr = proxy
    try:
        yield
    finally:
        proxy.flush()
        sys.stderr = original
