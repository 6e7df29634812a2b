"""Kingma, Salimans, Welling (2015), Table 1: the variance of four minibatch gradient estimators.

Protocol (docs/experiments.md has the sources): a fully connected ReLU network 784-1024-1024-1024-10
on MNIST, trained with variational dropout with independent weight noise (``variational_dropout``,
variant B: a learned alpha per weight, initial rates 0.2 on the input and 0.5 elsewhere) by the
project's training step (``sparsebench.run.loop.Trainer`` and ``train_epoch``). After each requested
number of epochs it measures, for the bottom and the top weight matrix, the average over weights
of the variance of N times the gradient of a 1000-example minibatch's mean loss, under the four
estimators of ``sparsebench.experiments.estimators``, with the trained means and alphas.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsebench import record
from sparsebench.config import TrainConfig
from sparsebench.errors import ConfigError
from sparsebench.experiments import gradient_variance_record as gvr
from sparsebench.experiments.estimators import ESTIMATORS, NoisyStack
from sparsebench.experiments.gradient_variance_table import write_tables
from sparsebench.experiments.variance_stats import measure
from sparsebench.registry import METHODS, TASKS
from sparsebench.run.loop import Trainer, build_optimizer, evaluate, start_training, train_epoch

DATA_TASK = "lenet300_100"
"""The task whose MNIST pipeline (flattened 784 inputs, /256 minus the training mean image, a fixed
validation split) and loss the experiment uses; its model is not used."""


@dataclass
class GradientVarianceConfig:
    """What one run measures; every field is in the record."""

    epochs: tuple[int, ...] = (10, 100)
    repeats: int = 50
    separate_repeats: int = 0
    """Repetitions of the per-example-weights estimator, by far the slowest (0 = ``repeats``)."""
    groups: int = 5
    batch_size: int = 1000
    train_batch_size: int = 200
    lr: float = 1e-3
    width: int = 1024
    hidden_layers: int = 3
    p_input: float = 0.2
    p_hidden: float = 0.5
    seed: int = 0
    val_size: int = 5000
    chunk: int = 16
    max_hours: float = 0.0
    """Stop training early enough to measure before this much wall time has passed (0 = no limit)."""

    def check(self) -> None:
        """Refuse settings that cannot run, in one line each, before any data is read."""
        if (
            not self.epochs
            or any(e < 1 for e in self.epochs)
            or list(self.epochs) != sorted(set(self.epochs))
        ):
            raise ConfigError(f"--epochs must be increasing positive integers, got {list(self.epochs)}")
        for name in (
            "repeats",
            "groups",
            "batch_size",
            "train_batch_size",
            "width",
            "hidden_layers",
            "chunk",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("repeats", "separate_repeats"):
            value = getattr(self, name)
            if value and value < 2 * self.groups:
                raise ConfigError(
                    f"--{name.replace('_', '-')} {value} cannot fill {self.groups} groups of at least 2 "
                    f"repetitions; use at least {2 * self.groups} or fewer --groups"
                )
        if not (0.0 < self.p_input <= 0.5 and 0.0 < self.p_hidden <= 0.5):
            raise ConfigError("the initial drop rates must lie in (0, 0.5] (alpha <= 1)")
        if self.lr <= 0 or self.max_hours < 0:
            raise ConfigError("--lr must be positive and --max-hours at least 0")

    def repeats_of(self, estimator: str) -> int:
        return self.separate_repeats or self.repeats if estimator == "separate" else self.repeats


def build_network(cfg: GradientVarianceConfig) -> nn.Sequential:
    """784 -> width (x hidden_layers, ReLU) -> 10, torch's default initialisation."""
    sizes = [784] + [cfg.width] * cfg.hidden_layers
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    layers.append(nn.Linear(sizes[-1], 10))
    return nn.Sequential(*layers)


@dataclass
class Session:
    """The data, the converted model and the project's trainer over it."""

    task: Any
    method: Any
    splits: Any
    trainer: Trainer
    generator: torch.Generator


def open_session(cfg: GradientVarianceConfig, data_dir: Path) -> Session:
    """Load MNIST, build the network, convert it to variational dropout B, make the Trainer."""
    task = TASKS.get(DATA_TASK)()
    device = torch.device("cpu")
    splits = task.load_data(data_dir, device, cfg.val_size)
    if cfg.batch_size > splits.train.num_examples:
        raise ConfigError(
            f"--batch-size {cfg.batch_size} exceeds the {splits.train.num_examples} training examples"
        )
    torch.manual_seed(cfg.seed)
    method_cls = METHODS.get("variational_dropout")
    method = method_cls(method_cls.Config(variant="B", p_input=cfg.p_input, p_hidden=cfg.p_hidden))
    model = method.convert(build_network(cfg))
    train = TrainConfig(
        epochs=max(cfg.epochs), batch_size=cfg.train_batch_size, optimizer="adam", lr=cfg.lr, seed=cfg.seed
    )
    steps = splits.train.num_batches(cfg.train_batch_size, drop_last=True)
    if steps < 1:
        raise ConfigError(f"--train-batch-size {cfg.train_batch_size} exceeds the training split")
    trainer = Trainer(
        task, method, model, build_optimizer(train, model), train, device, splits.train.num_examples, steps
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    start_training(trainer, splits.train, generator)
    return Session(task, method, splits, trainer, generator)


def stack_of(method: Any, model: nn.Module) -> NoisyStack:
    """The trained means, biases and per-weight log alphas, in network order."""
    weights, biases, log_alphas = [], [], []
    for path, log_alpha in method.log_alphas(model).items():
        layer = model.get_submodule(path)
        weights.append(layer.weight.detach())
        biases.append(None if layer.bias is None else layer.bias.detach())
        log_alphas.append(log_alpha.detach())
    return NoisyStack(weights, biases, log_alphas, eps0=method.config.eps0)


def measure_point(session: Session, cfg: GradientVarianceConfig, log: Callable[[str], None]) -> tuple:
    """Every estimator's variance for the bottom and top layer, and seconds per repetition."""
    stack = stack_of(session.method, session.trainer.model)
    train = session.splits.train
    layers = {"bottom": 0, "top": len(stack.weights) - 1}
    cells, seconds = [], {}
    rng = torch.get_rng_state()  # measuring reseeds the noise; training resumes its own stream
    for est in ESTIMATORS:
        result = measure(
            stack,
            train.x,
            train.y,
            est,
            list(layers.values()),
            cfg.repeats_of(est),
            cfg.groups,
            cfg.batch_size,
            cfg.seed,
            float(train.num_examples),
            cfg.chunk,
        )
        seconds[est] = result.seconds_per_repeat
        for name, k in layers.items():
            value, error = result.variances[k].result()
            cells.append(
                gvr.Cell(
                    estimator=est,
                    layer=name,
                    variance=value,
                    std_error=error,
                    group_variances=result.variances[k].groups,
                    repeats=result.repeats,
                )
            )
            log(f"  {est:9s} {name:6s} {value:.3e} ± {error:.1e} ({result.seconds_per_repeat:.2f} s/repeat)")
    torch.set_rng_state(rng)
    return cells, seconds


def train_until(
    session: Session,
    target: int,
    done: int,
    deadline: float | None,
    reserve: float,
    log: Callable[[str], None],
) -> tuple[int, float, float]:
    """Train from epoch ``done`` to ``target`` (fewer when the next epoch plus ``reserve`` seconds of
    measuring would pass ``deadline``); returns the epochs reached, the last epoch's loss, seconds."""
    trainer, start, loss, per_epoch = session.trainer, time.perf_counter(), float("nan"), 0.0
    for epoch in range(done, target):
        if deadline is not None and time.time() + per_epoch + reserve > deadline:
            log(f"time limit: stopping at epoch {epoch} instead of {target}")
            return epoch, loss, time.perf_counter() - start
        t0 = time.perf_counter()
        result = train_epoch(
            trainer, session.splits.train, epoch, epoch * trainer.steps_per_epoch, session.generator
        )
        per_epoch, loss = time.perf_counter() - t0, result.train_loss
        log(f"epoch {epoch + 1}/{target}: loss {loss:.4f} ({per_epoch:.1f} s)")
    return target, loss, time.perf_counter() - start


def new_record(cfg: GradientVarianceConfig, data_dir: Path, task: Any) -> gvr.GradientVarianceRecord:
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
    config |= {
        "network": f"784-{'-'.join([str(cfg.width)] * cfg.hidden_layers)}-10 ReLU",
        "method": "variational_dropout (variant B)",
        "data_task": DATA_TASK,
        "optimizer": "adam",
        "threads": torch.get_num_threads(),
    }
    return gvr.GradientVarianceRecord(
        config=config,
        versions=record.versions(),
        git_commit=record.code_commit(),
        data=record.data_checksums(data_dir, task.data_files),
    )


def run(
    cfg: GradientVarianceConfig, data_dir: Path, out: Path, log: Callable[[str], None]
) -> gvr.GradientVarianceRecord:
    """Train, measure at each requested epoch, and rewrite the record and table after each point."""
    cfg.check()
    began = time.time()
    deadline = began + cfg.max_hours * 3600 if cfg.max_hours > 0 else None
    session = open_session(cfg, data_dir)
    rec = new_record(cfg, data_dir, session.task)
    done, reserve = 0, 0.0
    for target in cfg.epochs:
        reached, loss, seconds = train_until(session, target, done, deadline, reserve, log)
        if reached == done:  # not one more epoch fits: nothing new to measure
            break
        done = reached
        error = evaluate(session.task, session.trainer.model, session.splits.test, 2000)
        log(f"after {done} epochs: test error {error:.2f} %; measuring")
        t0 = time.perf_counter()
        cells, per_repeat = measure_point(session, cfg, log)
        reserve = time.perf_counter() - t0
        rec.points.append(
            gvr.Point(
                epoch=done,
                test_error=error,
                train_loss=loss,
                training_seconds=seconds,
                seconds_per_repeat=per_repeat,
                cells=cells,
            )
        )
        if reached < target:
            rec.note = (
                f"time limit of {cfg.max_hours} h: the last point is after {reached} epochs, not {target}"
            )
        write_outputs(rec, out)
        if reached < target:
            break
    rec.finished = True
    if len(rec.points) < len(cfg.epochs) and not rec.note:
        rec.note = f"time limit of {cfg.max_hours} h: measured after {[p.epoch for p in rec.points]} epochs"
    write_outputs(rec, out)
    return rec


def write_outputs(rec: gvr.GradientVarianceRecord, out: Path) -> list[Path]:
    """The record and its table (Markdown and CSV) in ``out``."""
    gvr.write(rec, out / gvr.RECORD_NAME)
    return [out / gvr.RECORD_NAME, *write_tables(rec, out)]
