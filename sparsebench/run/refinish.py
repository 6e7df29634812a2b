"""``run --refinish``: calibrate, export and score a trained run's last checkpoint again, as a new run.

Thresholds, calibration and metrics keep improving after models are trained (fixing a stale cache
once moved every group run's thresholds), and retraining to apply them costs hours. The checkpoint
of the last epoch holds everything the end of a run needs, so this repeats only ``finish`` with
the current code.
"""

from __future__ import annotations

from typing import Any

import torch

from sparsebench.errors import ConfigError
from sparsebench.record import RECORD_NAME, RunRecord
from sparsebench.run import checkpoint
from sparsebench.run.finish import RecordSource, finish, user_tags
from sparsebench.run.loop import place_model
from sparsebench.run.plan import RunRequest, RunResult, configure_cpu, plan_run, resolve_device
from sparsebench.run.train import log_dataset
from sparsebench.tracking import ArtifactReader, Tracker, environment, resolve_run_id, run_tags


def refinish(request: RunRequest, source: str) -> RunResult:
    """Finish run ``source``'s trained weights again, as a new run tagged ``refinished_from``.

    The new run carries the source's config and its tags (study, init_from, ...); reports then
    show it in place of the source.
    """
    store = request.env.store
    source = resolve_run_id(store, source, "--refinish")
    source_tags = run_tags(store, source)
    trained, tags = source, source_tags  # a re-finished run has no checkpoint: use its training run's
    while parent := tags.get("refinished_from"):
        trained, tags = parent, run_tags(store, parent)
    ckpt = checkpoint.load(trained, request.env.checkpoint_root)
    plan = plan_run(ckpt["task"], ckpt["method"], ckpt["config"])
    task, method, cfg = plan.task, plan.method, plan.train
    if ckpt["epoch"] < cfg.epochs:
        raise ConfigError(
            f"run {source} stopped after epoch {ckpt['epoch']} of {cfg.epochs}; "
            f"finish its training first: sparsebench run --resume {source}"
        )
    device = resolve_device(request.env.device)
    configure_cpu(cfg.threads)
    splits = task.load_data(request.env.data_dir, device, cfg.val_size)
    torch.manual_seed(cfg.seed)
    model = place_model(method.convert(task.build_model()), device)
    model.load_state_dict(ckpt["model"])
    inherited = source_purpose(store, source, source_tags)
    tracker = Tracker.open(
        store,
        request.env.experiment,
        tags={**inherited, **request.tags, "refinished_from": source},
        run_name=f"{task.name}-{method.name}-refinished",
    )
    tracker.log_params(plan.flat_config())
    tracker.set_tags({**environment(), "device": str(device)})
    tracker.log_source()
    log_dataset(tracker, task, splits)
    tracker.copy_curves(source)
    try:
        return finish(plan, model, splits, tracker, device, RecordSource(request.env.data_dir))
    except BaseException:
        tracker.finish("FAILED")
        raise


def source_purpose(store: Any, source: str, tags: dict[str, str]) -> dict[str, str]:
    """What the source run was for (study=..., init_from): its record's tags, else its user tags.

    Not what describes how the old finish went (row, state, checkpoint ...).
    """
    text = ArtifactReader(store).text(source, RECORD_NAME)
    if text:
        return dict(RunRecord.from_json(text, f"run {source}'s record").tags)
    return user_tags(tags)
