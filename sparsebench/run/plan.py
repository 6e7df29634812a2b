"""From what a user asked for to a resolved run: plugin instances and every configuration value."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from sparsebench.config import (
    IDENTITY_KEYS,
    TrainConfig,
    apply_overrides,
    check_ranges,
    flatten,
    predating_values,
)
from sparsebench.env import Env
from sparsebench.errors import ConfigError
from sparsebench.method import SparsityMethod
from sparsebench.registry import METHODS, TASKS
from sparsebench.task import Task, resolve_recipe


@dataclass
class RunRequest:
    """What the user asked for; everything else comes from the task's recipe and the configs."""

    task: str
    method: str
    overrides: dict[str, Any] = field(default_factory=dict)
    env: Env = field(default_factory=Env.resolve)
    """Device, data, tracking store, experiment and checkpoint folder, resolved once by the command."""
    resume: str | None = None
    init_from: str | None = None
    stop_after: int | None = None
    """Stop (resumably) once this many epochs are done; the run can be continued with --resume."""
    keep_checkpoint: bool = False
    """Keep the last checkpoint after the run finishes (``--refinish`` needs it)."""
    record_path: str | None = None
    """Also write the finished run's record (JSON) to this file."""
    progress: bool = True
    parent_run_id: str | None = None
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    on_epoch: Callable[[int, float], None] | None = None
    """Called with (epoch, validation metric) after each epoch; sweeps report to optuna here."""


@dataclass
class RunResult:
    """How a run ended and, when it finished, the numbers of its row."""

    run_id: str
    status: str
    val_metric: float = math.nan
    test_metric: float = math.nan
    summary: dict[str, float] = field(default_factory=dict)
    row: str = ""
    table: Any = None
    record: Any = None
    """The run record (``sparsebench.record.RunRecord``) of a finished run."""


@dataclass
class Plan:
    """A resolved run: plugin instances and the full configuration."""

    task: Task
    method: SparsityMethod
    train: TrainConfig

    @property
    def sections(self) -> dict[str, Any]:
        return {"task": self.task.config, "method": self.method.config, "train": self.train}

    def flat_config(self) -> dict[str, Any]:
        return {"task.name": self.task.name, "method.name": self.method.name, **flatten(self.sections)}


def plan_run(task_name: str, method_name: str, overrides: dict[str, Any]) -> Plan:
    """Look up the plugins and apply overrides; every error here is the user's to fix."""
    task_cls = TASKS.get(task_name)
    method_cls = METHODS.get(method_name)
    task = task_cls(task_cls.Config())
    method = method_cls(method_cls.Config())
    # The recipe depends on the task's options (a PTB preset has its own epochs and learning rate)
    # and may depend on the method's, so those are set first; train.* then edits that recipe.
    plugin_sections = {"task": task.config, "method": method.config}
    early = {k: v for k, v in overrides.items() if k.partition(".")[0] in plugin_sections}
    apply_overrides(plugin_sections, early)
    plan = Plan(task, method, resolve_recipe(task, method))
    apply_overrides(plan.sections, {k: v for k, v in overrides.items() if k not in early})
    check_ranges(plan.sections)
    return plan


def recorded_overrides(task_name: str, method_name: str, config: dict[str, Any]) -> dict[str, Any]:
    """A recorded configuration as overrides that replay it whatever today's defaults are.

    Every recorded key, plus the ``predating`` value of each option added since the record was
    written (a key the record lacks ran with what the code did before the option existed).
    """
    sections = {"task": TASKS.get(task_name).Config, "method": METHODS.get(method_name).Config}
    sections["train"] = TrainConfig
    recorded = {k: v for k, v in config.items() if k not in IDENTITY_KEYS}
    return {**recorded, **predating_values(sections, recorded)}


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when torch sees it; an explicit CUDA request without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda[:N], got {name!r}")
    return torch.device(name)


def configure_cpu(threads: int) -> None:
    """Set torch's CPU threads (0 keeps torch's default) and flush denormal floats to zero.

    Why the flush: a masked weight gets a zero gradient, so Adam's moments for it decay
    geometrically (0.9 and 0.999 per step) through the denormal range, where x86 arithmetic is
    about 10x slower. Over a 200-epoch LeNet-300-100 run most of a pruned model's moments sit
    there for thousands of steps: fused Adam on 266k parameters took 6.8 ms a step instead of
    0.65 ms. Values below 1.2e-38 change no update that matters (Adam's step for them is ~1e-30).
    """
    if threads > 0:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)


def check_fits_data(cfg: TrainConfig, steps_per_epoch: int, num_train: int) -> None:
    """A batch larger than the training split would give epochs of zero steps: refuse it up front."""
    if steps_per_epoch < 1:
        raise ConfigError(
            f"train.batch_size {cfg.batch_size} is larger than the training split ({num_train} examples "
            "after the validation split); lower train.batch_size or train.val_size"
        )
