"""The conditional GAN objective of the paper's eq. (1): adversarial loss + lambda * L1."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import torch
import torch.nn.functional as F
from monai.networks.layers.convutils import gaussian_1d
from torch import nn

from .data.views import Box
from .metrics import SSIM_K1, SSIM_K2, SSIM_SIGMA, SSIM_TRUNCATE, SSIM_WINDOW

AdversarialMode = Literal["bce", "lsgan"]


class AdversarialLoss(nn.Module):
    """Loss pushing discriminator outputs towards 'real' (1) or 'fake' (0).

    'bce': binary cross-entropy on logits (the log terms of eq. (1)); 'lsgan': mean squared error to 1/0.
    """

    def __init__(self, mode: AdversarialMode = "bce"):
        super().__init__()
        if mode not in ("bce", "lsgan"):
            raise ValueError(f"adversarial loss mode must be 'bce' or 'lsgan', got {mode!r}")
        self.mode = mode

    def forward(self, logits: torch.Tensor, is_real: bool) -> torch.Tensor:
        target = torch.full_like(logits, 1.0 if is_real else 0.0)
        if self.mode == "bce":
            return F.binary_cross_entropy_with_logits(logits, target)
        return F.mse_loss(logits, target)


def l1_loss(fake: torch.Tensor, real: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error; with a weight (e.g. a foreground mask, broadcastable) the weighted mean."""
    error = (fake - real).abs()
    if weight is None:
        return error.mean()
    weight = weight.to(error.dtype).expand_as(error)
    return (error * weight).sum() / weight.sum().clamp_min(torch.finfo(error.dtype).tiny)


@lru_cache(maxsize=32)
def _gaussian_smoothing_matrix(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(n, n) matrix M with v @ M = v smoothed by the SSIM window along its last axis, borders reflected as in
    scipy's 'reflect' (d c b a | a b c d), the evaluation's border rule. Built once per axis length, device and dtype
    (it is a constant of the loss, not recomputed every step)."""
    taps = gaussian_1d(torch.tensor(SSIM_SIGMA), truncated=SSIM_TRUNCATE, approx="sampled", normalize=True)
    radius = len(taps) // 2
    out = torch.arange(n).repeat_interleave(len(taps))
    src = out + torch.arange(-radius, radius + 1).repeat(n)
    for _ in range(2):  # a window wider than the axis can reflect twice
        src = torch.where(src < 0, -src - 1, src)
        src = torch.where(src >= n, 2 * n - 1 - src, src)
    matrix = torch.zeros(n, n, dtype=torch.float64)
    matrix.index_put_((src.clamp(0, n - 1), out), taps.double().repeat(n), accumulate=True)
    return matrix.to(device=device, dtype=dtype)


def _smooth(volume: torch.Tensor) -> torch.Tensor:
    """Gaussian-smooth the spatial axes of (N, C, *spatial) with the SSIM window, one matrix product per axis."""
    for axis in range(2, volume.ndim):
        moved = volume.movedim(axis, -1)
        moved = moved @ _gaussian_smoothing_matrix(moved.shape[-1], volume.device, volume.dtype)
        volume = moved.movedim(-1, axis)
    return volume


def ssim_loss(fake: torch.Tensor, real: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """1 - mean SSIM over all voxels of (N, C, *spatial) tensors: the evaluation's SSIM (metrics.ssim_map) made
    differentiable, so a training term can aim at the score the project reports.

    Written by hand: MONAI's SSIMLoss convolves with the full 11^3 window (about 8 s per step for two 64^3 patches
    on one CPU thread) and its separable filter runs depthwise convolutions (0.6 s); three banded matrix products
    per map take 0.08 s.
    """
    channels = fake.shape[1]
    stack = torch.cat([fake, real, fake * fake, real * real, fake * real], 1)
    mu_f, mu_r, ff, rr, fr = _smooth(stack).split(channels, 1)
    n_window = SSIM_WINDOW ** (fake.ndim - 2)
    cov_norm = n_window / (n_window - 1)  # sample covariance, as scikit-image
    var_f, var_r = cov_norm * (ff - mu_f * mu_f), cov_norm * (rr - mu_r * mu_r)
    cov = cov_norm * (fr - mu_f * mu_r)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim = ((2 * mu_f * mu_r + c1) * (2 * cov + c2)) / ((mu_f * mu_f + mu_r * mu_r + c1) * (var_f + var_r + c2))
    return 1.0 - ssim.mean()


def generator_loss(
    d_fake_logits: torch.Tensor,
    fake: torch.Tensor,
    real: torch.Tensor,
    l1_weight: float,
    adv: AdversarialLoss,
    mask: torch.Tensor | None = None,
    ssim_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Generator objective: adv(D(x, G(x)) -> real) + l1_weight * L1(G(x), y) [+ ssim_weight * (1 - SSIM(G(x), y))];
    parts detached for logging."""
    adv_part = adv(d_fake_logits, True)
    l1_part = l1_loss(fake, real, mask)
    total = adv_part + l1_weight * l1_part
    parts = {"adv": adv_part.detach(), "l1": l1_part.detach()}
    if ssim_weight:
        ssim_part = ssim_loss(fake, real)
        total = total + ssim_weight * ssim_part
        parts["ssim"] = ssim_part.detach()
    return total, parts


def consistency_loss(fake: torch.Tensor, shared: list[tuple[Box, Box]]) -> torch.Tensor:
    """Mean absolute difference between the outputs for two views of one region on the voxels they share: `fake` holds
    the N first views, then the N second ones (`data.views.overlapping_views`); the mean over the N pairs."""
    n = len(shared)
    parts = [(fake[i][(slice(None), *a)] - fake[n + i][(slice(None), *b)]).abs().mean() for i, (a, b) in enumerate(shared)]
    return torch.stack(parts).mean()


def discriminator_loss(
    d_real_logits: torch.Tensor, d_fake_logits: torch.Tensor, adv: AdversarialLoss
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Discriminator objective, halved as in pix2pix: 0.5 * (adv(D(x, y) -> real) + adv(D(x, G(x)) -> fake))."""
    real_part = adv(d_real_logits, True)
    fake_part = adv(d_fake_logits, False)
    return 0.5 * (real_part + fake_part), {"real": real_part.detach(), "fake": fake_part.detach()}
