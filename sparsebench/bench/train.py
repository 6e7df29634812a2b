"""Training-throughput benchmark: seconds per epoch of each method, and where a step's time goes.

Every method of a task runs in the same process on the same device, and their steps are timed
in interleaved rounds (a block of steps of each method per round, the order rotating), so a
change in machine load during the benchmark hits every method alike; ``x_dense`` is the median
over rounds of each round's ratio of time per training example (= per epoch), so a method whose
recipe has another batch size (group_nj: 128) is compared on the same data, not the same steps.
Inputs are random tensors of the task's real training-set size and shape held on the device and
batched by the same ``TensorBatches`` the runner uses, so data handling is measured too, without
needing the dataset.

Two breakdowns say where the time goes: by phase of the step (data, forward, regulariser,
backward, optimiser, hooks; synchronised timers) and by kind of operation (the layers' matrix
products and convolutions, noise draws, optimiser kernels, other tensor operations, and the
Python and framework time around them; from ``torch.profiler``). ``layers_x_dense`` is what a
method's training would cost against dense (per example) if everything but its layer products
were free: the floor that fusing element-wise work cannot go below.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
import torch

from sparsebench.config import parse_assignment
from sparsebench.data.tensors import TensorBatches
from sparsebench.errors import ConfigError
from sparsebench.registry import METHODS, TASKS
from sparsebench.run.loop import Trainer, build_optimizer, place_model
from sparsebench.run.plan import plan_run

PHASES = ("data", "forward", "regularizer", "backward", "optimizer", "method_hooks")

# Kinds of tensor work, matched against profiler event names (self time, so nothing counts twice).
LAYER_OPS = (
    "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addmv", "aten::mv",
    "aten::mkldnn_convolution", "aten::convolution_backward", "aten::cudnn_convolution",
    "aten::mkldnn_linear", "aten::mkldnn_rnn", "aten::_cudnn_rnn", "aten::_thnn_fused_lstm_cell",
    "aten::_embedding_bag", "aten::embedding_dense_backward",
)  # fmt: skip
NOISE_OPS = ("aten::normal_", "aten::uniform_", "aten::bernoulli_", "aten::random_")
OPTIMIZER_OPS = ("aten::_fused_adam", "aten::_fused_sgd", "aten::_foreach_")
COMPILED_KERNELS = ("triton_", "cpp_fused")
"""Inductor's kernels: on CUDA each Triton launch sits in a range named after the kernel; on CPU
the C++ kernels run inside the graph call's "## Call CompiledFxGraph" range."""
OP_KINDS = ("layers", "noise", "optimizer_ops", "other_ops", "framework")
"""``framework`` is the rest of the step's wall time: Python, dispatch, autograd bookkeeping, and
on CUDA the time the device waits for the host."""


def op_kind(name: str) -> str | None:
    """Which kind of tensor work a profiler event is, or None for a range that is not tensor work.

    Events that are not operators (autograd nodes, ``record_function`` ranges) carry Python and
    dispatch time as self time; they are not counted, and land in ``framework`` with every other
    moment of the step no operator accounts for.
    """
    if name.startswith(LAYER_OPS):
        return "layers"
    if name.startswith(NOISE_OPS):
        return "noise"
    if name.startswith(OPTIMIZER_OPS):
        return "optimizer_ops"
    if name.startswith(("aten::", *COMPILED_KERNELS)) or "CompiledFxGraph" in name:
        return "other_ops"
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def _timed(totals: dict[str, float] | None, phase: str, device: torch.device) -> Iterator[None]:
    if totals is None:
        yield
        return
    _sync(device)
    start = time.perf_counter()
    yield
    _sync(device)
    totals[phase] += time.perf_counter() - start


@contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence what native code writes to file descriptor 2 (kineto prints a line per profile).

    Python's warnings written meanwhile are silenced too; only the profiled steps run inside.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def parse_method_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``NAME`` or ``NAME:KEY=VALUE,...``: a method and settings of its own (``method.KEY``).

    So one benchmark can time a method's variants side by side (``l0:granularity=weight``). Values
    cannot hold commas (a list option is set with ``--set`` in a real run instead).
    """
    name, _, settings = spec.partition(":")
    overrides: dict[str, str] = {}
    for text in filter(None, (part.strip() for part in settings.split(","))):
        key, value = parse_assignment(text, "--methods", example="l0:granularity=weight")
        if f"method.{key}" in overrides:
            raise ConfigError(f"--methods {spec!r} sets {key} twice; give each setting once")
        overrides[f"method.{key}"] = value
    return name.strip(), overrides


def canonical_spec(spec: str) -> str:
    """The spec as rows name it: the method's registered name (``sparsevd`` -> ``sparse_vd``) and
    its settings without spaces, so two spellings of one variant are timed once."""
    name, overrides = parse_method_spec(spec)
    canonical = METHODS.get(name).name
    settings = ",".join(f"{key.removeprefix('method.')}={value}" for key, value in overrides.items())
    return f"{canonical}:{settings}" if settings else canonical


class TrainingLoop:
    """One method's training step on one task with its default recipe, ready to be timed in blocks."""

    def __init__(
        self,
        task_name: str,
        method_spec: str,
        data: TensorBatches,
        device: torch.device,
        compile_kernels: bool,
    ) -> None:
        plan = plan_run(task_name, *parse_method_spec(method_spec))
        self.spec = method_spec
        self.task, self.method, self.recipe = plan.task, plan.method, plan.train
        self.device = device
        torch.manual_seed(0)
        self.model = place_model(self.method.convert(self.task.build_model()), device)
        if compile_kernels:
            self.method.enable_compile(self.model)
        self.optimizer = build_optimizer(self.recipe, self.model)
        self.data = data
        self.generator = torch.Generator().manual_seed(0)
        self.steps_per_epoch = data.num_batches(self.recipe.batch_size, drop_last=True)
        self.trainer = Trainer(
            self.task,
            self.method,
            self.model,
            self.optimizer,
            self.recipe,
            device,
            data.num_examples,
            self.steps_per_epoch,
        )
        # Late enough in training that every regulariser and schedule is active.
        self.epoch = self.recipe.epochs // 2
        self.step_index = 0
        self._batches = self._new_epoch()

    def _new_epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.data.iterate(self.recipe.batch_size, True, self.generator, drop_last=True)

    def step(self, phases: dict[str, float] | None = None) -> None:
        """One optimiser step of the runner's own ``Trainer``; with ``phases``, each phase's
        synchronised time is added to it."""
        device = self.device

        def timed(phase: str) -> Any:
            return _timed(phases, phase, device)

        ctx = self.trainer.context(
            self.epoch, self.epoch * self.steps_per_epoch + self.step_index % self.steps_per_epoch
        )
        self.step_index += 1
        with timed("data"):
            try:
                xb, yb = next(self._batches)
            except StopIteration:
                self._batches = self._new_epoch()
                xb, yb = next(self._batches)
        self.trainer.step(xb, yb, ctx, self.generator, timed)

    def seconds_per_step(self, n: int) -> float:
        """Wall time of ``n`` steps without synchronisation inside them, per step (0 for none)."""
        if n <= 0:
            return 0.0
        _sync(self.device)
        start = time.perf_counter()
        for _ in range(n):
            self.step()
        _sync(self.device)
        return (time.perf_counter() - start) / n

    def phase_shares(self, n: int) -> dict[str, float]:
        """Percent of ``n`` synchronised steps spent in each phase."""
        phases: dict[str, float] = defaultdict(float)
        for _ in range(n):
            self.step(phases)
        measured = sum(phases.values())
        return {f"%{p}": 100 * phases[p] / measured if measured else 0.0 for p in PHASES}

    def op_seconds(self, n: int) -> dict[str, float]:
        """Seconds per step of each kind of work (``OP_KINDS``) over ``n`` profiled steps.

        ``framework`` is the profiled wall time less the tensor work (so the profiler's own cost
        per operator counts there too). On CUDA the tensor work is kernel time on the device, each
        kernel credited to the operator that launched it (the kernels' own rows would count it
        twice).
        """
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        cuda = self.device.type == "cuda"
        activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
        with _quiet_native_stderr(), profile(activities=activities) as prof:
            _sync(self.device)
            start = time.perf_counter()
            for _ in range(n):
                self.step()
            _sync(self.device)
            wall = (time.perf_counter() - start) / n
        seconds: dict[str, float] = dict.fromkeys(OP_KINDS, 0.0)
        for event in prof.key_averages():
            kind = op_kind(event.key)
            if kind is None or event.device_type != DeviceType.CPU:  # kernel rows: in their launcher's
                continue
            micros = event.self_device_time_total if cuda else event.self_cpu_time_total
            seconds[kind] += micros / 1e6 / n
        seconds["framework"] = max(0.0, wall - sum(seconds.values()))
        return seconds


def bench_task(
    task_name: str,
    methods: list[str],
    device: torch.device,
    steps: int,
    warmup: int,
    num_train: int,
    compile_kernels: bool,
    breakdown: bool,
    rounds: int = 5,
) -> list[dict[str, Any]]:
    """Rows for every method on one task, timed in ``rounds`` interleaved blocks of steps."""
    example = TASKS.get(task_name)().example_input(device)
    x = torch.randn(num_train, *example.shape[1:], device=device)
    y = torch.randint(0, 10, (num_train,), device=device)
    data = TensorBatches(x, y)
    names = list(dict.fromkeys(canonical_spec(m) for m in methods))  # sparsevd = sparse_vd
    loops = {name: TrainingLoop(task_name, name, data, device, compile_kernels) for name in names}
    for loop in loops.values():
        loop.seconds_per_step(warmup)
    block = max(1, steps // rounds)  # the CLI asks for steps >= rounds
    per_round: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            per_round[name].append(loops[name].seconds_per_step(block))
    per_example = {n: [t / loops[n].recipe.batch_size for t in times] for n, times in per_round.items()}
    rows = []
    for name, loop in loops.items():
        per_step = statistics.median(per_round[name])
        dense = per_example.get("dense")
        ratios = [t / d for t, d in zip(per_example[name], dense, strict=True)] if dense else []
        row: dict[str, Any] = {
            "task": loop.task.name,
            "method": loop.spec,
            "batch_size": loop.recipe.batch_size,
            "ms_per_step": 1000 * per_step,
            "x_dense": statistics.median(ratios) if ratios else float("nan"),
            "seconds_per_epoch": per_step * loop.steps_per_epoch,
            "examples_per_second": loop.recipe.batch_size / per_step,
        }
        if breakdown:
            detail_steps = max(20, steps // 4)
            row.update(loop.phase_shares(detail_steps))
            ops = loop.op_seconds(detail_steps)
            wall = sum(ops.values())
            row.update({f"%{k}": 100 * v / wall if wall else 0.0 for k, v in ops.items()})
            row["layers_ms"] = 1000 * ops["layers"]
            # The layers' share of this method's profiled step times its interleaved ratio to dense,
            # so a load change between the profiled blocks cancels as it does for x_dense.
            row["layers_x_dense"] = row["x_dense"] * ops["layers"] / wall if wall else float("nan")
        rows.append(row)
    return rows


def bench(
    tasks: list[str],
    methods: list[str],
    device: torch.device,
    steps: int = 200,
    warmup: int = 20,
    num_train: int = 55_000,
    compile_kernels: bool = True,
    breakdown: bool = True,
    rounds: int = 5,
) -> pd.DataFrame:
    """All pairs, plus each method's time relative to ``dense`` on the same task (NaN without dense)."""
    rows = []
    for task in tasks:
        rows += bench_task(
            task, methods, device, steps, warmup, num_train, compile_kernels, breakdown, rounds
        )
    return pd.DataFrame(rows)
