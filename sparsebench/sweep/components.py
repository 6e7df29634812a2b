"""Optuna samplers and pruners named in a spec (``tpe``, ``nsga-ii``, ``MedianPruner``) become instances.

Any class optuna exports can be used with its own keyword arguments, so a new optuna sampler needs no
change here; names and arguments are checked against the class so a typo is an error, not a default.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from sparsebench.errors import ConfigError

if TYPE_CHECKING:
    from sparsebench.sweep.spec import SweepSpec


def build_sampler(spec: SweepSpec, seed_salt: tuple[int, ...] = ()) -> Any:
    """The spec's optuna sampler, or None for optuna's default (TPE, which also handles several objectives).

    ``seed_salt`` varies a seeded sampler between workers and between restarts: the same seed in
    two workers (or in a resumed sweep) would otherwise propose the same parameters again.
    """
    import optuna
    import optuna.samplers as module

    if spec.sampler is None:
        return None
    kwargs = dict(spec.sampler.kwargs)
    if seed_salt and kwargs.get("seed") is not None:
        import numpy as np

        kwargs["seed"] = int(np.random.SeedSequence([int(kwargs["seed"]), *seed_salt]).generate_state(1)[0])
    cls = _find_class(module, optuna.samplers.BaseSampler, spec.sampler.name, "sampler")
    return _construct(cls, kwargs, "sampler")


def prunable(spec: SweepSpec) -> bool:
    """Trials report their validation metric per epoch, so only a single val_metric objective prunes."""
    return not spec.multi_objective and spec.objectives[0].metric == "val_metric"


def build_pruner(spec: SweepSpec) -> Any:
    """The spec's optuna pruner; optuna's MedianPruner by default, none when nothing can be pruned."""
    import optuna
    import optuna.pruners as module

    explicit = spec.pruner is not None and _normal(spec.pruner.name) not in ("nop", "none")
    if not prunable(spec):
        if explicit:
            raise ConfigError(
                "pruner: only a single val_metric objective can be pruned (optuna cannot prune "
                "multi-objective studies); remove the pruner key"
            )
        return optuna.pruners.NopPruner()
    if spec.pruner is None:
        return optuna.pruners.MedianPruner()
    if not explicit:
        return optuna.pruners.NopPruner()
    cls = _find_class(module, optuna.pruners.BasePruner, spec.pruner.name, "pruner")
    return _construct(cls, dict(spec.pruner.kwargs), "pruner")


def _find_class(module: Any, base: type, name: str, what: str) -> type:
    classes = {
        _normal(n): obj
        for n, obj in vars(module).items()
        if inspect.isclass(obj) and issubclass(obj, base) and obj is not base and not n.startswith("_")
    }
    key = _normal(name)
    if key not in classes:
        known = sorted(c.__name__ for c in classes.values())
        raise ConfigError(f"{what}.name: unknown optuna {what} {name!r}; choose from {', '.join(known)}")
    return classes[key]


def _construct(cls: type, kwargs: dict[str, Any], what: str) -> Any:
    accepted = inspect.signature(cls.__init__).parameters
    for key in kwargs:
        if key not in accepted or key == "self":
            raise ConfigError(f"{what}.{key}: {cls.__name__} takes no argument {key!r}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what}: {cls.__name__}({kwargs}) failed: {exc}") from exc


def _normal(name: str) -> str:
    """``TPESampler``, ``tpe``, ``nsga-ii`` and ``MedianPruner`` all name their class."""
    key = name.lower().replace("_", "").replace("-", "")
    for suffix in ("sampler", "pruner"):
        key = key.removesuffix(suffix)
    return key
