"""Inference benchmark of one trained run: every format checked on the test set, then timed.

The question it answers is the one users ask of pruning tools: is the compressed model smaller,
and is it faster? Each format's outputs must match the dense masked model on the whole test set
before it is timed (a wrong fast model is worth nothing); then latency and throughput at several
batch sizes, bytes held, the speedup against dense measured in the same process, and how much of
the ideal speedup (the compression ratio) it reaches.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from torch import nn

from sparsebench.bench.timing import measure
from sparsebench.errors import ConfigError, RunNotFoundError
from sparsebench.inference.formats import FORMATS, Format
from sparsebench.inference.size import storage_bytes
from sparsebench.inference.sparse_layers import FormatUnsupported
from sparsebench.measure.counts import layer_table, summarize
from sparsebench.task import Task

if TYPE_CHECKING:
    from sparsebench.tracking import Store

RTOL = 1e-4
ATOL = 1e-4
"""A format is correct when |out - dense| <= ATOL + RTOL |dense| on every output of the test set
(float32 sums in another order differ by ~1e-6 relative on logits of size ~10)."""

DEFAULT_BATCH_SIZES = (1, 64, 1024)
Reset = Callable[[nn.Module], None]
"""Called before every forward pass, so stateful models (an LM's carried state) start fresh."""
CHECK_BATCH = 1024


@dataclass
class LoadedRun:
    run_id: str
    task: Task
    method: str
    model: nn.Module
    """The exported (dense, masked) model in eval mode, on the CPU."""
    test_inputs: torch.Tensor
    compression: float
    flops_reduction: float


def load_run(run_id: str, store: Store, data_dir: str | Path | None) -> LoadedRun:
    """Rebuild a finished run's exported model from MLflow and read its task's test inputs.

    ``run_id`` must already be a full id (``resolve_runs``), so what is measured is logged to it.
    """
    from sparsebench.data.paths import data_root
    from sparsebench.report.select import recorded_config
    from sparsebench.run.plan import plan_run
    from sparsebench.tracking import ArtifactReader, load_exported

    config = recorded_config(ArtifactReader(store), run_id) or None
    exported = load_exported(store, run_id, f"run {run_id}")
    if config is None or exported is None:
        raise RunNotFoundError(
            f"run {run_id} has no exported model (model/model.pt and run_record.json); "
            "only finished runs can be benchmarked"
        )
    task_overrides = {k: v for k, v in config.items() if k.startswith("task.") and k != "task.name"}
    plan = plan_run(config["task.name"], config["method.name"], task_overrides)
    model = plan.task.build_model()
    model.load_state_dict(exported["state_dict"])
    model.eval()
    splits = plan.task.load_data(
        data_root(data_dir), torch.device("cpu"), int(config.get("train.val_size", 5000))
    )
    inputs = examples_of(splits.test, plan.task.name)
    summary = summarize(model, layer_table(model, plan.task.example_input(torch.device("cpu"))))
    return LoadedRun(
        run_id, plan.task, plan.method.name, model, inputs, summary.compression, summary.flops_reduction
    )


def resolve_runs(store: Store, typed: list[str]) -> list[str]:
    """Full ids of the runs the user named (ids or unique prefixes), all checked before any timing.

    Timing a run takes minutes; a typo in the third id, or a prefix logged to as if it were an id,
    must not cost the timings of the first two.
    """
    from sparsebench.tracking import resolve_run_id

    return [resolve_run_id(store, run_id) for run_id in typed]


def examples_of(split: object, task: str) -> torch.Tensor:
    """The test split as independent examples along dim 0.

    Image tasks hold a tensor of examples; a language model's token stream is cut into
    non-overlapping chunks of its unrolled length, each one example (scored from a fresh state).
    """
    inputs = getattr(split, "x", None)
    if isinstance(inputs, torch.Tensor):
        return inputs
    tokens, steps = getattr(split, "tokens", None), getattr(split, "steps", None)
    if isinstance(tokens, torch.Tensor) and isinstance(steps, int):
        chunks = len(tokens) // steps
        return tokens[: chunks * steps].view(chunks, steps)
    raise ConfigError(f"task {task}: its test split is neither a tensor of examples nor a token stream")


@dataclass
class Agreement:
    ok: bool
    max_abs_diff: float
    agreement: float
    """Share of positions whose arg-max (predicted class or next word) is the same."""


@torch.inference_mode()
def compare(
    built: nn.Module, reference: nn.Module, inputs: torch.Tensor, device: torch.device, reset: Reset
) -> Agreement:
    """Both models on every test example, batch by batch (a language model's logits do not fit at once)."""
    ok, worst, same, positions = True, 0.0, 0, 0
    batch = _check_batch(reference, inputs, device, reset)
    for start in range(0, len(inputs), batch):
        x = inputs[start : start + batch].to(device)
        reset(reference)
        ref = reference(x).float()
        reset(built)
        out = built(x).float()
        diff = (out - ref).abs()
        ok &= bool((diff <= ATOL + RTOL * ref.abs()).all())
        worst = max(worst, float(diff.max()))
        same += int((out.argmax(-1) == ref.argmax(-1)).sum())
        positions += ref[..., 0].numel()
    return Agreement(ok, worst, same / max(1, positions))


def _check_batch(model: nn.Module, inputs: torch.Tensor, device: torch.device, reset: Reset) -> int:
    """Examples per comparison batch: 1,024, or fewer when one example's output is large."""
    reset(model)
    per_example = model(inputs[:1].to(device)).numel()
    return max(1, min(CHECK_BATCH, (1 << 24) // per_example))


def _no_reset(model: nn.Module) -> None:
    """Stateless models need nothing before a call."""


def _batch(inputs: torch.Tensor, size: int, device: torch.device) -> torch.Tensor:
    """The first ``size`` test examples (cycled if the test set is smaller)."""
    index = torch.arange(size) % len(inputs)
    return inputs[index].to(device)


def bench_formats(
    model: nn.Module,
    example: torch.Tensor,
    inputs: torch.Tensor,
    device: torch.device,
    formats: list[str] | None = None,
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES,
    compression: float = 1.0,
    repeats: int = 15,
    warmup: int = 3,
    reset: Reset = _no_reset,
) -> pd.DataFrame:
    """One row per (format, batch size): correctness, bytes, time, speedup vs dense, share of ideal."""
    # Dense first, always: every speedup is measured against it in the same process.
    chosen = [FORMATS["dense"], *(FORMATS[n] for n in dict.fromkeys(formats or FORMATS) if n != "dense")]
    reference_model = FORMATS["dense"].build(model, example, device)
    rows: list[dict[str, Any]] = []
    timer = _Timer(inputs, device, reset, repeats, warmup, compression)
    dense_bytes = storage_bytes(reference_model)
    for fmt in chosen:
        if not fmt.applies_to(model):
            continue
        base = {"format": fmt.name, "device": device.type}
        built, problem = _build(fmt, model, example, device)
        if built is None:
            rows += [
                {**base, "batch_size": b, "status": "unsupported", "reason": problem} for b in batch_sizes
            ]
            continue
        check = compare(built, reference_model, inputs, device, reset)
        size = storage_bytes(built)
        checked = {
            **base,
            "max_abs_diff": check.max_abs_diff,
            "agreement": check.agreement,
            "bytes": size,
            "size_ratio": dense_bytes / max(1, size),
        }
        if not check.ok:
            worst = check.max_abs_diff
            reason = f"outputs differ from dense by up to {worst:.3g} (tolerance {ATOL} + {RTOL}|y|)"
            rows += [{**checked, "batch_size": b, "status": "failed", "reason": reason} for b in batch_sizes]
            continue
        rows += [{**checked, **timer.row(fmt.name, built, b)} for b in batch_sizes]
    return pd.DataFrame(rows)


@dataclass
class _Timer:
    """Times one checked format at one batch size, against dense timed earlier in the same process."""

    inputs: torch.Tensor
    device: torch.device
    reset: Reset
    repeats: int
    warmup: int
    compression: float
    dense_ms: dict[int, float] = field(default_factory=dict)

    def row(self, name: str, built: nn.Module, batch_size: int) -> dict[str, Any]:
        x = _batch(self.inputs, batch_size, self.device)
        reset = self.reset
        with torch.inference_mode():
            # Reset inside the timed call for every format alike: each call is a fresh sequence.
            timing = measure(
                lambda: (reset(built), built(x)), self.device, repeats=self.repeats, warmup=self.warmup
            )
        ms = timing.median_s * 1000
        if name == "dense":
            self.dense_ms[batch_size] = ms
        speedup = self.dense_ms[batch_size] / ms
        return {
            "batch_size": batch_size,
            "status": "ok",
            "reason": "slower than dense" if speedup < 1 else "",
            "ms": ms,
            "ms_q1": timing.q1_s * 1000,
            "ms_q3": timing.q3_s * 1000,
            "examples_per_s": batch_size / timing.median_s,
            "speedup": speedup,
            "ideal": self.compression,
            "fraction_of_ideal": speedup / self.compression,
        }


def _build(fmt: Format, model: nn.Module, example: torch.Tensor, device: torch.device) -> tuple[Any, str]:
    try:
        return fmt.build(model, example, device), ""
    except FormatUnsupported as exc:
        return None, str(exc)


def environment(device: torch.device) -> dict[str, Any]:
    """What the timings depend on, stored beside them."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    env: dict[str, Any] = {
        "device": str(device),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def log_to_run(run_id: str, store: Store, table: pd.DataFrame, env: dict[str, Any]) -> None:
    """Store the table and environment as artifacts of the run, and the headline numbers as metrics."""
    from sparsebench.tracking import Tracker

    tracker = Tracker(store, run_id)
    device = env["device"].split(":")[0]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        table.to_csv(folder / f"{device}.csv", index=False)
        (folder / f"{device}_environment.json").write_text(json.dumps(env, indent=2))
        tracker.log_artifact(folder / f"{device}.csv", "inference")
        tracker.log_artifact(folder / f"{device}_environment.json", "inference")
    metrics: dict[str, float] = {}
    for row in table[table.status == "ok"].itertuples():
        key = f"inference.{device}.{row.format}.b{row.batch_size}"
        metrics[f"{key}.ms"] = row.ms
        metrics[f"{key}.speedup"] = row.speedup
        metrics[f"inference.{row.format}.bytes"] = row.bytes
    tracker.log_metrics(metrics)


def best_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The fastest correct format at each batch size."""
    ok = table[table.status == "ok"]
    return ok.loc[ok.groupby("batch_size").ms.idxmin()].sort_values("batch_size")
