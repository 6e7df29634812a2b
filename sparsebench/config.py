"""Typed, flat, printable run configuration and strict ``--set key=value`` overrides.

Each config is a dataclass whose fields carry a ``help`` string in their metadata; the whole
run is one record of three sections (``task``, ``method``, ``train``) that flattens to
``section.field`` keys, the same keys used for overrides, MLflow params and sweep spaces.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from sparsebench.errors import ConfigError

IDENTITY_KEYS = ("task.name", "method.name")
"""Flat config keys that name the plugins rather than set an option: never replayed as ``--set``."""


def option(
    default: Any,
    help: str,  # noqa: A002 - mirrors argparse
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    predating: Any = dataclasses.MISSING,
    **kwargs: Any,
) -> Any:
    """A dataclass field with a help string (shown by ``sparsebench list --verbose``) and its range.

    ``low``/``high`` bound a numeric field (``low_open`` excludes ``low`` itself, e.g. a learning
    rate must be > 0); ``check_ranges`` refuses values outside before any compute starts.
    ``predating`` is the value that reproduces what the code did before the option existed, for an
    option added later whose default changes behaviour: a run record written before it lacks the
    key, and a faithful replay of that record must use this value, not today's default.
    """
    metadata = {"help": help, "low": low, "high": high, "low_open": low_open}
    if predating is not dataclasses.MISSING:
        metadata["predating"] = predating
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


@dataclass
class TrainConfig:
    """The training recipe; each task supplies its paper's defaults."""

    epochs: int = option(200, "passes over the training split", low=1)
    batch_size: int = option(100, "examples per optimiser step", low=1)
    optimizer: Literal["adam", "sgd"] = option("adam", "optimiser")
    lr: float = option(1e-3, "base learning rate", low=0.0, low_open=True)
    lr_schedule: Literal["constant", "linear", "linear_to0", "inv", "step", "exponential_after"] = option(
        "constant",
        "constant; linear = constant for the first half then linearly to 0 (ars lr_linear); "
        "linear_to0 = linearly to 0 over all epochs; inv = Caffe's lr*(1+1e-4*it)^-0.75; "
        "step = multiply by lr_decay every lr_step epochs; exponential_after = constant for "
        "lr_step epochs, then multiply by lr_decay every epoch (Zaremba)",
    )
    lr_decay: float = option(
        0.5, "factor of the step and exponential_after schedules", low=0.0, low_open=True
    )
    lr_step: int = option(
        25, "epochs per step (step) or epochs before decay starts (exponential_after)", low=1
    )
    momentum: float = option(0.9, "SGD momentum (Adam beta1 stays 0.9)", low=0.0, high=1.0)
    weight_decay: float = option(0.0, "L2 penalty applied by the optimiser", low=0.0)
    grad_clip: float = option(0.0, "clip the global gradient norm to this value (0 = off)", low=0.0)
    seed: int = option(0, "seed of initialisation, noise and batch order", low=0)
    val_size: int = option(5000, "training examples held out for per-epoch validation (fixed split)", low=1)
    eval_batch_size: int = option(2000, "examples per evaluation batch", low=1)
    threads: int = option(0, "CPU threads for torch (0 = torch's default)", low=0)
    compile: Literal["auto", "always", "never"] = option(
        "auto", "torch.compile the method's fusable kernels; auto = only for runs of 5,000+ steps"
    )
    amp: bool = option(True, "bf16 autocast on CUDA (ignored on CPU)")
    cpu_amp: bool = option(
        False,
        "bf16 autocast on CPU too (oneDNN's AMX / AVX512-BF16 kernels where the CPU has them: LeNet-5 steps "
        "1.5-1.8x faster); off keeps CPU runs in fp32, as every CPU record made before it",
        predating=False,
    )


def fields_of(config: Any) -> list[dataclasses.Field]:
    return list(dataclasses.fields(config))


def field_help(f: dataclasses.Field) -> str:
    return f.metadata.get("help", "")


def flatten(sections: dict[str, Any]) -> dict[str, Any]:
    """``{"train": TrainConfig(...)}`` -> ``{"train.epochs": 200, ...}`` with plain values."""
    flat: dict[str, Any] = {}
    for prefix, config in sections.items():
        for f in dataclasses.fields(config):
            value = getattr(config, f.name)
            flat[f"{prefix}.{f.name}"] = list(value) if isinstance(value, tuple) else value
    return flat


def predating_values(sections: dict[str, Any], recorded: dict[str, Any]) -> dict[str, Any]:
    """``{key: value}`` for the options declared with ``predating`` that a recorded config lacks.

    ``sections`` maps a prefix to a config class or instance, as in ``flatten``; a record made
    before such an option existed ran with the option's ``predating`` value.
    """
    found = {}
    for prefix, config in sections.items():
        for f in dataclasses.fields(config):
            key = f"{prefix}.{f.name}"
            if "predating" in f.metadata and key not in recorded:
                found[key] = f.metadata["predating"]
    return found


def parse_assignment(text: str, flag: str = "--set", example: str = "train.epochs=20") -> tuple[str, str]:
    """``key=value`` from the command line; ``example`` is what the error shows for this flag."""
    if "=" not in text:
        raise ConfigError(f"{flag} expects key=value (e.g. {example}), got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def apply_overrides(sections: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Set ``section.field`` values in place, converting strings and checking types strictly."""
    for key, raw in overrides.items():
        section, _, name = key.partition(".")
        if section not in sections or not name:
            raise ConfigError(
                f"unknown config key {key!r}: keys look like "
                f"{', '.join(s + '.<field>' for s in sections)}; see `sparsebench list --verbose`"
            )
        config = sections[section]
        names = {f.name: f for f in dataclasses.fields(config)}
        if name not in names:
            raise ConfigError(f"unknown config key {key!r}; {section} fields are: {', '.join(names)}")
        hints = typing.get_type_hints(type(config))
        setattr(config, name, coerce(key, raw, hints[name]))


def coerce(key: str, raw: Any, annotation: Any) -> Any:
    """Convert a command-line string (or YAML value) to the field's declared type, or fail."""
    value = yaml.safe_load(raw) if isinstance(raw, str) else raw
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, args))}, got {raw!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(key, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {raw!r}")
    if origin in (tuple, list):
        if isinstance(value, (int, float, str)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list like [1, 2], got {raw!r}")
        item_type = args[0] if args else Any
        items = [coerce(key, v, item_type) for v in value]
        return tuple(items) if origin is tuple else items
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {raw!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be an integer, got {raw!r}")
    if annotation is float:
        number = _as_float(value)
        if number is None:
            raise ConfigError(f"{key} must be a number, got {raw!r}")
        if not math.isfinite(number):  # NaN slips through every comparison, then poisons a run
            raise ConfigError(f"{key} must be a finite number, got {raw!r}")
        return number
    if annotation is str:
        return str(value)
    if isinstance(value, annotation):
        return value
    raise ConfigError(f"{key} must be of type {annotation}, got {raw!r}")


def _as_float(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            return None
    return None


def check_ranges(sections: dict[str, Any]) -> None:
    """Refuse a value outside its field's declared range, or a float that is not finite.

    Runs on the resolved configuration (defaults, recipe and overrides together), before data is
    loaded, so a bad setting costs a line, not an epoch.
    """
    for prefix, config in sections.items():
        for f in dataclasses.fields(config):
            value = getattr(config, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            key = f"{prefix}.{f.name}"
            if not math.isfinite(value):
                raise ConfigError(f"{key} must be a finite number, got {value}")
            low, high = f.metadata.get("low"), f.metadata.get("high")
            if low is not None and (value < low or (f.metadata.get("low_open") and value == low)):
                bound = f"> {low}" if f.metadata.get("low_open") else f">= {low}"
                raise ConfigError(f"{key} must be {bound}, got {value}")
            if high is not None and value > high:
                raise ConfigError(f"{key} must be <= {high}, got {value}")


def describe(config_cls: type) -> list[tuple[str, str, str]]:
    """(name, default, help) rows for listing a config class."""
    rows = []
    for f in dataclasses.fields(config_cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "(required)"
        rows.append((f.name, repr(default), field_help(f)))
    return rows
