"""One training run, top to bottom: build, (resume), train with per-epoch validation, export, measure.

Every hook a method can implement is called visibly in ``train``; there is no callback maze.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from sparsebench.config import TrainConfig, apply_overrides, flatten
from sparsebench.data.paths import data_root
from sparsebench.errors import ConfigError, RunNotFoundError, TrainingDivergedError
from sparsebench.measure.counts import check_export, layer_table, paper_row, summarize
from sparsebench.measure.precision import layer_weights, precision_report, round_model
from sparsebench.measure.structured import structured_metrics
from sparsebench.method import SparsityMethod, StepContext
from sparsebench.registry import METHODS, TASKS
from sparsebench.run import checkpoint
from sparsebench.task import Batches, Task
from sparsebench.tracking import EXPERIMENT, Tracker, environment

COMPILE_MIN_STEPS = 5000
"""Below this many steps, compiling (seconds per layer shape) costs more than it saves."""


@dataclass
class RunRequest:
    """What the user asked for; everything else comes from the task's recipe and the configs."""

    task: str
    method: str
    overrides: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    data_dir: str | None = None
    tracking_uri: str | None = None
    experiment: str = EXPERIMENT
    resume: str | None = None
    init_from: str | None = None
    stop_after: int | None = None
    """Stop (resumably) once this many epochs are done; the run can be continued with --resume."""
    progress: bool = True
    parent_run_id: str | None = None
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    on_epoch: Callable[[int, float], None] | None = None
    """Called with (epoch, validation metric) after each epoch; sweeps report to optuna here."""


@dataclass
class RunResult:
    run_id: str
    status: str
    val_metric: float = math.nan
    test_metric: float = math.nan
    summary: dict[str, float] = field(default_factory=dict)
    row: str = ""
    table: Any = None


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
    plan = Plan(task, method, method.adjust_recipe(task.name, task.default_recipe(method_cls.name)))
    apply_overrides(plan.sections, {k: v for k, v in overrides.items() if k not in early})
    if plan.train.epochs < 1 or plan.train.batch_size < 1:
        raise ConfigError("train.epochs and train.batch_size must be at least 1")
    return plan


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda[:N], got {name!r}")
    return torch.device(name)


def lr_factor(cfg: TrainConfig, epoch: int, step: int) -> float:
    """Learning-rate multiplier of the recipe's schedule (methods.md section 2.5)."""
    e, n = epoch, cfg.epochs
    if cfg.lr_schedule == "constant":
        return 1.0
    if cfg.lr_schedule == "linear":  # ars lr_linear: flat for the first half, then linearly to 0
        return min(2.0 - 2.0 * e / n, 1.0)
    if cfg.lr_schedule == "linear_to0":
        return (n - e) / n
    if cfg.lr_schedule == "inv":  # Caffe's "inv" policy, gamma 1e-4, power 0.75
        return (1.0 + 1e-4 * step) ** -0.75
    if cfg.lr_schedule == "step":
        return cfg.lr_decay ** (e // cfg.lr_step)
    if (
        cfg.lr_schedule == "exponential_after"
    ):  # Zaremba: constant for lr_step epochs, then x lr_decay per epoch
        return cfg.lr_decay ** max(0, e + 1 - cfg.lr_step)
    raise ConfigError(f"unknown train.lr_schedule {cfg.lr_schedule!r}")


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    # One fused kernel per step instead of a pass per state tensor: Adam's update of LeNet-300-100's
    # 532k Sparse VD parameters drops from 2.5 ms to 0.9 ms on one CPU thread (same arithmetic).
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(
            params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay, fused=fused
        )
    return torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused
    )


@torch.no_grad()
def evaluate(task: Task, model: nn.Module, split: Batches, batch_size: int) -> float:
    """The task's metric on a whole split, deterministic (posterior means, masks applied)."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=next(model.parameters()).device)
    task.on_pass_start(model, training=False)
    for x, y in split.iterate(batch_size, shuffle=False, generator=None, drop_last=False):
        total += task.score_sum(model(x), y)
    model.train(was_training)
    return task.finalize_metric(float(total), split.num_examples)


def place_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move a model to the training device, its convolution weights channels-last on CPU.

    oneDNN's convolutions and max-pooling run faster on channels-last tensors; with the weights
    in that layout the activations follow. Measured on LeNet-5, one thread, in one process
    (``sparsebench bench --train``): see README, Training throughput. Convolutions are found by
    their 4-D weights, not their class: a method's own conv layer (group_nj's ``GroupConv2d``) is
    not an ``nn.Conv2d`` and needs the layout as much.
    """
    model = model.to(device)
    if device.type == "cpu" and any(p.dim() == 4 for p in model.parameters()):
        model = model.to(memory_format=torch.channels_last)
    return model


def current_sparsity(method: SparsityMethod, model: nn.Module) -> float:
    """% of prunable weights the method's masks remove right now (for progress and curves)."""
    masks = method.masks(model)
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return 100.0 * (total - kept) / max(1, total)


def load_init(model: nn.Module, run_id: str, tracking_uri: str | None) -> None:
    """Start from the exported weights of an earlier run (e.g. dense pretraining)."""
    from sparsebench.tracking import make_client

    client = make_client(tracking_uri)
    try:
        local = client.download_artifacts(run_id, "model/model.pt", tempfile.mkdtemp())
    except Exception as exc:
        raise RunNotFoundError(f"--init-from {run_id}: no exported model in that run ({exc})") from exc
    state = torch.load(local, map_location="cpu", weights_only=False)["state_dict"]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(
            f"--init-from {run_id}: its model does not fit this task ({str(exc).splitlines()[0]})"
        ) from exc


def with_full_run_ids(request: RunRequest) -> RunRequest:
    """``--resume`` and ``--init-from`` accept the short ids that tables and logs print."""
    if request.resume:
        request = replace(request, resume=checkpoint.full_run_id(request.resume))
    if request.init_from:
        from sparsebench.tracking import make_client, resolve_run_id

        client = make_client(request.tracking_uri)
        request = replace(request, init_from=resolve_run_id(client, request.init_from, "--init-from"))
    return request


def train(request: RunRequest) -> RunResult:
    """Run one (task, method) training job end to end and log it to MLflow."""
    request = with_full_run_ids(request)
    ckpt = checkpoint.load(request.resume) if request.resume else None
    if ckpt is not None:
        plan = plan_run(ckpt["task"], ckpt["method"], ckpt["config"])
    else:
        plan = plan_run(request.task, request.method, request.overrides)
    task, method, cfg = plan.task, plan.method, plan.train
    device = resolve_device(request.device)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)

    splits = task.load_data(data_root(request.data_dir), device, cfg.val_size)
    torch.manual_seed(cfg.seed)
    model = task.build_model()
    if request.init_from:
        load_init(model, request.init_from, request.tracking_uri)
    if (reason := method.not_applicable(model)) is not None:
        raise ConfigError(f"{method.name} does not apply to {task.name}: {reason}")
    model = place_model(method.convert(model), device)
    optimizer = build_optimizer(cfg, model)
    generator = torch.Generator().manual_seed(cfg.seed)
    start_epoch, step = 0, 0

    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        checkpoint.restore_rng(ckpt["rng"], generator)
        start_epoch, step = ckpt["epoch"], ckpt["step"]
        tracker = Tracker.open(request.tracking_uri, request.experiment, run_id=request.resume, resume=True)
    else:
        tracker = Tracker.open(
            request.tracking_uri,
            request.experiment,
            tags={"task": task.name, "method": method.name, **request.tags},
            run_name=request.run_name or f"{task.name}-{method.name}",
            parent_run_id=request.parent_run_id,
        )
        tracker.log_params(plan.flat_config())
        tracker.set_tags({**environment(), "device": str(device), "init_from": request.init_from or ""})
    ckpt_path = checkpoint.checkpoint_path(tracker.run_id)
    tracker.set_tags({"checkpoint": str(ckpt_path.absolute())})

    steps_per_epoch = splits.train.num_batches(cfg.batch_size, drop_last=True)
    if cfg.compile == "always" or (
        cfg.compile == "auto" and cfg.epochs * steps_per_epoch >= COMPILE_MIN_STEPS
    ):
        method.enable_compile(model)
    progress = _progress(request.progress, cfg.epochs * steps_per_epoch, step, f"{task.name} {method.name}")
    epoch = start_epoch
    epoch_info = ""
    try:
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            started = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            reg_value = 0.0
            task.on_pass_start(model, training=True)
            for i, (x, y) in enumerate(splits.train.iterate(cfg.batch_size, True, generator, drop_last=True)):
                ctx = StepContext(
                    epoch, step, steps_per_epoch, cfg.epochs, splits.train.num_examples, optimizer
                )
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * lr_factor(cfg, epoch, step)
                x = task.train_transform(x, generator)
                with autocast(device, cfg.amp):
                    loss = task.loss(model(x), y)
                    reg = method.regularizer(model, ctx)
                    total = loss if reg is None else loss + reg
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                if cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                method.on_step_end(model, ctx)
                step += 1
                loss_sum += total.detach()
                if (i + 1) % 50 == 0 or i + 1 == steps_per_epoch:
                    mean_loss = float(loss_sum) / (i + 1)  # one device sync every 50 steps
                    if not math.isfinite(mean_loss):
                        kept = (
                            f"checkpoint of epoch {epoch} kept"
                            if epoch > start_epoch or ckpt
                            else "no epoch finished"
                        )
                        raise TrainingDivergedError(
                            f"loss became {mean_loss} in epoch {epoch + 1}, step {step}; lower train.lr "
                            f"or lengthen the KL warm-up (run {tracker.run_id} marked FAILED, {kept})"
                        )
                    reg_value = float(reg.detach()) if reg is not None else 0.0
                    if progress is not None:
                        progress.update(i + 1 - progress.n + epoch * steps_per_epoch)
                        progress.set_postfix_str(f"loss {mean_loss:.4f}{epoch_info}", refresh=False)
            seconds = time.perf_counter() - started
            val = evaluate(task, model, splits.val, cfg.eval_batch_size)
            sparsity = current_sparsity(method, model)
            metrics = {
                "train_loss": float(loss_sum) / steps_per_epoch,
                "regularizer": reg_value,
                "val_metric": val,
                "sparsity": sparsity,
                "lr": optimizer.param_groups[0]["lr"],
                "epoch_seconds": seconds,
                "examples_per_second": steps_per_epoch * cfg.batch_size / seconds,
                **method.epoch_metrics(model),
            }
            tracker.log_metrics(metrics, step=epoch + 1)
            checkpoint.save(
                ckpt_path,
                {
                    "task": task.name,
                    "method": method.name,
                    "config": flatten(plan.sections),
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "rng": checkpoint.rng_state(generator),
                    "epoch": epoch + 1,
                    "step": step,
                },
            )
            epoch_info = f" | epoch {epoch + 1}: val {task.metric.name} {val:.2f}, sparsity {sparsity:.1f}%"
            if progress is not None:
                progress.set_postfix_str(f"loss {metrics['train_loss']:.4f}{epoch_info}")
            if request.on_epoch is not None:
                request.on_epoch(epoch, val)
            if request.stop_after is not None and epoch + 1 >= request.stop_after and epoch + 1 < cfg.epochs:
                tracker.set_tags({"state": "paused"})
                tracker.finish("KILLED")
                _close(progress)
                print(
                    f"stopped after epoch {epoch + 1}; continue with: "
                    f"sparsebench run --resume {tracker.run_id}",
                    file=sys.stderr,
                )
                return RunResult(tracker.run_id, "PAUSED")
        _close(progress)
        return finish(plan, model, splits, tracker, device)
    except TrainingDivergedError:
        _close(progress)
        tracker.set_tags({"failure": "loss diverged"})
        tracker.finish("FAILED")
        raise
    except KeyboardInterrupt:
        _close(progress)
        tracker.set_tags({"state": "interrupted"})
        tracker.finish("KILLED")
        print(
            f"\ninterrupted in epoch {epoch + 1}; checkpoint of the last finished epoch kept, continue with: "
            f"sparsebench run --resume {tracker.run_id}",
            file=sys.stderr,
        )
        return RunResult(tracker.run_id, "KILLED")
    except BaseException:
        _close(progress)
        tracker.finish("FAILED")
        raise


RUN_STATE_TAGS = frozenset({"row", "checkpoint", "device", "state", "failure", "refinished_from"})
"""Tags that describe how one run went, set by the runner; ``refinish`` does not inherit them."""


def refinish(request: RunRequest, source: str) -> RunResult:
    """Calibrate, export and score the trained weights of run ``source`` again, as a new run.

    Thresholds, calibration and metrics keep improving after models are trained (fixing a stale
    cache once moved every group run's thresholds), and retraining to apply them costs hours. The
    checkpoint of the last epoch holds everything the end of a run needs, so this repeats only
    ``finish`` with the current code. The new run carries the source's config and its tags (study,
    init_from, ...) plus ``refinished_from``; reports then show it in place of the source.
    """
    from sparsebench.tracking import make_client, resolve_run_id

    client = make_client(request.tracking_uri)
    source = resolve_run_id(client, source, "--refinish")
    source_tags = client.get_run(source).data.tags
    trained, tags = source, source_tags  # a re-finished run has no checkpoint: use its training run's
    while parent := tags.get("refinished_from"):
        trained, tags = parent, client.get_run(parent).data.tags
    ckpt = checkpoint.load(trained)
    plan = plan_run(ckpt["task"], ckpt["method"], ckpt["config"])
    task, method, cfg = plan.task, plan.method, plan.train
    if ckpt["epoch"] < cfg.epochs:
        raise ConfigError(
            f"run {source} stopped after epoch {ckpt['epoch']} of {cfg.epochs}; "
            f"finish its training first: sparsebench run --resume {source}"
        )
    device = resolve_device(request.device)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    splits = task.load_data(data_root(request.data_dir), device, cfg.val_size)
    torch.manual_seed(cfg.seed)
    model = place_model(method.convert(task.build_model()), device)
    model.load_state_dict(ckpt["model"])
    inherited = {  # the user's tags (study=..., ...) and init_from; not what describes the old finish
        key: value
        for key, value in source_tags.items()
        if not key.startswith(("mlflow.", "env.")) and key not in RUN_STATE_TAGS
    }
    tracker = Tracker.open(
        request.tracking_uri,
        request.experiment,
        tags={**inherited, **request.tags, "refinished_from": source},
        run_name=f"{task.name}-{method.name}-refinished",
    )
    tracker.log_params(plan.flat_config())
    tracker.set_tags({**environment(), "device": str(device)})
    tracker.copy_curves(source)
    try:
        return finish(plan, model, splits, tracker, device)
    except BaseException:
        tracker.finish("FAILED")
        raise


def finish(plan: Plan, model: nn.Module, splits: Any, tracker: Tracker, device: torch.device) -> RunResult:
    """Export, count, score on the test set and log everything a table needs."""
    task, method, cfg = plan.task, plan.method, plan.train
    model.eval()
    calibration = method.calibrate(model, lambda m: evaluate(task, m, splits.val, cfg.eval_batch_size))
    if calibration:
        # The last epoch's method metrics (kept groups, ...) and sparsity were measured with the
        # thresholds before calibration; log them again at the same step so the run's latest
        # values describe the model that is exported and tested.
        recount = {**method.epoch_metrics(model), "sparsity": current_sparsity(method, model)}
        recount.update({f"calibration.{k}": v for k, v in calibration.items()})
        tracker.log_metrics(recount, step=cfg.epochs)
    masks = method.masks(model)
    exported = method.export(model, masks).eval()
    check_export(exported, masks)
    table = layer_table(exported, task.example_input(device), task.layer_order(exported))
    summary = summarize(exported, table)
    val = evaluate(task, exported, splits.val, cfg.eval_batch_size)
    test = evaluate(task, exported, splits.test, cfg.eval_batch_size)
    row = paper_row(task.name, method.name, test, table, summary, task.metric.unit)
    final = {"final_val_metric": val, "test_metric": test, "peak_memory_mb": peak_memory_mb(device)}
    final.update(structured_metrics(exported, task.layer_order(exported)))
    final.update(precision_metrics(plan, model, exported, masks, splits))
    tracker.log_metrics({**final, **summary.as_metrics()}, step=cfg.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        table.to_csv(tmpdir / "per_layer.csv", index=False)
        tracker.log_artifact(tmpdir / "per_layer.csv")
        model_dir = tmpdir / "model"
        model_dir.mkdir()
        torch.save(
            {"state_dict": exported.state_dict(), "masks": {k: v.cpu() for k, v in masks.items()}},
            model_dir / "model.pt",
        )
        tracker.log_artifact(model_dir / "model.pt", "model")
        (tmpdir / "config.json").write_text(json.dumps(plan.flat_config(), indent=2))
        tracker.log_artifact(tmpdir / "config.json")
        curve = threshold_curve(plan, model, splits, device)
        if curve is not None:
            curve.to_csv(tmpdir / "threshold_curve.csv", index=False)
            tracker.log_artifact(tmpdir / "threshold_curve.csv")
    tracker.set_tags({"row": row})
    tracker.finish("FINISHED")
    return RunResult(tracker.run_id, "FINISHED", val, test, summary.as_metrics(), row, table)


def precision_metrics(plan: Plan, model: nn.Module, exported: nn.Module, masks: dict, splits: Any) -> dict:
    """Bit-precision compression and the error of the rounded model, for methods with posteriors.

    Only methods that expose ``posterior_variances(model)`` (the Bayesian-compression family)
    have the per-weight variances the bit computation needs (methods.md section 4.7).
    """
    variances_of = getattr(plan.method, "posterior_variances", None)
    if variances_of is None:
        return {}
    variances = variances_of(model)
    try:
        report = precision_report(layer_weights(exported, list(variances)), variances, masks)
    except ValueError as exc:  # e.g. every kept weight below 0.5: the exponent formula is undefined
        print(f"sparsebench: no precision-reduced compression for this run: {exc}", file=sys.stderr)
        return {}
    rounded = round_model(exported, report.significand_bits)
    return {
        **report.as_metrics(),
        "test_metric_precision": evaluate(plan.task, rounded, splits.test, plan.train.eval_batch_size),
    }


def threshold_curve(plan: Plan, model: nn.Module, splits: Any, device: torch.device) -> pd.DataFrame | None:
    """Error vs compression of one trained model across pruning thresholds (a curve, not a point)."""
    task, method, cfg = plan.task, plan.method, plan.train
    thresholds = list(method.curve_thresholds())
    if not thresholds:
        return None
    rows = []
    example = task.example_input(device)
    for t in thresholds:
        masks = method.masks_at(model, t)
        exported = method.export(model, masks).eval()
        summary = summarize(exported, layer_table(exported, example, task.layer_order(exported)))
        rows.append(
            {
                "threshold": t,
                "compression": summary.compression,
                "nonzeros": summary.nonzeros,
                "val_metric": evaluate(task, exported, splits.val, cfg.eval_batch_size),
                "test_metric": evaluate(task, exported, splits.test, cfg.eval_batch_size),
            }
        )
    return pd.DataFrame(rows)


def autocast(device: torch.device, enabled: bool) -> Any:
    """bf16 autocast on CUDA (matmuls and convolutions in bf16, reductions in fp32); off on CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def peak_memory_mb(device: torch.device) -> float:
    """Peak device memory of the run (CUDA allocator) or peak resident memory of the process (CPU)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _progress(enabled: bool, total: int, initial: int, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, unit="step", dynamic_ncols=True)


def _close(progress: Any) -> None:
    if progress is not None:
        progress.close()
