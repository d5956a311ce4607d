"""The conditional GAN objective of the paper's eq. (1): adversarial loss + lambda * L1."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


def tail_loss(fake: torch.Tensor, real: torch.Tensor, fraction: float = 0.05) -> torch.Tensor:
    """Upper-tail distance: per item, the mean |difference| of the brightest `fraction` of `fake`'s and of `real`'s
    voxels, each sorted; it asks for the real image's bright tail (vessels, fat) wherever the generator puts it, so
    white matter is not left at the top of the range."""
    flat_fake, flat_real = fake.flatten(1), real.flatten(1)
    k = max(1, round(fraction * flat_fake.shape[1]))
    return (flat_fake.topk(k, dim=1).values - flat_real.topk(k, dim=1).values).abs().mean()


def generator_loss(
    d_fake_logits: torch.Tensor,
    fake: torch.Tensor,
    real: torch.Tensor,
    l1_weight: float,
    gradient_weight: float = 0.0,
    tail_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Generator objective: adv(D(x, G(x)) -> real) + l1_weight * L1(G(x), y), plus gradient_weight * the gradient
    difference and tail_weight * the upper-tail distance when above 0; parts detached for logging."""
    adv_part = adversarial_loss(d_fake_logits, True)
    l1_part = l1_loss(fake, real)
    loss, parts = adv_part + l1_weight * l1_part, {"adv": adv_part.detach(), "l1": l1_part.detach()}
    if gradient_weight > 0:
        edges = gradient_loss(fake, real)
        loss, parts["grad"] = loss + gradient_weight * edges, edges.detach()
    if tail_weight > 0:
        tail = tail_loss(fake, real)
        loss, parts["tail"] = loss + tail_weight * tail, tail.detach()
    return loss, parts


def discriminator_loss(
    d_real_logits: torch.Tensor, d_fake_logits: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Discriminator objective, halved as in pix2pix: 0.5 * (adv(D(x, y) -> real) + adv(D(x, G(x)) -> fake))."""
    real_part = adversarial_loss(d_real_logits, True)
    fake_part = adversarial_loss(d_fake_logits, False)
    return 0.5 * (real_part + fake_part), {"real": real_part.detach(), "fake": fake_part.detach()}
