"""One training run, top to bottom: build, (resume), train with per-epoch validation, export, measure.

``train`` is the loop a reader should see on one screen; the step and the epoch it repeats live in
``loop``, the end of a run (calibrate, export, count, log) in ``finish``.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from sparsebench import record
from sparsebench.config import flatten
from sparsebench.errors import ConfigError, RunNotFoundError, TrainingDivergedError
from sparsebench.run import checkpoint
from sparsebench.run.finish import RecordSource, finish
from sparsebench.run.loop import (
    Trainer,
    build_optimizer,
    current_sparsity,
    evaluate,
    place_model,
    start_training,
    train_epoch,
)
from sparsebench.run.plan import (
    Plan,
    RunRequest,
    RunResult,
    check_fits_data,
    configure_cpu,
    plan_run,
    resolve_device,
)
from sparsebench.task import Splits
from sparsebench.tracking import (
    Tracker,
    environment,
    load_exported_file,
    resolve_run_id,
)

COMPILE_MIN_STEPS = 5000
"""Below this many steps, compiling (seconds per layer shape) costs more than it saves."""


@dataclass
class Session:
    """A run being trained: the plan, the trainer, the data, where it logs and where training stands."""

    plan: Plan
    trainer: Trainer
    splits: Splits
    tracker: Tracker
    generator: torch.Generator
    start_epoch: int
    step: int
    progress: Any
    ckpt_root: Path
    source: RecordSource
    """Data folder and the code's commit, taken when the session opens (the record's provenance)."""

    @property
    def cfg(self) -> Any:
        return self.plan.train


def train(request: RunRequest) -> RunResult:
    """Run one (task, method) training job end to end and log it to MLflow.

    The run's lock is held from before its checkpoint is read until it stops, so a second process
    cannot train the same run; a finished run's checkpoint is deleted unless ``keep_checkpoint``.
    """
    # The request's Env resolved the store once: every later step of the run uses it (opened when
    # the run is opened, after the request was checked, so a bad setting leaves no new store behind).
    root = request.env.checkpoint_root
    checkpoint.probe_writable(root, "checkpoint folder")
    if request.record_path is not None:
        record.probe_target(Path(request.record_path))
    request = with_full_run_ids(request, root)
    with contextlib.ExitStack() as held:
        if request.resume:
            held.enter_context(checkpoint.run_lock(request.resume, root))
        session = open_session(request, root)
        if not request.resume:
            held.enter_context(checkpoint.run_lock(session.tracker.run_id, root))
        result = train_session(session, request)
    if result.status == "FINISHED":
        if request.record_path is not None:
            record.write(result.record, Path(request.record_path))
        if not request.keep_checkpoint:
            checkpoint.discard(result.run_id, root)
    return result


def train_session(session: Session, request: RunRequest) -> RunResult:
    """The epochs of an opened run, then its finish; every way out leaves the run in a clear state."""
    cfg, tracker, epoch = session.cfg, session.tracker, session.start_epoch
    try:
        if session.step == 0:  # a fresh run; a resumed one keeps what the hook decided in its model
            start_training(session.trainer, session.splits.train, session.generator)
        for epoch in range(session.start_epoch, cfg.epochs):
            val = run_epoch(session, epoch)
            if request.on_epoch is not None:
                request.on_epoch(epoch, val)
            if request.stop_after is not None and request.stop_after <= epoch + 1 < cfg.epochs:
                return pause(session, epoch)
        close_progress(session)
        return finish(
            session.plan,
            session.trainer.model,
            session.splits,
            tracker,
            session.trainer.device,
            session.source,
        )
    except FloatingPointError as exc:
        close_progress(session)
        tracker.set_tags({"failure": "loss diverged"})
        tracker.finish("FAILED")
        kept = f"checkpoint of epoch {epoch} kept" if epoch > 0 else "no epoch finished"
        raise TrainingDivergedError(
            f"{exc}; lower train.lr or lengthen the KL warm-up (run {tracker.run_id} marked FAILED, {kept})"
        ) from None
    except KeyboardInterrupt:
        close_progress(session)
        tracker.set_tags({"state": "interrupted"})
        tracker.finish("KILLED")
        print(f"\n{interrupted_message(tracker.run_id, epoch, session.ckpt_root)}", file=sys.stderr)
        return RunResult(tracker.run_id, "KILLED")
    except BaseException:
        close_progress(session)
        tracker.finish("FAILED")
        raise


def run_epoch(session: Session, epoch: int) -> float:
    """Train one epoch, validate, log the epoch's curves and save the checkpoint; returns validation."""
    trainer, cfg, plan = session.trainer, session.cfg, session.plan
    started = time.perf_counter()
    done_before = epoch * trainer.steps_per_epoch

    def show(steps: int, mean_loss: float) -> None:
        if session.progress is not None:
            session.progress.update(done_before + steps - session.progress.n)
            session.progress.set_postfix_str(f"loss {mean_loss:.4f}", refresh=False)

    result = train_epoch(trainer, session.splits.train, epoch, session.step, session.generator, show)
    session.step += result.steps
    seconds = time.perf_counter() - started
    val = evaluate(plan.task, trainer.model, session.splits.val, cfg.eval_batch_size)
    sparsity = current_sparsity(plan.method, trainer.model)
    metrics = {
        "train_loss": result.train_loss,
        "regularizer": result.regularizer,
        "val_metric": val,
        "sparsity": sparsity,
        "lr": trainer.optimizer.param_groups[0]["lr"],
        "epoch_seconds": seconds,
        "examples_per_second": result.steps * cfg.batch_size / seconds,
        **plan.method.epoch_metrics(trainer.model),
    }
    session.tracker.log_metrics(metrics, step=epoch + 1)
    checkpoint.save(
        checkpoint.checkpoint_path(session.tracker.run_id, session.ckpt_root),
        checkpoint_payload(session, epoch + 1),
    )
    if session.progress is not None:
        session.progress.set_postfix_str(
            f"loss {result.train_loss:.4f} | epoch {epoch + 1}: val {plan.task.metric.name} {val:.2f}, "
            f"sparsity {sparsity:.1f}%"
        )
    return val


def checkpoint_payload(session: Session, epochs_done: int) -> dict[str, Any]:
    """Everything a resumed run needs to end on the same weights as an uninterrupted one."""
    plan, trainer = session.plan, session.trainer
    return {
        "task": plan.task.name,
        "method": plan.method.name,
        "config": flatten(plan.sections),
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "rng": checkpoint.rng_state(session.generator),
        "epoch": epochs_done,
        "step": session.step,
    }


def interrupted_message(run_id: str, epoch: int, root: Path) -> str:
    """What Ctrl-C kept: the last finished epoch's checkpoint, or nothing before the first one ends."""
    if checkpoint.checkpoint_path(run_id, root).is_file():
        return (
            f"interrupted in epoch {epoch + 1}; checkpoint of the last finished epoch kept, continue with: "
            f"sparsebench run --resume {run_id}"
        )
    return f"interrupted in epoch {epoch + 1}, before any epoch finished: nothing was saved (run {run_id})"


def pause(session: Session, epoch: int) -> RunResult:
    """``--stop-after``: end the process after this epoch, resumably."""
    tracker = session.tracker
    tracker.set_tags({"state": "paused"})
    tracker.finish("KILLED")
    close_progress(session)
    print(
        f"stopped after epoch {epoch + 1}; continue with: sparsebench run --resume {tracker.run_id}",
        file=sys.stderr,
    )
    return RunResult(tracker.run_id, "PAUSED")


def open_session(request: RunRequest, root: Path) -> Session:
    """Plan the run, load its data, build (or restore) model and optimiser, and open its tracking run."""
    ckpt = checkpoint.load(request.resume, root) if request.resume else None
    if ckpt is not None:
        plan = plan_run(ckpt["task"], ckpt["method"], ckpt["config"])
    else:
        plan = plan_run(request.task, request.method, request.overrides)
    task, method, cfg = plan.task, plan.method, plan.train
    device = resolve_device(request.env.device)
    configure_cpu(cfg.threads)
    splits = task.load_data(request.env.data_dir, device, cfg.val_size)
    torch.manual_seed(cfg.seed)
    model = task.build_model()
    if request.init_from:
        load_init(model, request.init_from, request.env.tracking_uri)
    if (reason := method.not_applicable(model)) is not None:
        raise ConfigError(f"{method.name} does not apply to {task.name}: {reason}")
    model = place_model(method.convert(model), device)
    steps_per_epoch = splits.train.num_batches(cfg.batch_size, drop_last=True)
    check_fits_data(cfg, steps_per_epoch, splits.train.num_examples)
    trainer = Trainer(
        task,
        method,
        model,
        build_optimizer(cfg, model),
        cfg,
        device,
        splits.train.num_examples,
        steps_per_epoch,
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    start_epoch, step = 0, 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        trainer.optimizer.load_state_dict(ckpt["optimizer"])
        checkpoint.restore_rng(ckpt["rng"], generator)
        start_epoch, step = ckpt["epoch"], ckpt["step"]
    tracker = open_tracker(request, plan, device, root, resumed=ckpt is not None)
    if ckpt is None:
        log_dataset(tracker, task, splits)
    if cfg.compile == "always" or (
        cfg.compile == "auto" and cfg.epochs * steps_per_epoch >= COMPILE_MIN_STEPS
    ):
        method.enable_compile(model)
    progress = _progress(request.progress, cfg.epochs * steps_per_epoch, step, f"{task.name} {method.name}")
    source = RecordSource(request.env.data_dir)
    return Session(plan, trainer, splits, tracker, generator, start_epoch, step, progress, root, source)


def open_tracker(request: RunRequest, plan: Plan, device: torch.device, root: Path, resumed: bool) -> Tracker:
    """Re-open the run being resumed, or start a new one with its full configuration as params."""
    if resumed:
        tracker = Tracker.open(request.env.store, request.env.experiment, run_id=request.resume, resume=True)
    else:
        task, method = plan.task, plan.method
        tracker = Tracker.open(
            request.env.store,
            request.env.experiment,
            tags={"task": task.name, "method": method.name, **request.tags},
            run_name=request.run_name or f"{task.name}-{method.name}",
            parent_run_id=request.parent_run_id,
        )
        tracker.log_params(plan.flat_config())
        tracker.set_tags({**environment(), "device": str(device), "init_from": request.init_from or ""})
        tracker.log_source()
    tracker.set_tags({"checkpoint": str(checkpoint.checkpoint_path(tracker.run_id, root).absolute())})
    return tracker


def log_dataset(tracker: Tracker, task: Any, splits: Splits) -> None:
    """The task's data as MLflow dataset inputs (name, digest, size of each split), as MLflow users expect."""
    files = tuple(task.data_files)
    name = files[0].split("/", 1)[0] if files and "/" in files[0] else task.name
    roles = {"train": splits.train, "validation": splits.val, "test": splits.test}
    tracker.log_dataset(name, roles, {"task": task.name, "files": ",".join(files)})


def load_init(model: torch.nn.Module, run_id: str, tracking_uri: str | None) -> None:
    """Start from the exported weights of an earlier run (e.g. dense pretraining): a run id, or the
    model file beside a run record (``<row>-seed<k>.model.npz``: how a campaign row starts from another)."""
    from sparsebench.tracking import load_exported as exported_of_run

    if run_id.endswith(record.MODEL_SUFFIX):
        exported = {"state_dict": record.read_model(Path(run_id))}
    else:
        exported = exported_of_run(tracking_uri, run_id, f"--init-from {run_id}")
    if exported is None:
        raise RunNotFoundError(f"--init-from {run_id}: no exported model (model/model.pt) in that run")
    state = exported["state_dict"]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(
            f"--init-from {run_id}: its model does not fit this task ({str(exc).splitlines()[0]})"
        ) from exc


def load_exported(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """The state dict of an exported ``model.pt``, loaded without running code from the file."""
    return load_exported_file(path, what)["state_dict"]


def with_full_run_ids(request: RunRequest, root: Path) -> RunRequest:
    """``--resume`` and ``--init-from`` accept the short ids that tables and logs print."""
    if request.resume:
        request = replace(request, resume=checkpoint.full_run_id(request.resume, root))
    if request.init_from and not request.init_from.endswith(record.MODEL_SUFFIX):
        store = request.env.store
        request = replace(request, init_from=resolve_run_id(store, request.init_from, "--init-from"))
    return request


def _progress(enabled: bool, total: int, initial: int, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, unit="step", dynamic_ncols=True)


def close_progress(session: Session) -> None:
    if session.progress is not None:
        session.progress.close()
