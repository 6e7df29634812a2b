"""THE training step and epoch: the runner, the conformance suite and ``bench --train`` all call these.

One step is: augment, forward, loss plus the method's regularizer, backward, clip, optimiser step,
the method's ``on_step_end``. Timing code passes a ``timed(phase)`` context factory to see where
a step's time goes; everyone else gets a no-op, so the loop users run is the loop that is timed
and tested.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sparsebench.config import TrainConfig
from sparsebench.errors import ConfigError
from sparsebench.method import SparsityMethod, StepContext
from sparsebench.task import Batches, Task

PhaseTimer = Callable[[str], AbstractContextManager[Any]]
"""``timed("forward")`` wraps one phase of a step; phases: data, forward, regularizer, backward,
optimizer, method_hooks."""

PROGRESS_EVERY = 50
"""Steps between the loss reads that sync the device (progress bar, divergence check)."""


def untimed(phase: str) -> AbstractContextManager[Any]:
    """The timer of normal training: nothing measured."""
    return contextlib.nullcontext()


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
    if cfg.lr_schedule == "exponential_after":  # Zaremba: constant for lr_step epochs, then x lr_decay
        return cfg.lr_decay ** max(0, e + 1 - cfg.lr_step)
    raise ConfigError(f"unknown train.lr_schedule {cfg.lr_schedule!r}")


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The recipe's optimiser over every trainable parameter, fused where the device allows."""
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


def autocast(device: torch.device, enabled: bool, on_cpu: bool = False) -> AbstractContextManager[Any]:
    """bf16 autocast (matmuls and convolutions in bf16, reductions in fp32): on CUDA when ``enabled``,
    on CPU only when ``on_cpu`` too, so a CPU run stays fp32 unless asked (``train.cpu_amp``)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if enabled and on_cpu and device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def place_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move a model to the training device, its convolution weights channels-last on CPU.

    oneDNN's convolutions and max-pooling run faster on channels-last tensors; with the weights
    in that layout the activations follow (measured on LeNet-5 with ``sparsebench bench --train``).
    Convolutions are found by their 4-D weights, not their class: a method's own conv layer
    (group_nj's ``GroupConv2d``) is not an ``nn.Conv2d`` and needs the layout as much.
    """
    model = model.to(device)
    if device.type == "cpu" and any(p.dim() == 4 for p in model.parameters()):
        model = model.to(memory_format=torch.channels_last)
    return model


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


def current_sparsity(method: SparsityMethod, model: nn.Module) -> float:
    """% of prunable weights the method's masks remove right now (for progress and curves)."""
    masks = method.masks(model)
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return 100.0 * (total - kept) / max(1, total)


@dataclass
class StepResult:
    """What one step leaves behind: detached values, so keeping them holds no graph."""

    loss: torch.Tensor
    """Data loss plus regularizer."""
    regularizer: torch.Tensor | None
    output_shape: tuple[int, ...]


@dataclass
class Trainer:
    """A converted model, its optimiser and the recipe: everything one training step needs."""

    task: Task
    method: SparsityMethod
    model: nn.Module
    optimizer: torch.optim.Optimizer
    cfg: TrainConfig
    device: torch.device
    num_train: int
    """N of the ELBO: training examples (tokens for language models)."""
    steps_per_epoch: int

    def context(self, epoch: int, step: int) -> StepContext:
        return StepContext(epoch, step, self.steps_per_epoch, self.cfg.epochs, self.num_train, self.optimizer)

    def step(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        ctx: StepContext,
        generator: torch.Generator,
        timed: PhaseTimer = untimed,
    ) -> StepResult:
        """One optimiser step on a batch, every hook of the method in its place."""
        task, method, model, cfg = self.task, self.method, self.model, self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(cfg, ctx.epoch, ctx.step)
        with timed("data"):
            x = task.train_transform(x, generator)
        with autocast(self.device, cfg.amp, cfg.cpu_amp):
            with timed("forward"):
                out = model(x)
                loss = task.loss(out, y)
            with timed("regularizer"):
                reg = method.regularizer(model, ctx)
                total = loss if reg is None else loss + reg
        with timed("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        with timed("optimizer"):
            self.optimizer.step()
        with timed("method_hooks"):
            method.on_step_end(model, ctx)
        return StepResult(total.detach(), None if reg is None else reg.detach(), tuple(out.shape))


def start_training(trainer: Trainer, train: Batches, generator: torch.Generator) -> None:
    """``on_train_start`` with the first batch exactly as the first step will see it.

    The batch is drawn with a copy of the shuffle generator, so the training stream (and every run
    that predates the hook) is the same as without it.
    """
    peek = torch.Generator(device=generator.device).set_state(generator.get_state())
    x, y = next(iter(train.iterate(trainer.cfg.batch_size, True, peek, drop_last=True)))
    x = trainer.task.train_transform(x, peek)
    trainer.method.on_train_start(trainer.model, (x, y), trainer.context(0, 0))


@dataclass
class EpochResult:
    train_loss: float
    regularizer: float
    steps: int


def train_epoch(
    trainer: Trainer,
    train: Batches,
    epoch: int,
    first_step: int,
    generator: torch.Generator,
    on_progress: Callable[[int, float], None] | None = None,
) -> EpochResult:
    """One pass over the training split; the loss is read every ``PROGRESS_EVERY`` steps.

    ``on_progress(steps done in this epoch, mean loss so far)`` is called at each read. A loss that
    is not finite raises ``FloatingPointError``, which the caller turns into a user-facing message.
    """
    cfg = trainer.cfg
    trainer.model.train()
    trainer.task.on_pass_start(trainer.model, training=True)
    loss_sum = torch.zeros((), device=trainer.device)
    reg_value, n = 0.0, trainer.steps_per_epoch
    for i, (x, y) in enumerate(train.iterate(cfg.batch_size, True, generator, drop_last=True)):
        result = trainer.step(x, y, trainer.context(epoch, first_step + i), generator)
        loss_sum += result.loss
        if (i + 1) % PROGRESS_EVERY == 0 or i + 1 == n:
            mean_loss = float(loss_sum) / (i + 1)  # one device sync every PROGRESS_EVERY steps
            if not math.isfinite(mean_loss):
                raise FloatingPointError(
                    f"loss became {mean_loss} in epoch {epoch + 1}, step {first_step + i + 1}"
                )
            reg_value = float(result.regularizer) if result.regularizer is not None else 0.0
            if on_progress is not None:
                on_progress(i + 1, mean_loss)
    return EpochResult(float(loss_sum) / n, reg_value, n)
