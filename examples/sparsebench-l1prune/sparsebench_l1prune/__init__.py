"""An example third-party sparsebench method: an L1 penalty shrinks weights, a magnitude mask prunes them.

Installed, it registers itself through the ``sparsebench.methods`` entry point in pyproject.toml;
nothing in sparsebench names it.
"""

from sparsebench_l1prune.method import L1Prune, L1PruneConfig

__all__ = ["L1Prune", "L1PruneConfig"]
