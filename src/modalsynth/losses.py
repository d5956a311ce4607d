"""The conditional GAN objective of the paper's eq. (1): adversarial loss + lambda * L1."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

SSIM_WINDOW, SSIM_SIGMA = 11, 1.5  # the evaluation's window (metrics.ssim_map), so the term asks for what is scored


def adversarial_loss(logits: torch.Tensor, is_real: bool) -> torch.Tensor:
    """Binary cross-entropy of discriminator logits against 'real' (1) or 'fake' (0): the log terms of eq. (1)."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, 1.0 if is_real else 0.0))


def l1_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over every voxel: the paper's L1 term."""
    return (fake - real).abs().mean()


def gradient_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Gradient difference: the mean |difference| of the forward differences of `fake` and `real` along each spatial
    axis of (N, C, D, H, W), averaged over the axes; it asks for edges (the cortex, sulci) where L1 accepts a blur."""
    axes = range(2, fake.ndim)
    return torch.stack([(fake.diff(dim=a) - real.diff(dim=a)).abs().mean() for a in axes]).mean()


def _gaussian_blur(maps: torch.Tensor) -> torch.Tensor:
    """Each channel of (N, C, *spatial) filtered by the separable SSIM Gaussian, 'valid' borders (as MONAI's SSIM)."""
    taps = torch.arange(SSIM_WINDOW, dtype=maps.dtype, device=maps.device) - (SSIM_WINDOW - 1) / 2
    kernel = torch.exp(-(taps**2) / (2 * SSIM_SIGMA**2))
    kernel = kernel / kernel.sum()
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[maps.ndim - 2]
    channels = maps.shape[1]
    for axis in range(maps.ndim - 2):
        shape = [1] * (maps.ndim - 2)
        shape[axis] = SSIM_WINDOW
        maps = conv(maps, kernel.view(1, 1, *shape).expand(channels, 1, *shape), groups=channels)
    return maps


def ssim_loss(fake: torch.Tensor, real: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """1 - the mean SSIM of single-channel (N, 1, *spatial) volumes in the network's [-1, 1] range (data range 2):
    MONAI's SSIMLoss with its Gaussian window applied one axis at a time, which a CPU step can afford (the dense 11^3
    kernel takes seconds per 64^3 patch)."""
    mx, my, sxx, syy, sxy = _gaussian_blur(torch.cat([fake, real, fake * fake, real * real, fake * real], 1)).unbind(1)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vx, vy, cov = sxx - mx * mx, syy - my * my, sxy - mx * my
    ssim = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return 1 - ssim.mean()


@dataclass(frozen=True)
class LossWeights:
    """How much each reconstruction term weighs beside the adversarial one (0: the term is off)."""

    l1: float = 100.0  # the paper's lambda
    gradient: float = 0.0  # gradient difference (edges)
    ssim: float = 0.0  # 1 - SSIM (local structure, the measure the quality protocol scores)


def generator_loss(
    d_fake_logits: torch.Tensor, fake: torch.Tensor, real: torch.Tensor, weights: LossWeights
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Generator objective: adv(D(x, G(x)) -> real) + weights.l1 * L1(G(x), y), plus the gradient-difference and
    SSIM terms whose weights are above 0; parts detached for logging."""
    adv_part = adversarial_loss(d_fake_logits, True)
    l1_part = l1_loss(fake, real)
    loss, parts = adv_part + weights.l1 * l1_part, {"adv": adv_part.detach(), "l1": l1_part.detach()}
    for name, weight, term in (("grad", weights.gradient, gradient_loss), ("ssim", weights.ssim, ssim_loss)):
        if weight > 0:
            value = term(fake, real)
            loss, parts[name] = loss + weight * value, value.detach()
    return loss, parts


def discriminator_loss(
    d_real_logits: torch.Tensor, d_fake_logits: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Discriminator objective, halved as in pix2pix: 0.5 * (adv(D(x, y) -> real) + adv(D(x, G(x)) -> fake))."""
    real_part = adversarial_loss(d_real_logits, True)
    fake_part = adversarial_loss(d_fake_logits, False)
    return 0.5 * (real_part + fake_part), {"real": real_part.detach(), "fake": fake_part.detach()}
