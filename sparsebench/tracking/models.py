"""MLflow's own formats for what a run used and made: the ``mlflow.pytorch`` model, dataset inputs.

The model is saved in MLflow's ``pt2`` format (a ``torch.export`` program): loading it runs no
pickled code, unlike the ``pickle`` format, so a model in a shared store is as safe to load as the
``weights_only`` state dict sparsebench reads itself.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import torch

EXAMPLE_BATCH = 2
"""Examples in the traced input: with one, ``torch.export`` fixes the batch size of the saved model at 1."""


def save_pytorch_model(model: torch.nn.Module, example: torch.Tensor, folder: Path) -> str:
    """Save ``model`` to ``folder`` as an ``mlflow.pytorch`` model; returns the ``model.flavor`` tag.

    The folder is made even when tracing fails, so the caller can still add its own files to it.
    """
    import mlflow.pytorch

    cpu_model = copy.deepcopy(model).cpu().eval()
    batch = torch.cat([example.detach().cpu()] * EXAMPLE_BATCH)
    requirements = [f"torch=={torch.__version__.split('+')[0]}"]
    try:
        with _quiet_export():
            mlflow.pytorch.save_model(
                cpu_model,
                str(folder),
                input_example=batch.numpy(),
                pip_requirements=requirements,
                serialization_format="pt2",
            )
        return "mlflow.pytorch (pt2)"
    except Exception as exc:  # a model torch.export cannot trace: the run goes on without the flavor
        folder.mkdir(parents=True, exist_ok=True)
        for leftover in folder.iterdir():
            if leftover.is_file():
                leftover.unlink()
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        return f"none: {reason}"


@contextlib.contextmanager
def _quiet_export() -> Any:
    """torch.export's notes about specialised dimensions and MLflow's INFO lines are not for users."""
    loggers = [logging.getLogger(n) for n in ("torch._export", "torch.export", "torch._dynamo", "mlflow")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            # pt2 archives group tensors that share storage; a trained model whose tensors are
            # views of one buffer gets "No complete tensor found in the group!", about GPU weights.
            warnings.filterwarnings("ignore", message="No complete tensor found", category=UserWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def dataset_inputs(name: str, splits: dict[str, Any], source: dict[str, str]) -> list[Any]:
    """One MLflow ``DatasetInput`` per split: ``name``, a digest of its contents, its size and role.

    A split holding its examples as tensors (``x``/``y``, or a token stream) becomes an MLflow numpy
    dataset (digest and shape profile computed by MLflow); any other split is described by its size.
    ``source`` (task, data files) says where it came from, without paths of this machine.
    """
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.entities import DatasetInput, InputTag

    origin = CodeDatasetSource(tags={k: str(v) for k, v in source.items()})
    inputs = []
    for role, split in splits.items():
        dataset = _dataset(name, split, origin)
        size = str(getattr(split, "num_examples", ""))
        tags = [InputTag("mlflow.data.context", role), InputTag("examples", size)]
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=tags))
    return inputs


def _dataset(name: str, split: Any, origin: Any) -> Any:
    import mlflow.data
    from mlflow.data.meta_dataset import MetaDataset

    features = getattr(split, "x", None)
    if features is None:
        features = getattr(split, "tokens", None)
    targets = getattr(split, "y", None)
    if isinstance(features, torch.Tensor):
        arrays = {"targets": targets.detach().cpu().numpy()} if isinstance(targets, torch.Tensor) else {}
        return mlflow.data.from_numpy(features.detach().cpu().numpy(), source=origin, name=name, **arrays)
    size = str(getattr(split, "num_examples", "?"))
    digest = hashlib.md5(f"{name}|{size}".encode()).hexdigest()[:8]
    return MetaDataset(origin, name=name, digest=digest)
