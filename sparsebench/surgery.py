"""Swap modules of a model in place, keeping their paths (so masks keyed by path stay valid)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def replace_modules(model: nn.Module, swap: Callable[[str, nn.Module], nn.Module | None]) -> nn.Module:
    """Call ``swap(path, module)`` on every descendant; a non-None result replaces the module.

    Replaced modules are not descended into, so a method's own layer is never converted twice.
    """
    if (new_root := swap("", model)) is not None:
        return new_root

    def visit(parent: nn.Module, prefix: str) -> None:
        for name, child in list(parent.named_children()):
            path = f"{prefix}.{name}" if prefix else name
            new = swap(path, child)
            if new is not None:
                setattr(parent, name, new)
            else:
                visit(child, path)

    visit(model, "")
    return model


def modules_of_type(model: nn.Module, types: type | tuple[type, ...]) -> dict[str, nn.Module]:
    return {path: m for path, m in model.named_modules() if isinstance(m, types)}
