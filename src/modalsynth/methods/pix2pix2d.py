"""Pix2Pix (Isola et al. 2017) on axial slices: the paper's 2D baseline, sharing the 3D GAN's losses and training step.

The recipe is the method's own: a 2D ResUNet generator, a conditional 70x70 PatchGAN (3 layers), lambda_L1 = 100 and
Adam with lr 2e-4, betas (0.5, 0.999). It does not inherit the 3D GAN's lr 1e-4: set `model: {lr: ...}` (or `betas`,
`l1_weight`) to change the recipe; a top-level `lr`/`betas`/`l1_weight` that differs from TrainConfig's default also wins.
"""

from __future__ import annotations

import torch

from ..config import TrainConfig
from ..inference import slicewise_predict
from .base import register
from .gan3d import ConditionalGAN
from .recipe import with_recipe
from .slices import sample_axial_slices

RECIPE = {"lr": 2e-4, "betas": (0.5, 0.999), "l1_weight": 100.0}
DEFAULTS = {"disc_layers": 3, "slices_per_step": 8, "predict_batch": 16}


@register("pix2pix2d")
class Pix2Pix2D(ConditionalGAN):
    """Conditional GAN on 2D axial slices; `slices_per_step` foreground slices per volume and step; slice-loop prediction."""

    spatial_dims = 2

    def __init__(self, config: TrainConfig):
        config = with_recipe(config, RECIPE)
        config.model = {**DEFAULTS, **config.model}  # a new dict: the caller's config keeps its own
        super().__init__(config)

    def model_batch(self, batch: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, torch.Tensor]:
        """(N, 1, D, H, W) volumes or patches -> (N * slices_per_step, 1, H, W) axial slices holding foreground."""
        return sample_axial_slices(batch, int(self.config.model["slices_per_step"]), gen)

    @torch.no_grad()
    def predict(self, source: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        with self.autocast():
            out = slicewise_predict(self.nets["generator"], source, int(self.config.model["predict_batch"]))
        return out.float()
