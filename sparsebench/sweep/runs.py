"""The MLflow side of a sweep: one parent run per study, trials as its children, found again by tags.

Runs are found by tags (``sweep.key``, ``sweep.trial``, ``sweep.role``) rather than by ids kept in
memory, so every worker on every machine shares the one parent run, and a retried trial can close the
runs its dead worker left open.
"""

from __future__ import annotations

from typing import Any

import optuna
import yaml

from sparsebench.env import Env
from sparsebench.sweep.spec import SweepSpec, public_dict
from sparsebench.sweep.storage import storage_url, sweep_key
from sparsebench.sweep.study import best_trials, progress
from sparsebench.tracking import Tracker, mask_uri, open_store


def trial_runs(env: Env, key: str, number: int, seed: int | None = None) -> list[Any]:
    """The MLflow runs of one trial (the trial run and its seed runs), found by their tags."""
    store = open_store(env.tracking_uri)
    experiment_id = store.experiment_id(env.experiment, create=False)
    if experiment_id is None:
        return []
    query = f"tags.`sweep.key` = '{key}' and tags.`sweep.trial` = '{number}'"
    if seed is not None:
        query += f" and tags.`sweep.seed` = '{seed}'"
    return store.client.search_runs([experiment_id], filter_string=query)


def close_runs(env: Env, runs: list[Any], status: str, tags: dict[str, str]) -> None:
    """Tag MLflow runs and set their final status (what the runner could not know: pruned, lost)."""
    store = open_store(env.tracking_uri)
    for run in runs:
        tracker = Tracker(store, run.info.run_id)
        tracker.set_tags(tags)
        tracker.finish(status)


def ensure_parent_run(spec: SweepSpec, env: Env) -> str:
    """The sweep's MLflow run (found by tag, so every worker on every machine shares it)."""
    store = open_store(env.tracking_uri)
    client = store.client
    experiment_id = store.experiment_id(env.experiment) or ""
    runs = _parent_runs(client, experiment_id, spec)
    if not runs:
        tracker = Tracker.open(
            store,
            env.experiment,
            tags={
                "task": spec.task,
                "method": spec.method,
                "sweep.role": "parent",
                "sweep.key": sweep_key(spec),
                "sweep.study": spec.study,
                "sweep.storage": mask_uri(storage_url(spec)),
            },
            run_name=f"sweep-{spec.study}",
        )
        tracker.log_params(_parent_params(spec))
        tracker.log_text(yaml.safe_dump(public_dict(spec), sort_keys=False), "sweep.yaml")
        # Workers that start together may each create one; all keep the oldest, the others go.
        runs = _parent_runs(client, experiment_id, spec)
        for run in runs[1:]:
            if run.info.run_id == tracker.run_id:
                client.delete_run(tracker.run_id)
    parent = runs[0]
    if parent.info.status != "RUNNING":
        client.update_run(parent.info.run_id, status="RUNNING")
    return parent.info.run_id


def find_parent_run(spec: SweepSpec, env: Env) -> str | None:
    """The sweep's MLflow run id in this tracking store, without creating one."""
    store = open_store(env.tracking_uri)
    experiment_id = store.experiment_id(env.experiment, create=False)
    runs = _parent_runs(store.client, experiment_id, spec) if experiment_id else []
    return runs[0].info.run_id if runs else None


def close_parent_run(spec: SweepSpec, env: Env, study: optuna.Study) -> None:
    """Log the outcome on the sweep run: counts and the selected trials (validation only)."""
    run_id = find_parent_run(spec, env)
    if run_id is None:
        return
    tracker = Tracker(open_store(env.tracking_uri), run_id)
    state = progress(study)
    metrics = {
        "trials_complete": state.complete,
        "trials_pruned": state.pruned,
        "trials_failed": state.failed,
    }
    best = best_trials(study)
    if best and len(spec.objectives) == 1:
        metrics[f"best_{spec.objectives[0].metric}"] = best[0].values[0]
        metrics["best_trial"] = best[0].number
    tracker.log_metrics(metrics)
    tracker.set_tags(
        {
            "sweep.best_trials": ",".join(str(t.number) for t in best),
            "sweep.best_runs": ",".join(str(t.user_attrs.get("mlflow_run_id", "")) for t in best),
        }
    )
    tracker.finish("FINISHED")


def _parent_runs(client: Any, experiment_id: str, spec: SweepSpec) -> list[Any]:
    query = f"tags.`sweep.key` = '{sweep_key(spec)}' and tags.`sweep.role` = 'parent'"
    runs = client.search_runs([experiment_id], filter_string=query)
    return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))


def _parent_params(spec: SweepSpec) -> dict[str, Any]:
    return {
        "task.name": spec.task,
        "method.name": spec.method,
        "sweep.study": spec.study,
        "sweep.n_trials": spec.n_trials,
        "sweep.seeds": list(spec.seeds),
        "sweep.epochs": spec.epochs,
        "sweep.timeout": spec.timeout,
        "sweep.objectives": [f"{o.direction} {o.metric}" for o in spec.objectives],
        "sweep.space": "method default" if spec.space is None else [p.key for p in spec.space],
        "sweep.sampler": spec.sampler.name if spec.sampler else "optuna default",
        "sweep.pruner": spec.pruner.name if spec.pruner else "default",
        "sweep.storage": mask_uri(storage_url(spec)),
        **spec.fixed,
    }
