"""What an exported model must be: standard layers only, with the task's own state-dict layout.

The runner checks every export with this before counting it, and the conformance suite checks
plugins with the same function, so a method that passes conformance finishes runs and a run's
exported model always loads into the task's model (``--init-from``, ``bench``, reports).
"""

from __future__ import annotations

from torch import nn

STANDARD_LAYERS: frozenset[type[nn.Module]] = frozenset(
    {
        nn.Linear,
        nn.Conv1d,
        nn.Conv2d,
        nn.Conv3d,
        nn.ConvTranspose1d,
        nn.ConvTranspose2d,
        nn.ConvTranspose3d,
        nn.LSTM,
        nn.GRU,
        nn.RNN,
        nn.Embedding,
        nn.BatchNorm1d,
        nn.BatchNorm2d,
        nn.BatchNorm3d,
        nn.LayerNorm,
    }
)
"""Exact types an exported model may use for layers that hold parameters."""

PARAMETRIC_BASES = (
    nn.Linear,
    nn.modules.conv._ConvNd,
    nn.RNNBase,
    nn.Embedding,
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
)


def export_problem(exported: nn.Module, reference: nn.Module) -> str | None:
    """What is wrong with ``exported`` as a model of standard layers shaped like ``reference``, or None.

    A layer type of the task's own model is allowed (a task may define its own parameter-holding
    modules); anything else holding parameters must be a standard layer. The state dicts must have
    the same keys and shapes: mask buffers or extra parameters left behind would make the export
    fail to load into the task's model.
    """
    own_types = {type(m) for m in reference.modules()}
    for path, m in exported.named_modules():
        parametric = isinstance(m, PARAMETRIC_BASES) or any(True for _ in m.parameters(recurse=False))
        if parametric and type(m) not in STANDARD_LAYERS and type(m) not in own_types:
            return f"exported {path or 'model'} is a {type(m).__qualname__}, not a standard layer"
    got = {k: tuple(v.shape) for k, v in exported.state_dict().items()}
    want = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    if got != want:
        extra, missing = sorted(set(got) - set(want)), sorted(set(want) - set(got))
        changed = sorted(k for k in set(got) & set(want) if got[k] != want[k])
        return (
            f"exported state dict differs from the task's model (extra {extra}, missing {missing}, "
            f"reshaped {changed})"
        )
    return None
