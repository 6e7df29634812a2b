"""Stop and resume: a method's state must survive the round trip a checkpoint makes.

A checkpoint holds the model's and the optimiser's state dicts and the random state, nothing else,
and ``--resume`` builds a fresh method object from the configuration. A method that keeps masks or
schedules on the method object instead of in the model passes every single-process check, then
finishes a resumed run somewhere else (a pruning method resumed after epoch 1 ended at 1.1x instead
of 10x). This check trains a few steps straight through, and again with a stop in the middle that
goes through exactly what a checkpoint keeps, and compares the masks.
"""

from __future__ import annotations

import copy
import io

import torch

from sparsebench.method import SparsityMethod
from sparsebench.run.loop import Trainer, build_optimizer
from sparsebench.task import Task
from sparsebench.testing.checks import CPU, Setup, _fail, prepare, step_schedule


def _trainer(setup: Setup, per_epoch: int) -> Trainer:
    model, cfg = setup.model, setup.recipe
    return Trainer(
        setup.task, setup.method, model, build_optimizer(cfg, model), cfg, CPU, setup.num_train, per_epoch
    )


def _take_steps(
    trainer: Trainer, setup: Setup, steps: list[int], per_epoch: int, generator: torch.Generator
) -> None:
    trainer.model.train()
    setup.task.on_pass_start(trainer.model, training=True)
    for step in steps:
        trainer.step(setup.x, setup.y, trainer.context(step // per_epoch, step), generator)


def _through_a_checkpoint(payload: dict) -> dict:
    """What ``torch.save`` then ``torch.load(weights_only=True)`` give back, as ``--resume`` reads it."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def check_resume_keeps_state(
    method: SparsityMethod, task: Task, steps: int = 4, batch_size: int = 8, seed: int = 0
) -> None:
    """Masks after ``steps`` steps equal those after a stop half-way and a resume in a fresh object."""

    def fresh() -> Setup:
        return prepare(type(method)(copy.deepcopy(method.config)), task, batch_size=batch_size, seed=seed)

    whole = fresh()
    per_epoch, schedule = step_schedule(whole.recipe.epochs, steps)
    half = len(schedule) // 2
    straight = _trainer(whole, per_epoch)
    whole.method.on_train_start(whole.model, (whole.x, whole.y), straight.context(0, 0))
    _take_steps(straight, whole, schedule, per_epoch, torch.Generator().manual_seed(seed))
    expected = whole.method.masks(whole.model)

    first = fresh()
    before = _trainer(first, per_epoch)
    generator = torch.Generator().manual_seed(seed)
    first.method.on_train_start(first.model, (first.x, first.y), before.context(0, 0))
    _take_steps(before, first, schedule[:half], per_epoch, generator)
    saved = _through_a_checkpoint(
        {
            "model": first.model.state_dict(),
            "optimizer": before.optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "shuffle": generator.get_state(),
        }
    )
    second = fresh()  # a new method object and model, as --resume builds them
    second.model.load_state_dict(saved["model"])
    after = _trainer(second, per_epoch)
    after.optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["rng"])
    generator = torch.Generator().manual_seed(seed)
    generator.set_state(saved["shuffle"])
    _take_steps(after, second, schedule[half:], per_epoch, generator)
    got = second.method.masks(second.model)
    differ = sorted(k for k in expected if k not in got or not torch.equal(expected[k], got[k]))
    if differ or set(got) != set(expected):
        _fail(
            method,
            f"masks after a stop and --resume differ from an uninterrupted run ({differ or sorted(got)}): "
            "keep all state in the model (parameters or buffers); a checkpoint holds only the model's and "
            "optimiser's state dicts, and resume builds a new method object",
        )
