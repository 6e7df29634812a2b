"""Sparse Variational Dropout (Molchanov, Ashukha, Vetrov, ICML 2017, arXiv 1701.05369).

Rule: every weight gets a Gaussian posterior N(theta, sigma^2) with its own dropout rate
alpha = sigma^2 / theta^2, learned under a log-uniform prior; a weight whose log alpha reaches 3
is removed (``fused.keeps``). Specified in docs/methods.md sections 1-2.

Modules: ``fused`` (log alpha, the keep rule, the LRT variance and KL, one autograd node),
``layers`` (Linear and Conv2d with posteriors), ``recurrent`` (embedding, softmax and LSTM layers
for language models, Chirkova et al. 2018), ``method`` (the registered ``sparse_vd``).
"""

from .fused import (
    EPS_THETA,
    LOG_ALPHA_MAX,
    LOG_ALPHA_MIN,
    FusedSVD,
    clamped_log_alpha,
    fused_backward,
    fused_forward,
    keeps,
    kl_side,
    weight_side,
)
from .layers import SVD_LAYERS, Conv2dSVD, LinearSVD, SparseVDConfig, _SparseVDMixin
from .method import SparseVD

__all__ = [
    "EPS_THETA",
    "LOG_ALPHA_MAX",
    "LOG_ALPHA_MIN",
    "SVD_LAYERS",
    "Conv2dSVD",
    "FusedSVD",
    "LinearSVD",
    "SparseVD",
    "SparseVDConfig",
    "_SparseVDMixin",
    "clamped_log_alpha",
    "fused_backward",
    "fused_forward",
    "keeps",
    "kl_side",
    "weight_side",
]
