"""torch.compile for the small element-wise kernels of the methods, built once per function.

Methods fuse passes over weights or activations into single kernels this way; long runs switch
them on (``train.compile``), short runs and tests use the eager functions, which compute the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_COMPILED: dict[str, Callable[..., Any]] = {}

# One compiled graph per tensor shape and flag combination. A sweep worker runs many trials in one
# process (several layers, both flags); the default limit of 8 graphs per function would fail the
# ninth with fullgraph=True.
RECOMPILE_LIMIT = 64


def compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` under torch.compile, built on first use (compiling takes seconds per shape)."""
    name = f"{fn.__module__}.{fn.__qualname__}"
    if name not in _COMPILED:
        import torch
        import torch._dynamo

        config = torch._dynamo.config
        limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
        setattr(config, limit, max(getattr(config, limit), RECOMPILE_LIMIT))
        _COMPILED[name] = torch.compile(fn, fullgraph=True, dynamic=False)
    return _COMPILED[name]
