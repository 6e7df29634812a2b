"""Training-throughput benchmark: seconds per epoch of each method, and where a step's time goes.

Every (task, method) pair runs in the same process on the same device, one after the other, so
their ratios are comparable. Inputs are random tensors of the task's real training-set size and
shape held on the device and batched by the same ``TensorBatches`` the runner uses, so data
handling is measured too, without needing the dataset.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any

import pandas as pd
import torch

from sparsebench.data.tensors import TensorBatches
from sparsebench.method import StepContext
from sparsebench.registry import METHODS, TASKS
from sparsebench.runner import autocast, build_optimizer, place_model

PHASES = ("data", "forward", "regularizer", "backward", "optimizer", "method_hooks")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def _timed(totals: dict[str, float], phase: str, device: torch.device, enabled: bool):
    if not enabled:
        yield
        return
    _sync(device)
    start = time.perf_counter()
    yield
    _sync(device)
    totals[phase] += time.perf_counter() - start


def bench_pair(
    task_name: str,
    method_name: str,
    device: torch.device,
    steps: int,
    warmup: int,
    num_train: int,
    compile_kernels: bool,
    breakdown: bool,
) -> dict[str, Any]:
    """Time ``steps`` optimiser steps of one method on one task with its default recipe."""
    task = TASKS.get(task_name)()
    method = METHODS.get(method_name)()
    recipe = method.adjust_recipe(task.name, task.default_recipe(method.name))
    torch.manual_seed(0)
    model = place_model(method.convert(task.build_model()), device)
    if compile_kernels:
        method.enable_compile(model)
    optimizer = build_optimizer(recipe, model)
    example = task.example_input(device)
    x = torch.randn(num_train, *example.shape[1:], device=device)
    y = torch.randint(0, 10, (num_train,), device=device)
    data = TensorBatches(x, y)
    generator = torch.Generator().manual_seed(0)
    steps_per_epoch = data.num_batches(recipe.batch_size, drop_last=True)
    # Late enough in training that every regulariser and schedule is active.
    epoch = recipe.epochs // 2
    totals: dict[str, float] = defaultdict(float)

    def run(n: int, measure: bool) -> float:
        batches = data.iterate(recipe.batch_size, True, generator, drop_last=True)
        _sync(device)
        start = time.perf_counter()
        for i in range(n):
            ctx = StepContext(
                epoch, epoch * steps_per_epoch + i, steps_per_epoch, recipe.epochs, num_train, optimizer
            )
            timed = measure and breakdown
            with _timed(totals, "data", device, timed):
                try:
                    xb, yb = next(batches)
                except StopIteration:
                    batches = data.iterate(recipe.batch_size, True, generator, drop_last=True)
                    xb, yb = next(batches)
                xb = task.train_transform(xb, generator)
            with autocast(device, recipe.amp):
                with _timed(totals, "forward", device, timed):
                    loss = task.loss(model(xb), yb)
                with _timed(totals, "regularizer", device, timed):
                    reg = method.regularizer(model, ctx)
                    total = loss if reg is None else loss + reg
            with _timed(totals, "backward", device, timed):
                optimizer.zero_grad(set_to_none=True)
                total.backward()
            with _timed(totals, "optimizer", device, timed):
                optimizer.step()
            with _timed(totals, "method_hooks", device, timed):
                method.on_step_end(model, ctx)
        _sync(device)
        return time.perf_counter() - start

    run(warmup, measure=False)
    elapsed = run(steps, measure=True)
    per_step = elapsed / steps
    row: dict[str, Any] = {
        "task": task.name,
        "method": method.name,
        "batch_size": recipe.batch_size,
        "ms_per_step": 1000 * per_step,
        "seconds_per_epoch": per_step * steps_per_epoch,
        "examples_per_second": recipe.batch_size / per_step,
    }
    if breakdown:
        measured = sum(totals.values())
        for phase in PHASES:
            row[f"%{phase}"] = 100 * totals[phase] / measured if measured else 0.0
    return row


def bench(
    tasks: list[str],
    methods: list[str],
    device: torch.device,
    steps: int = 200,
    warmup: int = 20,
    num_train: int = 55_000,
    compile_kernels: bool = True,
    breakdown: bool = True,
) -> pd.DataFrame:
    """All pairs, plus each method's time relative to ``dense`` on the same task."""
    rows = []
    for task in tasks:
        for method in methods:
            # The breakdown adds synchronisation, so the headline numbers come from a clean pass.
            row = bench_pair(task, method, device, steps, warmup, num_train, compile_kernels, breakdown=False)
            if breakdown:
                detail = bench_pair(
                    task, method, device, max(20, steps // 4), 5, num_train, compile_kernels, True
                )
                row.update({k: v for k, v in detail.items() if k.startswith("%")})
            rows.append(row)
    table = pd.DataFrame(rows)
    dense = table[table.method == "dense"].set_index("task").ms_per_step
    table.insert(4, "x_dense", [r.ms_per_step / dense.get(r.task, float("nan")) for r in table.itertuples()])
    return table
