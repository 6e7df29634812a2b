"""The contract between the core and a task: data, model, loss and metric, recipes, paper numbers.

Recipes are data, not code that knows method names: a task publishes its recipes by *kind*
(``RECIPE_KINDS``), a method names the kind it trains with (``SparsityMethod.recipe_kind``) and may
then adjust the recipe by what the task declares about itself (``Task.family``). A third-party
method or task gets exactly what a built-in would by declaring the same data.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from torch import nn

from sparsebench.config import TrainConfig
from sparsebench.errors import PluginError
from sparsebench.method import NoConfig

if TYPE_CHECKING:
    from sparsebench.method import SparsityMethod

STANDARD_RECIPE = "standard"

RECIPE_KINDS: dict[str, str] = {
    STANDARD_RECIPE: "the task's own training recipe; every method trains with it unless it asks for another",
    "per_weight_alpha": (
        "the recipe published for methods that learn a dropout rate alpha for every weight: Sparse VD "
        "(Molchanov et al. 2017, the ars scripts) and its recurrent form (Chirkova et al. 2018, sbrnn); "
        "on the larger tasks it fine-tunes a dense run with Adam at a small learning rate"
    ),
}
"""Recipe kinds a task may publish and a method may ask for. A task without a recipe of the kind a
method asks for trains that method with its standard recipe."""


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
    family: ClassVar[str] = ""
    """Tasks that share their data and reference recipes (``"mnist"`` for the two LeNets). Methods key
    their recipe changes on it (``SparsityMethod.adjust_recipe``), so a new task that declares a
    family gets the changes the built-in tasks of that family get; "" = a family of its own."""

    def __init__(self, config: Any | None = None) -> None:
        self.config = config if config is not None else self.Config()

    @abstractmethod
    def load_data(self, data_dir: Path, device: torch.device, val_size: int) -> Splits:
        """Read the dataset into tensors on ``device``; the validation split is carved from train."""

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A freshly initialised dense model of standard layers."""

    @abstractmethod
    def recipes(self) -> dict[str, TrainConfig]:
        """This task's published recipes keyed by kind (``RECIPE_KINDS``); ``"standard"`` is required.

        Called once per run after the task's options are set (a recipe may depend on them), and it
        must build fresh objects: the method and the command line edit the one returned.
        """

    def recipe_for(self, kind: str) -> TrainConfig:
        """The recipe of ``kind``, or the standard one where this task publishes none of that kind."""
        table = self.recipes()
        if STANDARD_RECIPE not in table:
            raise PluginError(f"task {self.name!r} publishes no {STANDARD_RECIPE!r} recipe in recipes()")
        return table.get(kind, table[STANDARD_RECIPE])

    def default_recipe(self, method: SparsityMethod | type[SparsityMethod] | str) -> TrainConfig:
        """The recipe ``method`` trains with on this task, before its own ``adjust_recipe``.

        A method name is accepted for the call sites that hold only the name; a name that is not
        registered (a test's ad-hoc method) gets the standard recipe.
        """
        return self.recipe_for(recipe_kind_of(method))

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


def recipe_kind_of(method: SparsityMethod | type[SparsityMethod] | str) -> str:
    """The recipe kind a method (instance, class or registered name) asks for."""
    if isinstance(method, str):
        from sparsebench.registry import METHODS

        if method not in METHODS:
            return STANDARD_RECIPE
        method = METHODS.get(method)
    return getattr(method, "recipe_kind", STANDARD_RECIPE)


def resolve_recipe(task: Task, method: SparsityMethod) -> TrainConfig:
    """The training recipe of a run before ``train.*`` overrides: the task's, as the method adjusts it."""
    return method.adjust_recipe(task, task.default_recipe(method))
