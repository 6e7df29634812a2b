"""The shape of a sweep spec file as pydantic models: types, ranges and unknown keys.

Only the file's shape is checked here (a number is finite and in range, a key is known); whether a
key names a config field, a registered method or an optuna class is checked by ``sweep.checks`` with
the code a run uses. Every problem becomes one ConfigError that names the key as the user wrote it
(``budget.timeout``, ``space.train.lr.low``, ``enqueue[0].train.lr``), because a typo or a NaN in a spec
would otherwise tune nothing, or make every trial fail hours into a sweep.
"""

from __future__ import annotations

import math
import typing
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from sparsebench.errors import ConfigError


def _number_like(value: Any) -> Any:
    """Refuse booleans (pydantic would read true as 1); read numeric strings as numbers.

    PyYAML reads ``1e-4`` (no dot) as a string, so a spec must not care whether a number has a dot.
    """
    if isinstance(value, bool):
        raise ValueError(f"must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _finite_if_number(value: Any) -> Any:
    """A config value (fixed, enqueued, a choice): NaN or infinity passes config types, then ruins trials."""
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError(f"must be a finite number, got {value!r}")
    return value


def _scalar(value: Any) -> Any:
    if not (value is None or isinstance(value, (bool, int, float, str))):
        raise ValueError(f"must be a number, string, boolean or null, got {value!r}")
    return _finite_if_number(value)


Number = Annotated[float, BeforeValidator(_number_like), Field(allow_inf_nan=False)]
Positive = Annotated[float, BeforeValidator(_number_like), Field(allow_inf_nan=False, gt=0)]
Count = Annotated[int, BeforeValidator(_number_like), Field(ge=1)]
Index = Annotated[int, BeforeValidator(_number_like), Field(ge=0)]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
ConfigValue = Annotated[Any, AfterValidator(_finite_if_number)]
Choice = Annotated[Any, AfterValidator(_scalar)]

COUNT = TypeAdapter(Count)
INDEX = TypeAdapter(Index)
TEXT = TypeAdapter(Text)
OPTIONS = TypeAdapter(dict[str, ConfigValue])


class Section(BaseModel):
    """A mapping in the spec: unknown keys are errors, since a misspelt key would silently do nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Budget(Section):
    epochs: Count | None = None
    """Epochs per trial (the task's recipe when unset)."""
    timeout: Positive | None = None
    """Seconds after which a worker starts no new trial."""


class HeartbeatSection(Section):
    interval: Count = 60
    grace_period: Count | None = None
    max_retry: Index | None = 3

    @model_validator(mode="after")
    def _grace_exceeds_interval(self) -> HeartbeatSection:
        if self.grace_period is not None and self.grace_period <= self.interval:
            raise ValueError("grace_period must exceed heartbeat.interval, or a live worker looks dead")
        return self


class CategoricalParam(Section):
    type: Literal["categorical"]
    choices: Annotated[list[Choice], Field(min_length=1)]

    @model_validator(mode="after")
    def _distinct(self) -> CategoricalParam:
        if len({repr(c) for c in self.choices}) != len(self.choices):
            raise ValueError("choices lists a value twice")
        return self


class RangeParam(Section):
    type: Literal["float", "int", "log"]
    low: Number
    high: Number
    log: StrictBool = False
    step: Positive | None = None

    @model_validator(mode="after")
    def _consistent(self) -> RangeParam:
        integer = self.type == "int"
        for name in ("low", "high", "step"):
            value = getattr(self, name)
            if integer and value is not None and value != int(value):
                raise ValueError(f"{name} must be an integer for an int range, got {value}")
        if self.low > self.high:
            raise ValueError(f"empty range, low {self.low:g} > high {self.high:g}")
        log = self.type == "log" or self.log
        if log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low:g}")
        if self.step is not None and log and (not integer or self.step != 1):
            raise ValueError(
                "step cannot be combined with a log float range, and must be 1 for a log int range"
            )
        return self


class SpecFile(Section):
    """The top level of a spec file, in the order the keys are listed in messages."""

    description: Any = ""
    task: Text
    method: Text
    study: Text | None = None
    fixed: dict[str, ConfigValue] = {}
    space: dict[str, Any] | None = None
    enqueue: list[dict[str, ConfigValue]] = []
    objectives: Any = None
    sampler: Any = None
    pruner: Any = None
    n_trials: Count
    seeds: Any = 1
    budget: Budget = Budget()
    storage: Text | None = None
    heartbeat: HeartbeatSection = HeartbeatSection()


def validate(schema: type[BaseModel] | TypeAdapter, value: Any, where: str = "") -> Any:
    """``value`` checked against ``schema``; the first problem as a ConfigError naming its key."""
    try:
        if isinstance(schema, TypeAdapter):
            return schema.validate_python(value)
        return schema.model_validate(value)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        # An unknown key first: a misspelt ``hgih`` explains the ``high`` reported missing beside it.
        error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        model = schema if isinstance(schema, type) else None
        raise ConfigError(describe(error, model, where)) from None


MESSAGES = {
    "missing": "{where} is required",
    "finite_number": "{where} must be a finite number, got {value!r}",
    "float_parsing": "{where} must be a finite number, got {value!r}",
    "float_type": "{where} must be a finite number, got {value!r}",
    "int_parsing": "{where} must be an integer, got {value!r}",
    "int_type": "{where} must be an integer, got {value!r}",
    "int_from_float": "{where} must be an integer, got {value!r}",
    "greater_than_equal": "{where} must be at least {ge}, got {value!r}",
    "greater_than": "{where} must be greater than {gt}, got {value!r}",
    "bool_type": "{where} must be true or false, got {value!r}",
    "bool_parsing": "{where} must be true or false, got {value!r}",
    "string_type": "{where} must be a non-empty string, got {value!r}",
    "string_too_short": "{where} must be a non-empty string, got {value!r}",
    "too_short": "{where} must be a non-empty list",
    "list_type": "{where} must be a list, got {value!r}",
    "dict_type": "{where} must be a mapping of key: value, got {value!r}",
    "model_type": "{where} must be a mapping of key: value, got {value!r}",
    "model_attributes_type": "{where} must be a mapping of key: value, got {value!r}",
    "literal_error": "{where} must be one of {expected}, got {value!r}",
}


def describe(error: dict[str, Any], model: type[BaseModel] | None, prefix: str) -> str:
    """One pydantic error as one sentence that starts with the key, as written in the spec."""
    loc, kind, value = tuple(error["loc"]), error["type"], error.get("input")
    ctx = error.get("ctx") or {}
    if "[key]" in loc:  # pydantic's location of a bad mapping key is (..., key, "[key]")
        at = loc.index("[key]")
        return f"{_where(loc[: at - 1], prefix)}: keys must be strings, got {loc[at - 1]!r}"
    where = _where(loc, prefix)
    if kind == "extra_forbidden":
        allowed = _fields_at(model, loc[:-1]) if model is not None else []
        return f"unknown key {where}" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
    if kind in MESSAGES:
        return MESSAGES[kind].format(where=where, value=value, **ctx)
    message = str(ctx.get("error", error["msg"]))
    if not where:
        return message
    return f"{where} {message}" if message.startswith(("must ", "is ")) else f"{where}: {message}"


def _where(loc: tuple[Any, ...], prefix: str) -> str:
    text = prefix
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _fields_at(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    """The keys allowed in the mapping at ``path`` (a nested section) of ``model``."""
    for part in path:
        if isinstance(part, int):  # an item of a list of sections (a campaign's rows)
            continue
        annotation = model.model_fields[part].annotation
        model = next(
            a
            for a in (annotation, *typing.get_args(annotation))
            if isinstance(a, type) and issubclass(a, BaseModel)
        )
    return list(model.model_fields)
