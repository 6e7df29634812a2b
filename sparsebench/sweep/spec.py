"""The sweep spec: a YAML file (or a shipped spec's name) becomes typed, frozen dataclasses.

A spec names everything that makes two sweeps comparable (task, method, fixed overrides, the
search space, objectives, number of trials, seeds, per-trial epochs), so that every method can be
tuned with the same budget. Validation is strict and names the offending key: a typo in a spec
would otherwise silently tune nothing, and a trial would only fail hours into a sweep. The file's
shape is checked by the pydantic models of ``sweep.schema``, its meaning (config keys, plugins,
optuna classes) by ``sweep.checks``; this module turns the checked file into a ``SweepSpec``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from sparsebench.errors import ConfigError, SparsebenchError
from sparsebench.sweep import schema
from sparsebench.sweep.checks import check_against_plugins, objective_metrics
from sparsebench.sweep.components import build_pruner, build_sampler, prunable
from sparsebench.sweep.shipped import not_found_message, resolve
from sparsebench.tracking import mask_uri

__all__ = [  # the names callers import from here, wherever they are defined
    "EXAMPLE", "Component", "Heartbeat", "Objective", "ParamSpec", "SweepSpec", "build_pruner",
    "build_sampler", "check_against_plugins", "default_spec", "load_spec", "objective_metrics",
    "prunable", "public_dict", "spec_from_dict",
]  # fmt: skip

PARAM_TYPES = ("float", "int", "log", "categorical")
SPEC_KEYS = tuple(schema.SpecFile.model_fields)


EXAMPLE = """\
task: lenet300_100
method: sparse_vd
fixed: {train.val_size: 5000}                # config overrides shared by every trial
space:                                       # omit to use the method's search_space()
  method.kl_weight: {type: log, low: 0.1, high: 10.0}
  method.threshold: {type: float, low: 1.0, high: 4.0}
  method.train_mask: [true, false]           # a list is a categorical choice
enqueue: [{method.kl_weight: 1.0, method.threshold: 3.0, method.train_mask: true}]
objectives: [{minimize: val_metric}]         # + {maximize: compression}: a Pareto front
sampler: {name: tpe, seed: 0}                # any optuna sampler, kwargs beside the name
pruner: {name: median, n_warmup_steps: 5}    # one val_metric objective only
n_trials: 40
seeds: 1                                     # or a list; objectives are means over seeds
budget: {epochs: 30, timeout: 36000}         # epochs per trial; seconds per worker
storage: postgresql://user:pw@host/db            # omit for ./mlruns/optuna-journal.log
heartbeat: {interval: 60, grace_period: 180, max_retry: 3}
"""
"""A spec with every key (``tests`` check that it validates)."""


@dataclass(frozen=True)
class ParamSpec:
    """One searched config field; ``log`` and ``step`` mean what they mean in optuna's suggest API."""

    key: str
    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(
                self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def extremes(self) -> list[Any]:
        """Values that must all be valid settings of the field (checked against the config types)."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]

    def contains(self, value: Any) -> bool:
        if self.type == "categorical":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return self.low <= value <= self.high

    def to_dict(self) -> dict[str, Any]:
        if self.type == "categorical":
            return {"type": "categorical", "choices": list(self.choices)}
        out: dict[str, Any] = {"type": self.type, "low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out


@dataclass(frozen=True)
class Objective:
    metric: str
    """``val_metric`` (validation split, exported model) or a field of ``metrics.Summary``."""
    direction: Literal["minimize", "maximize"]


@dataclass(frozen=True)
class Component:
    """An optuna sampler or pruner by name, with its constructor's keyword arguments."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Heartbeat:
    """Worker liveness for RDB storages (optuna's heartbeat): a silent trial is failed and retried."""

    interval: int = 60
    grace_period: int | None = None
    """Seconds without a heartbeat before a trial counts as dead (optuna: 2 x interval when unset)."""
    max_retry: int | None = 3


@dataclass(frozen=True)
class SweepSpec:
    """One sweep: what ``EXAMPLE`` shows in YAML, validated."""

    task: str
    method: str
    study: str
    n_trials: int
    objectives: tuple[Objective, ...] = (Objective("val_metric", "minimize"),)
    fixed: dict[str, Any] = field(default_factory=dict)
    space: tuple[ParamSpec, ...] | None = None
    """None: the method plugin's own ``search_space``."""
    enqueue: tuple[dict[str, Any], ...] = ()
    """Parameter sets tried first (e.g. the paper's settings), through ``study.enqueue_trial``."""
    sampler: Component | None = None
    pruner: Component | None = None
    seeds: tuple[int, ...] = (0,)
    epochs: int | None = None
    timeout: float | None = None
    """Seconds after which a worker starts no new trial."""
    storage: str | None = None
    heartbeat: Heartbeat = Heartbeat()
    description: str = ""

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def overrides(self) -> dict[str, Any]:
        """Config overrides every trial shares (the fixed ones plus the epoch budget)."""
        out = dict(self.fixed)
        if self.epochs is not None:
            out["train.epochs"] = self.epochs
        return out

    def to_dict(self) -> dict[str, Any]:
        """A spec file equivalent to this spec (workers of ``--workers N`` read it back)."""
        data: dict[str, Any] = {
            "task": self.task,
            "method": self.method,
            "study": self.study,
            "n_trials": self.n_trials,
            "objectives": [{o.direction: o.metric} for o in self.objectives],
            "fixed": dict(self.fixed),
            "seeds": list(self.seeds),
            "budget": {"epochs": self.epochs, "timeout": self.timeout},
            "storage": self.storage,
            "heartbeat": dataclasses.asdict(self.heartbeat),
        }
        if self.description:
            data["description"] = self.description
        if self.space is not None:
            data["space"] = {p.key: p.to_dict() for p in self.space}
        if self.enqueue:
            data["enqueue"] = [dict(e) for e in self.enqueue]
        for name in ("sampler", "pruner"):
            component = getattr(self, name)
            if component is not None:
                data[name] = {"name": component.name, **component.kwargs}
        return data


def public_dict(spec: SweepSpec) -> dict[str, Any]:
    """``spec.to_dict()`` with the storage URL's password masked: what is logged or stored, never used."""
    data = spec.to_dict()
    if data["storage"]:
        data["storage"] = mask_uri(data["storage"])
    return data


def load_spec(target: str | Path) -> SweepSpec:
    """Read and validate a spec file or shipped spec; every problem is a ConfigError naming it and the key."""
    label, text = resolve(target)
    if text is None:
        raise ConfigError(not_found_message(target))
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{label}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from exc
    try:
        return spec_from_dict(data)
    except SparsebenchError as exc:
        raise type(exc)(f"{label}: {exc}") from exc


def default_spec(method: str, task: str, n_trials: int = 20) -> SweepSpec:
    """The spec of ``sparsebench sweep --method M --task T``: the method's own search space.

    Like the shipped specs it looks for the Pareto front of validation error and compression,
    since either number alone rewards a method for giving up the other.
    """
    objectives = [{"minimize": "val_metric"}, {"maximize": "compression"}]
    return spec_from_dict({"method": method, "task": task, "n_trials": n_trials, "objectives": objectives})


def spec_from_dict(data: Any) -> SweepSpec:
    """A validated spec from the mapping a spec file holds (keys left null mean their default)."""
    if not isinstance(data, dict):
        raise ConfigError("a sweep spec is a YAML mapping with at least task, method and n_trials")
    raw = schema.validate(schema.SpecFile, {k: v for k, v in data.items() if v is not None})
    fixed = dict(raw.fixed)
    seeds = _seeds(raw.seeds, fixed)
    fixed.pop("train.seed", None)  # the seeds own it
    if raw.budget.epochs is not None and "train.epochs" in fixed:
        raise ConfigError("train.epochs is set twice (fixed and budget.epochs); keep budget.epochs")
    space = None if raw.space is None else tuple(_param(key, value) for key, value in raw.space.items())
    heartbeat = raw.heartbeat
    spec = SweepSpec(
        task=raw.task,
        method=raw.method,
        study=raw.study or f"{raw.method}-{raw.task}",
        n_trials=raw.n_trials,
        objectives=_objectives(raw.objectives),
        fixed=fixed,
        space=space,
        enqueue=_enqueue(raw.enqueue, space),
        sampler=_component(raw.sampler, "sampler"),
        pruner=_component(raw.pruner, "pruner"),
        seeds=seeds,
        epochs=raw.budget.epochs,
        timeout=raw.budget.timeout,
        storage=raw.storage,
        heartbeat=Heartbeat(heartbeat.interval, heartbeat.grace_period, heartbeat.max_retry),
        description=str(raw.description or ""),
    )
    check_against_plugins(spec)
    return spec


def _objectives(value: Any) -> tuple[Objective, ...]:
    if value is None:
        return (Objective("val_metric", "minimize"),)
    if isinstance(value, dict):
        value = [{k: v} for k, v in value.items()]
    if not isinstance(value, list) or not value:
        raise ConfigError("objectives must be a list like [{minimize: val_metric}, {maximize: compression}]")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or len(item) != 1:
            raise ConfigError(f"objectives[{i}] must be one `minimize: METRIC` or `maximize: METRIC`")
        ((direction, metric),) = item.items()
        if direction not in ("minimize", "maximize"):
            raise ConfigError(f"objectives[{i}]: unknown key {direction!r}; use minimize or maximize")
        metric = schema.validate(schema.TEXT, metric, f"objectives[{i}].{direction}")
        if metric.startswith("test"):
            raise ConfigError(
                f"objectives[{i}]: {metric} is the test split, which is reported but never used to "
                "choose; optimise val_metric"
            )
        out.append(Objective(metric, direction))
    if len({o.metric for o in out}) != len(out):
        raise ConfigError("objectives: a metric appears twice")
    return tuple(out)


def _param(key: str, raw: Any) -> ParamSpec:
    """One searched key; a list is shorthand for a categorical choice, ``log`` for a log float range."""
    where = f"space.{key}"
    if isinstance(raw, list):
        raw = {"type": "categorical", "choices": raw}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping like {{type: float, low: 0, high: 1}} or a list")
    kind = raw.get("type")
    if kind not in PARAM_TYPES:
        raise ConfigError(f"{where}.type must be one of {', '.join(PARAM_TYPES)}, got {kind!r}")
    if kind == "categorical":
        return ParamSpec(
            key, "categorical", choices=tuple(schema.validate(schema.CategoricalParam, raw, where).choices)
        )
    checked = schema.validate(schema.RangeParam, raw, where)
    number = int if kind == "int" else float
    step = None if checked.step is None else number(checked.step)
    log = kind == "log" or checked.log
    return ParamSpec(
        key, "int" if kind == "int" else "float", number(checked.low), number(checked.high), log, step
    )


def _enqueue(value: list[dict[str, Any]], space: tuple[ParamSpec, ...] | None) -> tuple[dict[str, Any], ...]:
    keys = None if space is None else {p.key for p in space}
    for i, item in enumerate(value):
        for key, setting in item.items():
            if keys is not None and key not in keys:
                raise ConfigError(f"enqueue[{i}].{key} is not in space; enqueue only sets searched keys")
            param = next((p for p in space or () if p.key == key), None)
            if param is not None and not param.contains(setting):
                raise ConfigError(f"enqueue[{i}].{key} = {setting!r} lies outside space.{key}")
    return tuple(dict(item) for item in value)


def _component(value: Any, what: str) -> Component | None:
    if value is None:
        return None
    if isinstance(value, str):
        return Component(schema.validate(schema.TEXT, value, f"{what}.name"))
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a name or a mapping like {{name: tpe, seed: 0}}, got {value!r}")
    if "name" not in value:
        raise ConfigError(f"{what}.name is required (e.g. {what}: {{name: tpe, seed: 0}})")
    kwargs = schema.validate(schema.OPTIONS, {k: v for k, v in value.items() if k != "name"}, what)
    return Component(schema.validate(schema.TEXT, value["name"], f"{what}.name"), kwargs)


def _seeds(value: Any, fixed: dict[str, Any]) -> tuple[int, ...]:
    if isinstance(value, list):
        if "train.seed" in fixed:
            raise ConfigError("seeds lists the seeds itself; remove train.seed from fixed")
        seeds = tuple(schema.validate(schema.INDEX, v, f"seeds[{i}]") for i, v in enumerate(value))
        if not seeds or len(set(seeds)) != len(seeds):
            raise ConfigError("seeds must be a count or a non-empty list of distinct seeds")
        return seeds
    count = schema.validate(schema.COUNT, value, "seeds")
    base = schema.validate(schema.INDEX, fixed.get("train.seed", 0), "fixed.train.seed")
    return tuple(range(base, base + count))
