"""Pruning masks that no optimiser can undo, and the exact-count selection rules pruning methods share.

A mask is a ``torch.nn.utils.parametrize`` parametrization: the layer's effective weight is
``where(mask, raw, 0)``. The gradient of a pruned raw entry is therefore zero and, whatever the
optimiser does to the raw value (momentum, Adam moments, weight decay), the weight the layer uses
stays exactly zero. The mask is a buffer, so it is part of ``state_dict`` and a checkpoint restores
it into a freshly converted model. Export removes the parametrizations, leaving plain layers that
hold zeros where the mask says.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparsebench.errors import ConfigError
from sparsebench.method import SparsityMethod

MASKABLE: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)

Target = tuple[nn.Module, str]
"""One prunable tensor: a layer and the parameter name (``weight`` or ``bias``)."""

Scorer = Callable[[nn.Module, str], torch.Tensor]
"""Per-entry importance of one tensor; the lowest scores are pruned first."""


class KeepMask(nn.Module):
    """Parametrization that zeroes the entries whose keep-mask is False."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().to(torch.bool).clone())

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        # where, not multiply: a raw value that drifted to inf/nan must still give an exact 0.
        return torch.where(self.mask, raw, 0.0)


def layer_paths(model: nn.Module, layer_types: tuple[type[nn.Module], ...] = MASKABLE) -> list[str]:
    """Paths of the prunable layers in registration order, which is network order for our tasks."""
    return [path for path, m in model.named_modules() if isinstance(m, layer_types)]


def targets(model: nn.Module, biases: bool = False) -> tuple[list[Target], list[Target]]:
    """(weights, biases) to prune, each in network order; biases only when asked for."""
    modules = dict(model.named_modules())
    weights = [(modules[p], "weight") for p in layer_paths(model)]
    bias_list = [(modules[p], "bias") for p in layer_paths(model) if biases and modules[p].bias is not None]
    return weights, bias_list


def mask_of(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The live keep-mask buffer of ``module.<name>``."""
    if not parametrize.is_parametrized(module, name):
        raise RuntimeError(f"{type(module).__name__}.{name} has no keep-mask; call attach_masks first")
    for p in module.parametrizations[name]:
        if isinstance(p, KeepMask):
            return p.mask
    raise RuntimeError(f"{type(module).__name__}.{name} is parametrized but not by a KeepMask")


def attach_masks(model: nn.Module, biases: bool = False) -> nn.Module:
    """Give every prunable tensor an all-True mask (idempotent), so the state dict has a fixed layout."""
    weights, bias_list = targets(model, biases)
    for module, name in weights + bias_list:
        if parametrize.is_parametrized(module, name):
            continue
        keep = torch.ones_like(getattr(module, name), dtype=torch.bool)
        parametrize.register_parametrization(module, name, KeepMask(keep))
    return model


def effective(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The tensor the layer computes with (raw with pruned entries zeroed), detached."""
    with torch.no_grad():
        return getattr(module, name).detach()


def set_mask(module: nn.Module, name: str, keep: torch.Tensor) -> None:
    with torch.no_grad():
        mask_of(module, name).copy_(keep)


def keep_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Weight keep-masks keyed by module path (copies), the shape the core's ``masks()`` wants."""
    return {path: mask_of(m).clone() for path, m in model.named_modules() if isinstance(m, MASKABLE)}


def strip_masks(model: nn.Module) -> nn.Module:
    """Bake every parametrization into a plain parameter (pruned entries become 0), in place.

    ``parametrize.remove_parametrizations`` is not used: it deletes the property from the layer's
    generated class, which a ``deepcopy`` shares with the original, so exporting a copy would break
    the trained model. Here only the instance is touched.
    """
    for module in list(model.modules()):
        if not parametrize.is_parametrized(module):
            continue
        baked = {
            name: nn.Parameter(getattr(module, name).detach().clone(), plist.original.requires_grad)
            for name, plist in module.parametrizations.items()
        }
        del module.parametrizations
        module.__class__ = type(module).__bases__[0]  # the class parametrize derived from
        for name, value in baked.items():
            module.register_parameter(name, value)
    return model


def pruned_count(sparsity: float, n: int) -> int:
    """floor(sparsity * n), immune to float noise such as 0.29 * 100 = 28.999999999999996."""
    exact = sparsity * n
    k = math.floor(exact)
    if exact - k > 1.0 - 1e-9 * max(1.0, exact):
        k += 1
    return max(0, min(n, k))


def prune_lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask removing exactly the ``k`` lowest scores; among equal scores the lower index goes first.

    O(n) with ``kthvalue`` instead of a full sort, so it stays cheap on 15M-weight models.
    """
    flat = scores.flatten()
    n = flat.numel()
    if k <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    if k >= n:
        return torch.zeros_like(scores, dtype=torch.bool)
    cutoff = flat.kthvalue(k).values
    below = flat < cutoff
    ties = flat == cutoff
    needed = k - int(below.sum())
    pruned = below | (ties & (ties.cumsum(0) <= needed))
    return (~pruned).view_as(scores)


def select_layerwise(scores: Sequence[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """Prune floor(s * n_l) entries of every tensor separately (uniform sparsity)."""
    return [prune_lowest(s, pruned_count(sparsity, s.numel())) for s in scores]


def select_global(scores: Sequence[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """Prune floor(s * sum n_l) entries by one joint ranking over all tensors (shrinkbench's global)."""
    if not scores:
        return []
    joint = torch.cat([s.flatten() for s in scores])
    keep = prune_lowest(joint, pruned_count(sparsity, joint.numel()))
    return [k.view_as(s) for k, s in zip(keep.split([s.numel() for s in scores]), scores, strict=True)]


def select(scores: Sequence[torch.Tensor], sparsity: float, scope: str) -> list[torch.Tensor]:
    if scope == "layer":
        return select_layerwise(scores, sparsity)
    if scope == "global":
        return select_global(scores, sparsity)
    raise ConfigError(f"method.scope must be layer or global, got {scope!r}")


def magnitude_scores(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """|w| of the kept entries and -1 for pruned ones, so a pruned weight is always pruned again."""
    return torch.where(mask_of(module, name), effective(module, name).abs(), -1.0)


def std_threshold_keep(weight: torch.Tensor, quality: float) -> torch.Tensor:
    """Han et al.'s rule: keep |w| >= quality * std(W), the std taken over the whole tensor."""
    return weight.abs() >= quality * weight.std()


def check_sparsity(value: float, key: str = "method.sparsity") -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{key} is the fraction of weights removed and must be in [0, 1), got {value}")


class MaskedMethod(SparsityMethod):
    """A method that prunes by mask: it keeps every layer standard and only edits keep-masks.

    Subclasses decide *when* and *by what score* to prune; this class owns the masks, the
    ``masks()`` report and the export.
    """

    layer_types = MASKABLE

    @property
    def prune_biases(self) -> bool:
        return bool(getattr(self.config, "prune_biases", False))

    def convert(self, model: nn.Module) -> nn.Module:
        return attach_masks(model, self.prune_biases)

    def prune(self, model: nn.Module, sparsity: float, scope: str, score: Scorer) -> None:
        """Bring weights (and biases, separately) to ``sparsity``; masks only ever lose entries."""
        for group in targets(model, self.prune_biases):
            keeps = select([score(m, n) for m, n in group], sparsity, scope)
            for (module, name), keep in zip(group, keeps, strict=True):
                set_mask(module, name, keep & mask_of(module, name))

    def masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return keep_masks(model)

    def export(self, model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
        exported = strip_masks(copy.deepcopy(model))
        modules = dict(exported.named_modules())
        with torch.no_grad():  # honour masks that differ from the live ones (e.g. a threshold curve)
            for path, mask in masks.items():
                modules[path].weight.masked_fill_(~mask.to(modules[path].weight.device), 0.0)
        return exported
