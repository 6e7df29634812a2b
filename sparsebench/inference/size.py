"""Bytes a model format holds: what it would take to store or ship it.

Dense tensors count numel x element size; the sparse layers count their CSR values, row pointers
and column indices (int32, as scipy stores them) through their ``storage_bytes``. Counting the
tensors rather than a pickle keeps the number independent of serialisation overhead.
"""

from __future__ import annotations

from torch import nn


def storage_bytes(model: nn.Module) -> int:
    total = 0
    for module in model.modules():
        own = getattr(module, "storage_bytes", None)
        if callable(own):
            total += int(own())
        tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total
