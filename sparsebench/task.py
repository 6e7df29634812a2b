"""The contract between the core and a task: data, model, loss and metric, recipe, paper numbers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from sparsebench.config import TrainConfig
from sparsebench.method import NoConfig


class Batches(Protocol):
    """A split held on the training device that yields mini-batches by index."""

    num_examples: int

    def iterate(
        self, batch_size: int, shuffle: bool, generator: torch.Generator | None, drop_last: bool
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def num_batches(self, batch_size: int, drop_last: bool) -> int: ...


@dataclass
class Splits:
    train: Batches
    val: Batches
    test: Batches


@dataclass(frozen=True)
class PaperResult:
    """A published number, quoted beside ours in tables (never recomputed)."""

    method: str
    error: float
    """Test error in % (or perplexity for language models)."""
    compression: float
    """Weights-only compression |W| / |W != 0|."""
    citation: str
    per_layer_sparsity: tuple[float, ...] | None = None
    source: str = ""
    note: str = ""


@dataclass
class Metric:
    """How a task scores predictions: a sum over examples, turned into one number."""

    name: str
    """Column header, e.g. ``error %`` or ``perplexity``."""
    unit: str = "%"
    higher_is_better: bool = False


class Task(ABC):
    """Base class of every task plugin."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    Config: ClassVar[type] = NoConfig
    metric: ClassVar[Metric] = Metric("error %")
    references: ClassVar[tuple[PaperResult, ...]] = ()
    data_files: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any | None = None) -> None:
        self.config = config if config is not None else self.Config()

    @abstractmethod
    def load_data(self, data_dir: Path, device: torch.device, val_size: int) -> Splits:
        """Read the dataset into tensors on ``device``; the validation split is carved from train."""

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A freshly initialised dense model of standard layers."""

    @abstractmethod
    def default_recipe(self, method: str) -> TrainConfig:
        """The paper's training recipe for ``method`` on this task."""

    @abstractmethod
    def example_input(self, device: torch.device) -> torch.Tensor:
        """One example (batch of 1), used to count FLOPs through forward hooks."""

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss over the batch (cross-entropy by default)."""
        return nn.functional.cross_entropy(output, target)

    def score_sum(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Sum of the per-example metric numerator (misclassified examples by default)."""
        return (output.argmax(dim=1) != target).sum()

    def finalize_metric(self, total: float, count: int) -> float:
        """Turn the summed numerator into the reported number (error % by default)."""
        return 100.0 * total / max(1, count)

    def on_pass_start(self, model: nn.Module, training: bool) -> None:
        """Called before each pass over a split (e.g. to reset a language model's carried state)."""

    def train_transform(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Batch-level augmentation on the device (none by default)."""
        return x

    def layer_order(self, model: nn.Module) -> list[str]:
        """Module paths of the prunable layers in network order."""
        return [
            path
            for path, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.LSTM, nn.Embedding))
        ]
