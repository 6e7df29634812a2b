"""Pruning a trained model to an exact sparsity by the method's own ranking (matched-sparsity comparisons).

A method that prunes by a threshold (Sparse VD's log alpha, L0's gates) lands wherever training
leaves it; comparing methods at matched sparsity needs every one of them at the same fraction removed.
Ranking all prunable weights together by the method's own score and removing exactly floor(s * N) of
the lowest moves the method's threshold to the point that hits the target, with no search and no
retraining: Gale, Elsen and Hooker (2019) tune Sparse VD's log alpha threshold to a target the same
way. One trained model then gives every target of a comparison (docs/matched-sparsity.md).

A method offers this through two options, ``sparsity`` (the run's own exact target; 0 keeps the
method's rule) and ``curve_sparsities`` (more targets its threshold curve reads), and names the
curve's axis with ``ExactAxis``. Training is unchanged: the per-epoch validation still reads the
method's own rule. Once training is done, ``calibrate`` pins the run's exact masks into its layers
(``pin_exact_masks``), so the evaluation pass computes what the exported model computes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from sparsebench.errors import ConfigError
from sparsebench.toolkit.masking import pruned_count

SPARSITY_AXIS = "sparsity"
"""``curve_axis`` of a curve whose levels are exact fractions of weights removed."""


def exact_keep(
    primary: Mapping[str, torch.Tensor],
    sparsity: float,
    secondary: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Keep-masks removing exactly floor(sparsity * N) of all N entries, the lowest scores first.

    One ranking over every tensor (the methods' thresholds are global too). Entries are ordered by
    ``primary``; equal primary scores by ``secondary`` (e.g. |w| where log alpha sits at its clamp),
    then by position, the lower first, so the masks are a pure function of the scores.
    """
    keys = list(primary)
    if not keys:
        return {}
    flat = torch.cat([primary[k].detach().flatten() for k in keys])
    order = torch.arange(flat.numel(), device=flat.device)
    if secondary is not None:
        second = torch.cat([secondary[k].detach().flatten().to(flat.device) for k in keys])
        order = torch.sort(second, stable=True).indices
    order = order[torch.sort(flat[order], stable=True).indices]
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    keep[order[: pruned_count(sparsity, flat.numel())]] = False
    sizes = [primary[k].numel() for k in keys]
    return {k: part.view_as(primary[k]) for k, part in zip(keys, keep.split(sizes), strict=True)}


def check_exact_options(sparsity: float, curve_sparsities: Sequence[float]) -> None:
    """``method.sparsity`` in [0, 1), curve targets in (0, 1), and curve targets only with a sparsity."""
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(
            f"method.sparsity is the exact fraction of weights removed, in [0, 1) (0 = the method's own "
            f"threshold rule), got {sparsity}"
        )
    bad = [s for s in curve_sparsities if not 0.0 < s < 1.0]
    if bad:
        raise ConfigError(f"method.curve_sparsities must lie in (0, 1), got {bad}")
    if curve_sparsities and sparsity == 0.0:
        raise ConfigError(
            "method.curve_sparsities needs method.sparsity > 0: the curve is read at exact sparsities "
            "only when the run's own masks are (set method.sparsity to one of the targets)"
        )


def exact_levels(sparsity: float, curve_sparsities: Sequence[float]) -> tuple[float, ...]:
    """The curve's levels: the run's own target and the extra ones, ascending, each once."""
    return tuple(sorted({float(sparsity), *(float(s) for s in curve_sparsities)}))


EXACT_MASK = "exact_mask"
"""Name of the non-persistent buffer a layer's evaluation pass multiplies its weight by, once pinned."""


def pin_exact_masks(layers: Mapping[str, torch.nn.Module], masks: Mapping[str, torch.Tensor]) -> None:
    """Give each layer its exact keep-mask as a buffer its evaluation pass applies (see the module).

    Non-persistent: it is no checkpoint's state, since ``calibrate`` sets it again whenever a run
    finishes (``--resume``, ``--refinish``), from the trained parameters alone.
    """
    for path, layer in layers.items():
        layer.register_buffer(EXACT_MASK, masks[path].detach().clone(), persistent=False)


def pinned_mask(layer: torch.nn.Module) -> torch.Tensor | None:
    """The exact keep-mask pinned on ``layer``, or None (the method's own rule applies)."""
    return getattr(layer, EXACT_MASK, None)


class ExactAxis:
    """``curve_axis`` of a method with exact-sparsity options: ``sparsity`` once ``config.sparsity`` > 0.

    Read on the class (``METHODS.get(name).curve_axis``) it gives the method's own axis; read on an
    instance it follows the instance's config, which command-line overrides edit after construction.
    """

    def __init__(self, own: str) -> None:
        self.own = own

    def __get__(self, obj: object, owner: type | None = None) -> str:
        if obj is None:
            return self.own
        return SPARSITY_AXIS if getattr(obj.config, "sparsity", 0.0) > 0.0 else self.own  # type: ignore[attr-defined]
