"""Memory layouts of the tensors a method derives from its conv weights.

On CPU the runner trains conv models channels-last (``sparsebench.run.loop.place_model``). An
element-wise op on a conv weight with one input channel (LeNet-5's conv1, shape (20, 1, 5, 5))
cannot tell channels-last from contiguous and returns contiguous strides; a convolution with that
weight then answers contiguous while its twin with the parameter answers channels-last. Mixed
pairs take oneDNN's slow paths forward and backward, and the noise drawn for an activation lands
on other positions in the other layout, so eager and compiled kernels would draw differently.
"""

from __future__ import annotations

import torch


def strided_like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``t`` (same shape and values) with ``ref``'s strides; a copy only when they differ.

    Meant for weights (small): the copy costs nothing next to the convolution that reads it.
    """
    if t.stride() == ref.stride():
        return t
    if t.shape != ref.shape:
        raise ValueError(f"strided_like: shapes differ ({tuple(t.shape)} vs {tuple(ref.shape)})")
    return torch.empty_strided(t.shape, ref.stride(), dtype=t.dtype, device=t.device).copy_(t)
