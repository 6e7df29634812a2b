"""A well-formed spec checked against the plugins and optuna, with the code that configures a run.

``sweep.schema`` checks the file's shape; this checks its meaning: the task and method exist, every
fixed override and both ends of every searched range are valid settings of the run config, the
method's own search space proposes valid overrides, objectives name metrics a trial reports, and the
sampler and pruner can be built. All of it before the first trial, which may be hours away.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from sparsebench.errors import ConfigError
from sparsebench.sweep.components import build_pruner, build_sampler
from sparsebench.sweep.shipped import LIST_HINT, shipped_names

if TYPE_CHECKING:
    from sparsebench.sweep.spec import SweepSpec


def check_against_plugins(spec: SweepSpec) -> None:
    """Resolve names and check every key and value with the same code that configures a run."""
    from sparsebench.run.plan import plan_run

    plan_run(spec.task, spec.method, spec.overrides())  # unknown task/method, bad fixed overrides
    for param in spec.space or ():
        if param.key in spec.fixed or (param.key == "train.epochs" and spec.epochs is not None):
            raise ConfigError(f"space.{param.key} is also fixed; a key is either searched or fixed")
        for value in param.extremes():
            try:
                plan_run(spec.task, spec.method, {**spec.overrides(), param.key: value})
            except ConfigError as exc:
                raise ConfigError(f"space.{param.key}: {exc}") from exc
    if spec.space is None:
        _check_method_space(spec)
    for metric in (o.metric for o in spec.objectives):
        if metric not in objective_metrics():
            raise ConfigError(
                f"objectives: unknown metric {metric!r}; choose from {', '.join(objective_metrics())}"
            )
    build_sampler(spec)
    build_pruner(spec)


def objective_metrics() -> list[str]:
    """What a trial can be scored on: validation error plus the core's counts of the exported model."""
    from sparsebench.measure.counts import Summary

    return ["val_metric", *(f.name for f in dataclasses.fields(Summary))]


def _check_method_space(spec: SweepSpec) -> None:
    import optuna

    from sparsebench.registry import METHODS
    from sparsebench.run.plan import plan_run

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" line for a dry run
    try:
        trial = optuna.create_study(storage=optuna.storages.InMemoryStorage()).ask()
    finally:
        optuna.logging.set_verbosity(verbosity)
    method_cls = METHODS.get(spec.method)
    proposed = method_cls(method_cls.Config()).search_space(trial)
    if not proposed:
        example = f"{spec.method}_{spec.task}"
        start = f"start from the shipped spec {example}" if example in shipped_names() else LIST_HINT
        raise ConfigError(
            f"{spec.method} declares no search space; give the sweep a spec with a space ({start})"
        )
    try:
        plan_run(spec.task, spec.method, {**spec.overrides(), **proposed})
    except ConfigError as exc:
        raise ConfigError(f"{spec.method}.search_space proposes a bad override: {exc}") from exc
