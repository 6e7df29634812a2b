"""L0 regularization with hard-concrete gates (Louizos, Welling, Kingma, ICLR 2018, arXiv 1712.01312).

Rule: every weight (``granularity=weight``) or every group of weights (``group``: the input units of
a Linear layer, the output feature maps of a convolution) is multiplied by a stochastic gate that is
exactly 0 with a learned probability; the loss adds lambda / N times the expected number of nonzero
weights, and a weight whose deterministic test-time gate is 0 is removed. Specified in
docs/methods.md section 13.

Modules: ``gates`` (the hard-concrete distribution as pure functions), ``layers`` (gated Linear and
Conv2d), ``method`` (the registered ``l0``).
"""

from .gates import BETA, GAMMA, ZETA, eval_gate, prob_open, sample
from .layers import L0_LAYERS, GateSpec, L0Conv2d, L0Linear
from .method import L0, L0Config

__all__ = [
    "BETA",
    "GAMMA",
    "L0",
    "L0_LAYERS",
    "ZETA",
    "GateSpec",
    "L0Config",
    "L0Conv2d",
    "L0Linear",
    "eval_gate",
    "prob_open",
    "sample",
]
