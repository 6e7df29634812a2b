"""Strict ``section.field=value`` overrides and the flat run record (sparsebench/config.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import pytest

from sparsebench.config import (
    TrainConfig,
    apply_overrides,
    coerce,
    describe,
    flatten,
    option,
    parse_assignment,
    predating_values,
)
from sparsebench.errors import ConfigError
from sparsebench.registry import METHODS, TASKS
from sparsebench.run.plan import plan_run, recorded_overrides


@dataclass
class ToyConfig:
    threshold: float = option(3.0, "log alpha threshold")
    rounds: int = option(4, "rounds")
    train_mask: bool = option(True, "mask in training")
    variance_from: Literal["clamped_alpha", "sigma2"] = option("clamped_alpha", "variance")
    quality: tuple[float, ...] = option((1.5,), "per-layer quality")
    layers: list[str] = option(["fc1"], "layers")
    limit: int | None = option(None, "optional limit")
    label: str = option("x", "free text")


def sections() -> dict[str, object]:
    return {"train": TrainConfig(), "method": ToyConfig()}


@pytest.mark.parametrize(
    ("key", "raw", "expected"),
    [
        ("method.threshold", "2.5", 2.5),
        ("method.threshold", "2", 2.0),
        ("method.threshold", "-0.25", -0.25),
        ("method.rounds", "7", 7),
        ("method.train_mask", "false", False),
        ("method.train_mask", "True", True),
        ("method.variance_from", "sigma2", "sigma2"),
        ("method.quality", "[1, 2.5]", (1.0, 2.5)),
        ("method.quality", "0.5", (0.5,)),
        ("method.layers", "[fc1, fc2]", ["fc1", "fc2"]),
        ("method.limit", "null", None),
        ("method.limit", "12", 12),
        ("method.label", "123", "123"),
        ("train.optimizer", "sgd", "sgd"),
        ("train.lr", "0.001", 0.001),
    ],
)
def test_overrides_are_coerced_to_the_field_type(key: str, raw: str, expected: object) -> None:
    configs = sections()
    apply_overrides(configs, {key: raw})
    section, name = key.split(".")
    value = getattr(configs[section], name)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("key", "raw", "message"),
    [
        ("method.rounds", "1.5", "method.rounds must be an integer, got '1.5'"),
        ("method.rounds", "true", "method.rounds must be an integer"),
        ("method.threshold", "high", "method.threshold must be a number, got 'high'"),
        ("method.threshold", "true", "method.threshold must be a number"),
        ("method.train_mask", "1", "method.train_mask must be true or false, got '1'"),
        (
            "method.variance_from",
            "sigma",
            "method.variance_from must be one of clamped_alpha, sigma2, got 'sigma'",
        ),
        ("train.optimizer", "rmsprop", "train.optimizer must be one of adam, sgd"),
        ("method.quality", "[1, x]", "method.quality must be a number, got 'x'"),
        ("method.quality", "{a: 1}", "method.quality must be a list like"),
        ("method.limit", "many", "method.limit must be an integer"),
    ],
)
def test_bad_values_are_rejected_with_the_key(key: str, raw: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(sections(), {key: raw})
    assert message in str(info.value)


def test_unknown_field_names_the_key_and_lists_the_fields() -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(sections(), {"train.epoch": "3"})
    message = str(info.value)
    assert "'train.epoch'" in message and "epochs" in message and "batch_size" in message


@pytest.mark.parametrize("key", ["trian.epochs", "epochs", "train."])
def test_unknown_section_names_the_key_and_the_sections(key: str) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(sections(), {key: "3"})
    message = str(info.value)
    assert repr(key) in message and "train.<field>" in message and "method.<field>" in message


def test_a_rejected_override_leaves_the_value_alone() -> None:
    configs = sections()
    with pytest.raises(ConfigError):
        apply_overrides(configs, {"method.rounds": "many"})
    assert configs["method"].rounds == 4


def test_scientific_notation_is_a_number() -> None:
    configs = sections()
    apply_overrides(configs, {"train.lr": "1e-5", "method.threshold": "2e0"})
    assert configs["train"].lr == 1e-5 and configs["method"].threshold == 2.0


def test_python_values_pass_through_coerce() -> None:
    """Sweeps and checkpoints hand over Python values, not strings."""
    assert coerce("k", 3, float) == 3.0 and type(coerce("k", 3, float)) is float
    assert coerce("k", [1, 2], tuple[float, ...]) == (1.0, 2.0)
    with pytest.raises(ConfigError):
        coerce("k", True, int)


def test_parse_assignment() -> None:
    assert parse_assignment("train.epochs=20") == ("train.epochs", "20")
    assert parse_assignment(" method.label = a=b ") == ("method.label", "a=b")
    with pytest.raises(ConfigError, match="key=value"):
        parse_assignment("train.epochs")


def test_flatten_gives_plain_values_under_section_keys() -> None:
    flat = flatten(sections())
    assert flat["train.epochs"] == 200 and flat["method.threshold"] == 3.0
    assert flat["method.quality"] == [1.5]  # tuples become lists, as YAML and MLflow params show them
    assert flat["method.limit"] is None
    expected = {f"train.{f.name}" for f in dataclasses.fields(TrainConfig)}
    expected |= {f"method.{f.name}" for f in dataclasses.fields(ToyConfig)}
    assert set(flat) == expected


def test_mutable_defaults_are_not_shared() -> None:
    a, b = ToyConfig(), ToyConfig()
    a.layers.append("fc2")
    assert b.layers == ["fc1"]


def test_describe_lists_defaults_and_help() -> None:
    rows = {name: (default, text) for name, default, text in describe(ToyConfig)}
    assert rows["threshold"] == ("3.0", "log alpha threshold")
    assert rows["layers"] == ("['fc1']", "layers")


def all_plugin_configs() -> list[tuple[str, type]]:
    configs = [("train", TrainConfig)]
    configs += [(f"method:{e.name}", e.obj.Config) for e in METHODS.entries()]
    configs += [(f"task:{e.name}", e.obj.Config) for e in TASKS.entries()]
    return configs


@pytest.mark.parametrize(
    ("owner", "config_cls"), all_plugin_configs(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_flat_record_restores_every_registered_config(owner: str, config_cls: type) -> None:
    """A resumed run rebuilds its configs from the flat record; every plugin's fields must survive it."""
    original = config_cls()
    restored = config_cls()
    apply_overrides({"s": restored}, flatten({"s": original}))
    assert restored == original


@pytest.mark.parametrize(
    ("owner", "config_cls"), all_plugin_configs(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_config_field_has_help(owner: str, config_cls: type) -> None:
    """``sparsebench list --verbose`` shows it; fields are declared with ``option(default, help)``."""
    missing = [f.name for f in dataclasses.fields(config_cls) if not f.metadata.get("help")]
    assert missing == [], f"{owner}: fields without help text: {missing}"


def test_an_option_added_later_replays_old_records_with_its_predating_value() -> None:
    """A record written before ``method.score`` existed trained with group_hs's first rule (the
    median); replaying it must not pick up today's default (the mode)."""
    old_record = {"task.name": "lenet300_100", "method.name": "group_hs", "method.tau0": 1e-5}
    overrides = recorded_overrides("lenet300_100", "group_hs", old_record)
    # and it ran in fp32 on a CPU: bf16 autocast there (train.cpu_amp) came later still
    assert overrides == {"method.tau0": 1e-5, "method.score": "median", "train.cpu_amp": False}
    assert plan_run("lenet300_100", "group_hs", overrides).method.config.score == "median"
    new_record = {**old_record, "method.score": "mode"}
    assert recorded_overrides("lenet300_100", "group_hs", new_record)["method.score"] == "mode"
    assert plan_run("lenet300_100", "group_hs", {}).method.config.score == "mode"


def test_predating_values_name_only_the_options_a_record_lacks() -> None:
    @dataclass
    class Later:
        old: int = option(1, "there from the start")
        new: str = option("b", "added later", predating="a")

    assert predating_values({"method": Later}, {"method.old": 1}) == {"method.new": "a"}
    assert predating_values({"method": Later()}, {"method.new": "b"}) == {}
