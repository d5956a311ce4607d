"""The conditional GAN objective of the paper's eq. (1): adversarial loss + lambda * L1."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

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


def generator_loss(
    d_fake_logits: torch.Tensor,
    fake: torch.Tensor,
    real: torch.Tensor,
    l1_weight: float,
    adv: AdversarialLoss,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Generator objective: adv(D(x, G(x)) -> real) + l1_weight * L1(G(x), y); parts detached for logging."""
    adv_part = adv(d_fake_logits, True)
    l1_part = l1_loss(fake, real, mask)
    total = adv_part + l1_weight * l1_part
    return total, {"adv": adv_part.detach(), "l1": l1_part.detach()}


def discriminator_loss(
    d_real_logits: torch.Tensor, d_fake_logits: torch.Tensor, adv: AdversarialLoss
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Discriminator objective, halved as in pix2pix: 0.5 * (adv(D(x, y) -> real) + adv(D(x, G(x)) -> fake))."""
    real_part = adv(d_real_logits, True)
    fake_part = adv(d_fake_logits, False)
    return 0.5 * (real_part + fake_part), {"real": real_part.detach(), "fake": fake_part.detach()}
