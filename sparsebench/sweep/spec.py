"""The sweep spec: a YAML file checked against typed dataclasses before any trial runs.

A spec names everything that makes two sweeps comparable (task, method, fixed overrides, the
search space, objectives, number of trials, seeds, per-trial epochs), so that every method can be
tuned with the same budget. Validation is strict and names the offending key: a typo in a spec
would otherwise silently tune nothing, and a trial would only fail hours into a sweep.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from sparsebench.errors import ConfigError, SparsebenchError

PARAM_TYPES = ("float", "int", "log", "categorical")
SPEC_KEYS = (
    "description", "task", "method", "study", "fixed", "space", "enqueue", "objectives", "sampler",
    "pruner", "n_trials", "seeds", "budget", "storage", "heartbeat",
)  # fmt: skip


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
storage: postgresql+psycopg2://user:pw@host/db   # omit for ./mlruns/optuna-journal.log
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


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a spec file; every problem is a ConfigError naming the file and key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep spec {path} not found; the shipped specs are in sweeps/*.yaml")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from exc
    try:
        return spec_from_dict(data)
    except SparsebenchError as exc:
        raise type(exc)(f"{path}: {exc}") from exc


def default_spec(method: str, task: str, n_trials: int = 20) -> SweepSpec:
    """The spec of ``sparsebench sweep --method M --task T``: the method's own search space.

    Like the shipped specs it looks for the Pareto front of validation error and compression,
    since either number alone rewards a method for giving up the other.
    """
    objectives = [{"minimize": "val_metric"}, {"maximize": "compression"}]
    return spec_from_dict({"method": method, "task": task, "n_trials": n_trials, "objectives": objectives})


def spec_from_dict(data: Any) -> SweepSpec:
    if not isinstance(data, dict):
        raise ConfigError("a sweep spec is a YAML mapping with at least task, method and n_trials")
    _known(data, SPEC_KEYS, "")
    for key in ("task", "method", "n_trials"):
        if data.get(key) is None:
            raise ConfigError(f"{key} is required")
    task, method = _string(data["task"], "task"), _string(data["method"], "method")
    objectives = _objectives(data.get("objectives"))
    fixed = _mapping(data.get("fixed") or {}, "fixed")
    seeds = _seeds(data.get("seeds", 1), fixed)
    fixed.pop("train.seed", None)  # the seeds own it
    space = None if data.get("space") is None else _space(data["space"])
    budget = _mapping(data.get("budget") or {}, "budget")
    _known(budget, ("epochs", "timeout"), "budget.")
    epochs = None if budget.get("epochs") is None else _int(budget["epochs"], "budget.epochs", minimum=1)
    timeout = None if budget.get("timeout") is None else _number(budget["timeout"], "budget.timeout")
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"budget.timeout must be a positive number of seconds, got {timeout}")
    if epochs is not None and "train.epochs" in fixed:
        raise ConfigError("train.epochs is set twice (fixed and budget.epochs); keep budget.epochs")
    spec = SweepSpec(
        task=task,
        method=method,
        study=_string(data.get("study") or f"{method}-{task}", "study"),
        n_trials=_int(data["n_trials"], "n_trials", minimum=1),
        objectives=objectives,
        fixed=fixed,
        space=space,
        enqueue=_enqueue(data.get("enqueue") or [], space),
        sampler=_component(data.get("sampler"), "sampler"),
        pruner=_component(data.get("pruner"), "pruner"),
        seeds=seeds,
        epochs=epochs,
        timeout=timeout,
        storage=None if data.get("storage") is None else _string(data["storage"], "storage"),
        heartbeat=_heartbeat(data.get("heartbeat") or {}),
        description=str(data.get("description") or ""),
    )
    check_against_plugins(spec)
    return spec


def check_against_plugins(spec: SweepSpec) -> None:
    """Resolve names and check every key and value with the same code that configures a run."""
    from sparsebench.run.runner import plan_run

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
    from sparsebench.run.runner import plan_run

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" line for a dry run
    try:
        trial = optuna.create_study(storage=optuna.storages.InMemoryStorage()).ask()
    finally:
        optuna.logging.set_verbosity(verbosity)
    method_cls = METHODS.get(spec.method)
    proposed = method_cls(method_cls.Config()).search_space(trial)
    if not proposed:
        raise ConfigError(
            f"{spec.method} declares no search space; give the spec a space "
            f"(e.g. sweeps/{spec.method}_{spec.task}.yaml)"
        )
    try:
        plan_run(spec.task, spec.method, {**spec.overrides(), **proposed})
    except ConfigError as exc:
        raise ConfigError(f"{spec.method}.search_space proposes a bad override: {exc}") from exc


def build_sampler(spec: SweepSpec, seed_salt: tuple[int, ...] = ()) -> Any:
    """The spec's optuna sampler, or None for optuna's default (TPE, which also handles several objectives).

    ``seed_salt`` varies a seeded sampler between workers and between restarts: the same seed in
    two workers (or in a resumed sweep) would otherwise propose the same parameters again.
    """
    import optuna
    import optuna.samplers as module

    if spec.sampler is None:
        return None
    kwargs = dict(spec.sampler.kwargs)
    if seed_salt and kwargs.get("seed") is not None:
        import numpy as np

        kwargs["seed"] = int(np.random.SeedSequence([int(kwargs["seed"]), *seed_salt]).generate_state(1)[0])
    cls = _find_class(module, optuna.samplers.BaseSampler, spec.sampler.name, "sampler")
    return _construct(cls, kwargs, "sampler")


def prunable(spec: SweepSpec) -> bool:
    """Trials report their validation metric per epoch, so only a single val_metric objective prunes."""
    return not spec.multi_objective and spec.objectives[0].metric == "val_metric"


def build_pruner(spec: SweepSpec) -> Any:
    """The spec's optuna pruner; optuna's MedianPruner by default, none when nothing can be pruned."""
    import optuna
    import optuna.pruners as module

    explicit = spec.pruner is not None and _normal(spec.pruner.name) not in ("nop", "none")
    if not prunable(spec):
        if explicit:
            raise ConfigError(
                "pruner: only a single val_metric objective can be pruned (optuna cannot prune "
                "multi-objective studies); remove the pruner key"
            )
        return optuna.pruners.NopPruner()
    if spec.pruner is None:
        return optuna.pruners.MedianPruner()
    if not explicit:
        return optuna.pruners.NopPruner()
    cls = _find_class(module, optuna.pruners.BasePruner, spec.pruner.name, "pruner")
    return _construct(cls, dict(spec.pruner.kwargs), "pruner")


def _find_class(module: Any, base: type, name: str, what: str) -> type:
    classes = {
        _normal(n): obj
        for n, obj in vars(module).items()
        if inspect.isclass(obj) and issubclass(obj, base) and obj is not base and not n.startswith("_")
    }
    key = _normal(name)
    if key not in classes:
        known = sorted(c.__name__ for c in classes.values())
        raise ConfigError(f"{what}.name: unknown optuna {what} {name!r}; choose from {', '.join(known)}")
    return classes[key]


def _construct(cls: type, kwargs: dict[str, Any], what: str) -> Any:
    accepted = inspect.signature(cls.__init__).parameters
    for key in kwargs:
        if key not in accepted or key == "self":
            raise ConfigError(f"{what}.{key}: {cls.__name__} takes no argument {key!r}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what}: {cls.__name__}({kwargs}) failed: {exc}") from exc


def _normal(name: str) -> str:
    """``TPESampler``, ``tpe``, ``nsga-ii`` and ``MedianPruner`` all name their class."""
    key = name.lower().replace("_", "").replace("-", "")
    for suffix in ("sampler", "pruner"):
        key = key.removesuffix(suffix)
    return key


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
        metric = _string(metric, f"objectives[{i}].{direction}")
        if metric.startswith("test"):
            raise ConfigError(
                f"objectives[{i}]: {metric} is the test split, which is reported but never used to "
                "choose; optimise val_metric"
            )
        out.append(Objective(metric, direction))
    if len({o.metric for o in out}) != len(out):
        raise ConfigError("objectives: a metric appears twice")
    return tuple(out)


def _space(value: Any) -> tuple[ParamSpec, ...]:
    params = []
    for key, raw in _mapping(value, "space").items():
        where = f"space.{key}"
        if isinstance(raw, list):  # shorthand: a list is a categorical choice
            raw = {"type": "categorical", "choices": raw}
        raw = _mapping(raw, where)
        kind = raw.get("type")
        if kind not in PARAM_TYPES:
            raise ConfigError(f"{where}.type must be one of {', '.join(PARAM_TYPES)}, got {kind!r}")
        if kind == "categorical":
            _known(raw, ("type", "choices"), f"{where}.")
            choices = raw.get("choices")
            if not isinstance(choices, list) or not choices:
                raise ConfigError(f"{where}.choices must be a non-empty list")
            if len({repr(c) for c in choices}) != len(choices):
                raise ConfigError(f"{where}.choices lists a value twice")
            if not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
                raise ConfigError(f"{where}.choices may hold only numbers, strings, booleans and null")
            params.append(ParamSpec(key, "categorical", choices=tuple(choices)))
            continue
        _known(raw, ("type", "low", "high", "log", "step"), f"{where}.")
        for bound in ("low", "high"):
            if raw.get(bound) is None:
                raise ConfigError(f"{where}.{bound} is required for a {kind} range")
        integer = kind == "int"
        low = _number(raw["low"], f"{where}.low", integer)
        high = _number(raw["high"], f"{where}.high", integer)
        log = kind == "log" or _bool(raw.get("log", False), f"{where}.log")
        step = None if raw.get("step") is None else _number(raw["step"], f"{where}.step", integer)
        if low > high:
            raise ConfigError(f"{where}: empty range, low {low} > high {high}")
        if log and low <= 0:
            raise ConfigError(f"{where}: a log range needs low > 0, got {low}")
        if step is not None and (step <= 0 or (log and not integer)):
            raise ConfigError(f"{where}.step must be positive and cannot be combined with a log float range")
        if step is not None and integer and log and step != 1:
            raise ConfigError(f"{where}.step must be 1 for a log int range")
        params.append(ParamSpec(key, "int" if integer else "float", low, high, log, step))
    return tuple(params)


def _enqueue(value: Any, space: tuple[ParamSpec, ...] | None) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list):
        raise ConfigError("enqueue must be a list of {config key: value} mappings")
    keys = None if space is None else {p.key for p in space}
    out = []
    for i, item in enumerate(value):
        item = _mapping(item, f"enqueue[{i}]")
        for key, value in item.items():
            if keys is not None and key not in keys:
                raise ConfigError(f"enqueue[{i}].{key} is not in space; enqueue only sets searched keys")
            param = next((p for p in space or () if p.key == key), None)
            if param is not None and not param.contains(value):
                raise ConfigError(f"enqueue[{i}].{key} = {value!r} lies outside space.{key}")
        out.append(item)
    return tuple(out)


def _component(value: Any, what: str) -> Component | None:
    if value is None:
        return None
    if isinstance(value, str):
        return Component(value)
    value = _mapping(value, what)
    if "name" not in value:
        raise ConfigError(f"{what}.name is required (e.g. {what}: {{name: tpe, seed: 0}})")
    kwargs = {k: v for k, v in value.items() if k != "name"}
    return Component(_string(value["name"], f"{what}.name"), kwargs)


def _seeds(value: Any, fixed: dict[str, Any]) -> tuple[int, ...]:
    if isinstance(value, list):
        if "train.seed" in fixed:
            raise ConfigError("seeds lists the seeds itself; remove train.seed from fixed")
        seeds = tuple(_int(v, f"seeds[{i}]", minimum=0) for i, v in enumerate(value))
        if not seeds or len(set(seeds)) != len(seeds):
            raise ConfigError("seeds must be a count or a non-empty list of distinct seeds")
        return seeds
    count = _int(value, "seeds", minimum=1)
    base = _int(fixed.get("train.seed", 0), "fixed.train.seed", minimum=0)
    return tuple(range(base, base + count))


def _heartbeat(value: Any) -> Heartbeat:
    value = _mapping(value, "heartbeat")
    _known(value, ("interval", "grace_period", "max_retry"), "heartbeat.")
    interval = _int(value.get("interval", 60), "heartbeat.interval", minimum=1)
    grace = value.get("grace_period")
    grace = None if grace is None else _int(grace, "heartbeat.grace_period", minimum=1)
    if grace is not None and grace <= interval:
        raise ConfigError(
            "heartbeat.grace_period must exceed heartbeat.interval, or a live worker looks dead"
        )
    retry = value.get("max_retry", 3)
    return Heartbeat(
        interval, grace, None if retry is None else _int(retry, "heartbeat.max_retry", minimum=0)
    )


def _known(data: dict[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
    for key in data:
        if key not in allowed:
            raise ConfigError(f"unknown key {prefix}{key}; allowed: {', '.join(allowed)}")


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping of key: value, got {value!r}")
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(f"{where}: keys must be strings, got {key!r}")
    return dict(value)


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where} must be a non-empty string, got {value!r}")
    return value.strip()


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    return value


def _number(value: Any, where: str, integer: bool = False) -> Any:
    # PyYAML reads 1e-4 (no dot) as a string, so numeric strings are accepted too.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{where} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    if integer:
        if float(value) != int(value):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return int(value)
    return float(value)


def _int(value: Any, where: str, minimum: int) -> int:
    number = _number(value, where, integer=True)
    if number < minimum:
        raise ConfigError(f"{where} must be at least {minimum}, got {number}")
    return number
