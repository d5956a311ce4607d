"""The conditional GAN objective of the paper's eq. (1): adversarial loss + lambda * L1."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def adversarial_loss(logits: torch.Tensor, is_real: bool) -> torch.Tensor:
    """Binary cross-entropy of discriminator logits against 'real' (1) or 'fake' (0): the log terms of eq. (1)."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, 1.0 if is_real else 0.0))


def l1_loss(fake: torch.Tensor, real: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error; with a weight (e.g. a foreground mask, broadcastable) the weighted mean."""
    error = (fake - real).abs()
    if weight is None:
        return error.mean()
    weight = weight.to(error.dtype).expand_as(error)
    return (error * weight).sum() / weight.sum().clamp_min(torch.finfo(error.dtype).tiny)


def distribution_loss(fake: torch.Tensor, real: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1-D Wasserstein distance between the intensities of `fake` and `real` inside `mask`, per item (N, 1, ...):
    the mean |difference| of their sorted values, so it asks for the real spread of intensities (its bright tail
    included) wherever the generator puts them; the mean over items with any voxel in the mask."""
    distances = []
    for f, r, m in zip(fake, real, mask > 0.5):
        if m.any():
            distances.append((torch.sort(f[m]).values - torch.sort(r[m]).values).abs().mean())
    return torch.stack(distances).mean() if distances else fake.sum() * 0.0


def generator_loss(
    d_fake_logits: torch.Tensor,
    fake: torch.Tensor,
    real: torch.Tensor,
    l1_weight: float,
    mask: torch.Tensor | None = None,
    distribution: tuple[float, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Generator objective: adv(D(x, G(x)) -> real) + l1_weight * L1(G(x), y), plus weight * `distribution_loss`
    inside the brain mask when `distribution` = (weight, brain mask) is given; parts detached for logging."""
    adv_part = adversarial_loss(d_fake_logits, True)
    l1_part = l1_loss(fake, real, mask)
    loss, parts = adv_part + l1_weight * l1_part, {"adv": adv_part.detach(), "l1": l1_part.detach()}
    if distribution is not None:
        weight, brain = distribution
        spread = distribution_loss(fake, real, brain)
        loss, parts["dist"] = loss + weight * spread, spread.detach()
    return loss, parts


def discriminator_loss(
    d_real_logits: torch.Tensor, d_fake_logits: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Discriminator objective, halved as in pix2pix: 0.5 * (adv(D(x, y) -> real) + adv(D(x, G(x)) -> fake))."""
    real_part = adversarial_loss(d_real_logits, True)
    fake_part = adversarial_loss(d_fake_logits, False)
    return 0.5 * (real_part + fake_part), {"real": real_part.detach(), "fake": fake_part.detach()}
