"""Where a sweep stands: trial counts, the selected trials, throughput, and where to look further.

Read by ``sparsebench sweep status`` (and printed after every sweep) and by the Ctrl-C message. Every
URI shown is masked: a storage or tracking URL may carry a password.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import asdict
from typing import Any

import optuna

from sparsebench.env import Env
from sparsebench.sweep.runs import find_parent_run
from sparsebench.sweep.spec import SweepSpec
from sparsebench.sweep.storage import storage_url
from sparsebench.sweep.study import best_trials, load_existing_study, progress
from sparsebench.tracking import mask_uri


def status_report(spec: SweepSpec, env: Env) -> dict[str, Any]:
    """Everything ``sweep status`` shows, as plain data (``--json`` prints it as it is)."""
    study = load_existing_study(spec)
    names = [o.metric for o in spec.objectives]
    best = [
        {
            "number": t.number,
            **dict(zip(names, t.values, strict=True)),
            "val_metric": t.user_attrs.get("val_metric", math.nan),
            "test_metric": t.user_attrs.get("test_metric", math.nan),
            "params": t.params,
            "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
        }
        for t in best_trials(study)
    ]
    failures = [
        {"number": t.number, "reason": t.user_attrs["failure"]}
        for t in study.get_trials(deepcopy=False)
        if "failure" in t.user_attrs
    ]
    return {
        "study": spec.study,
        "task": spec.task,
        "method": spec.method,
        "storage": mask_uri(storage_url(spec)),
        "n_trials": spec.n_trials,
        "objectives": [f"{o.direction} {o.metric}" for o in spec.objectives],
        "counts": asdict(progress(study)),
        "trials_per_hour": throughput(study),
        "best": best,
        "failures": failures,
        "mlflow_parent_run_id": find_parent_run(spec, env),
        **links(storage_url(spec), env.tracking_uri),
    }


def links(storage: str, tracking_uri: str) -> dict[str, str]:
    """The commands that open the study and its runs in a browser, with any password masked."""
    return {
        "dashboard": f"optuna-dashboard {shlex.quote(mask_uri(storage))}",
        "mlflow_ui": f"mlflow ui --backend-store-uri {shlex.quote(mask_uri(tracking_uri))}",
    }


def throughput(study: optuna.Study) -> float | None:
    """Finished trials per hour of wall time, first start to last finish (all workers together)."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished() and t.datetime_complete]
    if not done:
        return None
    start = min(t.datetime_start for t in done if t.datetime_start)
    hours = (max(t.datetime_complete for t in done) - start).total_seconds() / 3600
    return len(done) / hours if hours > 0 else None


def interrupted_message(spec: SweepSpec, command: str) -> str:
    """What a Ctrl-C kept and the command that continues the sweep (not ``run --resume``: a trial's
    run continued by itself would never report back to the study)."""
    where = f"study {spec.study} in {mask_uri(storage_url(spec))}"
    try:
        state = progress(load_existing_study(spec))
    except Exception:  # the summary is a courtesy; the study itself is safe either way
        kept = f"finished trials are kept in {where}"
    else:
        kept = (
            f"{state.finished} of {spec.n_trials} trials finished ({state.complete} complete, "
            f"{state.pruned} pruned, {state.failed} diverged) and are kept in {where}"
        )
    return (
        f"sweep interrupted: {kept}; a trial cut short counts for nothing and a new one takes its "
        f"place. Continue the sweep with: {command}"
    )
