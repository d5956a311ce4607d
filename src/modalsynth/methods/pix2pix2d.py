"""Pix2Pix (Isola et al. 2017) on axial slices: the paper's 2D baseline, sharing the 3D GAN's losses and training step.

The recipe is the method's own: a 2D ResUNet generator, a conditional 70x70 PatchGAN (3 layers), lambda_L1 = 100 and
Adam with lr 2e-4, betas (0.5, 0.999), kept for the first half of the budget and then lowered linearly to 0 (the
official code's n_epochs + n_epochs_decay). Any `lr`, `lr_schedule`, `betas` or `l1_weight` the user sets (YAML or
command line) wins over the recipe.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import InferenceConfig, Rule
from ..inferers import Inferer, SliceInferer
from .base import register
from .gan3d import ConditionalGAN, GanNetwork
from .slices import sample_axial_slices


@dataclass(frozen=True)
class Pix2PixNetwork(GanNetwork):
    """The 2D ResUNet and 70x70 PatchGAN, and how many axial slices of each volume a training step sees."""

    slices_per_step: int = 8

    rules = (*GanNetwork.rules, Rule(("slices_per_step",), lambda m: m.slices_per_step < 1, "give at least 1"))


@register("pix2pix2d")
class Pix2Pix2D(ConditionalGAN):
    """Conditional GAN on 2D axial slices; `slices_per_step` foreground slices per volume and step; slice-loop
    prediction."""

    spatial_dims = 2
    recipe = {"lr": 2e-4, "lr_schedule": "linear-decay", "betas": (0.5, 0.999), "l1_weight": 100.0}
    network_settings = Pix2PixNetwork
    inference_defaults = InferenceConfig(slices_per_batch=16)

    def model_batch(self, batch: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, torch.Tensor]:
        """(N, 1, D, H, W) volumes or patches -> (N * slices_per_step, 1, H, W) axial slices holding foreground."""
        return sample_axial_slices(batch, self.model.slices_per_step, gen)

    def application(self, inference: InferenceConfig) -> Inferer:
        return SliceInferer.from_config(inference, parallel=True)
