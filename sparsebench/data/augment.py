"""Image preprocessing and augmentation on whole batches on the device: no per-image Python.

CIFAR's recipe (methods.md section 9.3): per-channel standardisation once at load time, then in
training a random 32x32 crop of the image padded by 4 pixels and a horizontal flip of half the
images. Standardising first means the padding is 0, i.e. the per-channel mean colour.
ZCA whitening is available for fidelity to ars, which trained on ZCA-whitened CIFAR.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images (N, C, H, W) on the [0, 1] scale, shaped (C, 1, 1)."""
    x = images.to(torch.float32).div_(255.0)
    std, mean = torch.std_mean(x, dim=(0, 2, 3), keepdim=True)
    return mean[0], std[0]


def standardize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 images to float32 (x / 255 - mean) / std, one channel at a time via broadcasting."""
    return images.to(torch.float32).div_(255.0).sub_(mean).div_(std)


def zca_fit(images: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, W) of ZCA whitening fitted on uint8 training images; apply with ``zca_apply``.

    W = U diag(1 / sqrt(s + eps)) U^T from the eigendecomposition of the pixel covariance, with
    ars' regularisation eps = 1e-5 (methods.md section 2.9). Computed in float64: the smallest
    eigenvalues of CIFAR's 3072 x 3072 covariance are far below float32's resolution of the largest.
    """
    x = images.flatten(1).to(torch.float64).div_(255.0)
    mean = x.mean(dim=0)
    x -= mean
    cov = x.T @ x / x.shape[0]
    s, u = torch.linalg.eigh(cov)
    w = (u * (s.clamp_min(0.0) + eps).rsqrt()) @ u.T
    return mean.to(torch.float32), w.to(torch.float32)


def zca_apply(images: torch.Tensor, mean: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Whitened float32 images, same shape as ``images`` (W is symmetric, so x W = x W^T)."""
    x = images.flatten(1).to(torch.float32).div_(255.0).sub_(mean)
    return (x @ w).view(images.shape)


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop of the zero-padded batch plus a horizontal flip of each image with probability 1/2.

    The random draws come from ``generator`` (on its own device, usually the CPU where the runner
    keeps it) so a seed fixes the augmentation; the crop itself is one gather on ``x``'s device.
    """
    b, _, h, w = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator, device=generator.device)
    flips = torch.rand(b, generator=generator, device=generator.device) < 0.5
    offsets, flips = offsets.to(x.device, non_blocking=True), flips.to(x.device, non_blocking=True)
    padded = F.pad(x, (padding, padding, padding, padding))
    cols = torch.arange(w, device=x.device)
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # (b, h)
    cols = offsets[1, :, None] + torch.where(flips[:, None], w - 1 - cols, cols)  # (b, w), flipped in place
    batch = torch.arange(b, device=x.device)[:, None, None]
    # Advanced indices around a slice put their dimensions first: the result is (b, h, w, c).
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()
