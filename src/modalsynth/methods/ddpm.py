"""Conditional DDPM baseline on axial slices, built from MONAI's generative parts.

The network (`DiffusionModelUNet`, 2D) sees the noisy target slice and the source slice concatenated on channels
(`DiffusionInferer`, mode 'concat') and predicts the noise; training is the noise-prediction MSE with a 1000-step
linear schedule (`DDPMScheduler`). Sampling: DDIM (`DDIMScheduler`, deterministic, `sample_steps`, default 50) or the
full ancestral DDPM chain (`sampler: ddpm`, all `num_train_timesteps` steps). Every random draw, in training and in
sampling, comes from the generator passed in, so a prediction is reproducible from its seed.
Options: `DdpmNetwork` (`model:` in YAML) and the recipe's lr / betas.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from monai.inferers import DiffusionInferer
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, Scheduler

from ..config import InferenceConfig, NetworkSettings, Rule, TrainConfig
from ..inferers import Inferer, SliceInferer
from ..threads import split_across_threads
from .base import Method, register
from .slices import sample_axial_slices

BACKGROUND = -1.0  # the value slices are padded with


@dataclass(frozen=True)
class DdpmNetwork(NetworkSettings):
    """The 2D diffusion UNet, its noise schedule and its sampler. Small enough to train on a CPU: MONAI's middle block
    always holds self-attention, over (H*W / 4**(levels-1)) positions per slice, so 4 levels keep it cheap on the
    paper's 288x240 slices."""

    channels: tuple[int, ...] = (32, 64, 64, 64)
    attention_levels: tuple[bool, ...] | None = None  # per level; None: none beyond the middle block
    num_res_blocks: int = 1
    num_head_channels: int = 32
    norm_num_groups: int | None = None  # None: the largest divisor of 32 shared by every level's channels
    use_flash_attention: bool = True  # PyTorch's scaled_dot_product_attention
    num_train_timesteps: int = 1000
    sampler: Literal["ddim", "ddpm"] = "ddim"  # 'ddpm': the full ancestral chain of num_train_timesteps steps
    sample_steps: int = 50  # DDIM steps
    slices_per_step: int = 8

    rules = (
        Rule(("channels",), lambda m: not m.channels or min(m.channels) < 1, "give positive channel counts"),
        Rule(
            ("attention_levels", "channels"),
            lambda m: m.attention_levels is not None and len(m.attention_levels) != len(m.channels),
            "give one attention flag per level of model.channels",
        ),
        Rule(("num_train_timesteps",), lambda m: m.num_train_timesteps < 1, "give at least 1"),
        Rule(
            ("sample_steps", "num_train_timesteps"),
            lambda m: not 1 <= m.sample_steps <= m.num_train_timesteps,
            "give between 1 and model.num_train_timesteps DDIM steps",
        ),
        Rule(("slices_per_step",), lambda m: m.slices_per_step < 1, "give at least 1"),
    )


@register("ddpm")
class ConditionalDDPM(Method):
    """Noise-predicting diffusion model conditioned on the source slice; slice-by-slice sampling."""

    spatial_dims = 2
    validation_slices = 4  # sampling a whole volume costs minutes on a CPU; four slices give the trend
    recipe = {"lr": 1e-4, "betas": (0.9, 0.999)}  # Ho et al. 2020: no GAN's low beta1
    network_settings = DdpmNetwork
    inference_defaults = InferenceConfig(slices_per_batch=16)

    def __init__(self, config: TrainConfig, training: bool = True):
        super().__init__(config, training)
        model: DdpmNetwork = config.model  # type: ignore[assignment]
        channels = model.channels
        self.nets["generator"] = DiffusionModelUNet(
            spatial_dims=2,
            in_channels=2,  # noisy target + source
            out_channels=1,
            channels=channels,
            attention_levels=model.attention_levels or (False,) * len(channels),
            num_res_blocks=model.num_res_blocks,
            num_head_channels=model.num_head_channels,
            norm_num_groups=model.norm_num_groups or math.gcd(32, *channels),
            use_flash_attention=model.use_flash_attention,
        )
        self.pad_multiple = 2 ** (len(channels) - 1)
        self.scheduler = DDPMScheduler(num_train_timesteps=model.num_train_timesteps)
        self.inferer = DiffusionInferer(self.scheduler)
        if training:
            self.make_optimizers()

    def _pad(self, slices: torch.Tensor) -> torch.Tensor:
        """Pad (M, C, H, W) at the bottom and right to multiples of the UNet's downsampling factor."""
        m = self.pad_multiple
        h, w = slices.shape[-2:]
        return F.pad(slices, (0, -w % m, 0, -h % m), value=BACKGROUND)

    def model_batch(self, batch: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, torch.Tensor]:
        """(N, 1, D, H, W) volumes or patches -> padded (N * slices_per_step, 1, H', W') axial slices holding
        foreground."""
        slices = sample_axial_slices(batch, self.model.slices_per_step, gen)
        return {k: self._pad(v) for k, v in slices.items()}

    def draw_noise(self, target: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaussian noise shaped like `target` and one uniform timestep per slice, drawn from `gen`."""
        noise = torch.randn(target.shape, generator=gen).to(target.device)
        timesteps = torch.randint(0, self.scheduler.num_train_timesteps, (target.shape[0],), generator=gen)
        return noise, timesteps.to(target.device)

    def training_step(self, batch: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, float]:
        """One Adam step on the MSE between the drawn noise and the network's prediction of it."""
        b = self.model_batch(batch, gen)
        noise, timesteps = self.draw_noise(b["target"], gen)
        with self.autocast():
            predicted = self.inferer(
                inputs=b["target"],
                diffusion_model=self.train_nets["generator"],  # type: ignore[arg-type]  # the UNet, or DDP around it
                noise=noise,
                timesteps=timesteps,
                condition=b["source"],
                mode="concat",
            )
        loss = F.mse_loss(predicted.float(), noise)
        optimizer = self.optimizers["generator"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": float(loss.detach())}

    def sampling_scheduler(self) -> Scheduler:
        """The configured sampler: DDIM with `sample_steps` steps, or the full DDPM chain."""
        if self.model.sampler == "ddpm":
            return self.scheduler
        ddim = DDIMScheduler(num_train_timesteps=self.scheduler.num_train_timesteps)
        ddim.set_timesteps(self.model.sample_steps)
        return ddim

    def _denoise(
        self,
        condition: torch.Tensor,
        noise: torch.Tensor,
        scheduler: Scheduler,
        step_gen: torch.Generator,
        inference: InferenceConfig,
    ) -> torch.Tensor:
        # DiffusionInferer.sample (MONAI 1.6.1) calls scheduler.step without a generator, so DDPM's per-step noise
        # would come from the global RNG; this is its loop (concat mode, no guidance) with our generator passed on.
        # The network call of each step splits its slices over the CPU's threads (it is deterministic per slice); the
        # draws stay here, in one thread, in one order.
        net = self.nets["generator"]
        image = noise
        for t in scheduler.timesteps:

            def predict_noise(x: torch.Tensor, t: int = int(t)) -> torch.Tensor:
                timesteps = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
                with self.inference_autocast(inference):
                    return net(x, timesteps=timesteps).float()

            eps = split_across_threads(predict_noise)(torch.cat([image, condition], dim=1))
            image, _ = scheduler.step(eps, int(t), image, generator=step_gen)  # type: ignore[operator]
        return image

    def inference_function(
        self, inference: InferenceConfig, gen: torch.Generator | None = None
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """Sample slices given their source slices; every draw comes from `gen` (seed 0 when None)."""
        gen = gen if gen is not None else torch.Generator().manual_seed(0)
        scheduler = self.sampling_scheduler()
        step_gen = torch.Generator(device=self.device).manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))

        def sample(condition: torch.Tensor) -> torch.Tensor:
            h, w = condition.shape[-2:]
            condition = self._pad(condition)
            noise = torch.randn(condition.shape, generator=gen).to(condition.device)
            return self._denoise(condition, noise, scheduler, step_gen, inference)[..., :h, :w]

        return sample

    def application(self, inference: InferenceConfig) -> Inferer:
        return SliceInferer.from_config(inference)  # not parallel: the sampler draws from one shared generator
