"""Group-sparsity machinery shared by the two Bayesian Compression methods (Louizos et al. 2017).

Rule shared by ``group_nj`` and ``group_hs``: every group (an input neuron of a Linear layer, an
output filter of a Conv2d layer) has a random scale z that multiplies all of its weights,
w = z * w~, with q(w~) = N(mu, sigma^2) under an N(0, 1) prior and a variational bias under an
N(0, 1) prior; the two methods differ only in the prior and posterior of z (``GroupScale``).
Specified in docs/methods.md section 4.

Modules: ``layers`` (the group layers and ``GroupScale``), ``chain`` (removals that propagate
to the neighbouring layers), ``thresholds`` (the automatic per-layer threshold), ``method``
(``GroupMethod``: conversion, KL, calibration, masks, export, posterior variances).
"""

from .chain import Link, chain_links, propagate, weight_mask
from .layers import GROUP_LAYERS, INIT_LOGVAR, INIT_STD, GroupConv2d, GroupLinear, GroupScale
from .method import GroupConfig, GroupMethod, bc_reinit_
from .thresholds import MIN_SEPARATION, SCORE_CLIP, MixtureFit, auto_threshold, fit_two_gaussians

__all__ = [
    "GROUP_LAYERS",
    "INIT_LOGVAR",
    "INIT_STD",
    "MIN_SEPARATION",
    "SCORE_CLIP",
    "GroupConfig",
    "GroupConv2d",
    "GroupLinear",
    "GroupMethod",
    "GroupScale",
    "Link",
    "MixtureFit",
    "auto_threshold",
    "bc_reinit_",
    "chain_links",
    "fit_two_gaussians",
    "propagate",
    "weight_mask",
]
