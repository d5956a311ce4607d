"""The paper's method: a 3D conditional GAN (residual UNet generator, conditional 3D PatchGAN), eq. (1) as the loss."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from ..config import InferenceConfig, NetworkSettings, Rule, TrainConfig
from ..errors import UserError
from ..inferers import Inferer, SlidingWindowInferer, VolumeInferer
from ..losses import discriminator_loss, generator_loss
from ..nets import PatchDiscriminator, ResUNet
from ..nets.cpu_bf16 import cpu_bf16_copy
from .base import Method, register
from .sources import draw_presence, network_input

Norm = Literal["instance", "batch"]


@dataclass(frozen=True)
class GanNetwork(NetworkSettings):
    """The residual UNet generator and the conditional PatchGAN, in pix2pix's layout."""

    base_channels: int = 32
    depth: int = 4
    norm: Norm = "instance"
    stem: Literal["residual", "strided"] = (
        "residual"  # 'strided': the first level has stride 2 (no full-resolution block)
    )
    full_res_channels: int | None = None  # strided stem: channels of the full-resolution output head
    head_kernel: Literal[1, 3] = 3  # that head's fuse convolution
    upsample: Literal["transposed", "linear"] = "transposed"  # 'linear': 1x1 convolution, then trilinear interpolation
    disc_channels: int = 64
    disc_layers: int = 3
    disc_norm: Norm = "instance"  # not the generator's: a batch-norm D would compare the real and generated halves

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(("base_channels",), lambda m: m.base_channels < 1, "give at least 1"),
        Rule(("depth",), lambda m: m.depth < 1, "give at least 1 level"),
        Rule(
            ("full_res_channels", "stem"),
            lambda m: m.full_res_channels is not None and m.stem != "strided",
            "the full-resolution head belongs to the strided stem: set model.full_res_channels to null, or "
            "model.stem to strided",
        ),
        Rule(
            ("full_res_channels",),
            lambda m: m.full_res_channels is not None and m.full_res_channels < 1,
            "give at least 1, or null",
        ),
        Rule(
            ("head_kernel", "stem"),
            lambda m: m.head_kernel != 3 and m.stem != "strided",
            "the residual stem has no full-resolution head: leave model.head_kernel out, or set model.stem to strided",
        ),
        Rule(("disc_channels",), lambda m: m.disc_channels < 1, "give at least 1"),
        Rule(("disc_layers",), lambda m: m.disc_layers < 1, "give at least 1"),
    )


class ConditionalGAN(Method):
    """Generator G(x) and discriminator D(x, y) trained with adversarial + lambda * L1 (pix2pix's recipe, eq. (1))."""

    network_settings = GanNetwork
    multi_source = True

    def __init__(self, config: TrainConfig, training: bool = True):
        super().__init__(config, training)
        model: GanNetwork = config.model  # type: ignore[assignment]
        self.nets["generator"] = ResUNet(
            spatial_dims=self.spatial_dims,
            in_channels=self.input_channels,
            base_channels=model.base_channels,
            depth=model.depth,
            norm=model.norm,
            checkpointing=config.checkpointing,
            stem=model.stem,
            full_res_channels=model.full_res_channels,
            head_kernel=model.head_kernel,
            upsample=model.upsample,
        )
        if not training:
            return  # prediction needs only the generator
        self.nets["discriminator"] = PatchDiscriminator(
            spatial_dims=self.spatial_dims,
            in_channels=self.input_channels + 1,
            base_channels=model.disc_channels,
            n_layers=model.disc_layers,
            norm=model.disc_norm,
        )
        self.make_optimizers()

    @classmethod
    def size_multiple(cls, config: TrainConfig) -> tuple[int, int, int]:
        """The generator halves every spatial axis `depth` times (2D: only H and W)."""
        m = 2 ** int(config.model.depth)  # type: ignore[attr-defined]
        window = config.inference.window
        if isinstance(window, tuple) and any(int(w) % m for w in window):
            raise UserError(f"inference.window {list(window)}: each size must be a multiple of {m} (2**depth)")
        return (m, m, m) if cls.spatial_dims == 3 else (1, m, m)

    def inference_function(
        self, inference: InferenceConfig, gen: torch.Generator | None = None
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """The generator; for CPU bfloat16 prediction a channels-last copy of it (`cpu_bf16_copy`) fed channels-last
        inputs, the memory layout oneDNN's bf16 convolutions run fastest in (RESULTS.md §7)."""
        generator = self.nets["generator"]
        if not (self.spatial_dims == 3 and self.device.type == "cpu" and self.predicts_in_bf16(inference)):
            return generator
        fast = cpu_bf16_copy(generator)
        return lambda x: fast(x.contiguous(memory_format=torch.channels_last_3d))

    def model_batch(self, batch: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, torch.Tensor]:
        """The tensors the networks see (volumes here; slices for the 2D subclass)."""
        return batch

    def training_input(self, batch: dict[str, torch.Tensor], gen: torch.Generator) -> torch.Tensor:
        """The network input of a training batch: with several sources, each one an example has is left out with
        chance `source_dropout`."""
        sources = batch["source"]
        if sources.shape[1] == 1:
            return sources
        available = batch.get("present")
        drawn = draw_presence(
            sources.shape[0],
            sources.shape[1],
            self.config.source_dropout,
            gen,
            None if available is None else available.cpu(),
        )
        return network_input(sources, drawn.to(sources.device))

    def training_step(self, batch: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, float]:
        """One discriminator step on (x, y) vs (x, G(x)), then one generator step on adversarial + lambda * L1."""
        b = self.model_batch(batch, gen)
        x, y = self.training_input(b, gen), b["target"]
        G, D = self.train_nets["generator"], self.train_nets["discriminator"]
        opt_g, opt_d = self.optimizers["generator"], self.optimizers["discriminator"]
        with self.autocast():
            fake = G(x)
            # D sees the real and the generated pair in one forward (one DDP all-reduce per step)
            logits = D(torch.cat([torch.cat([x, y], 1), torch.cat([x, fake.detach()], 1)], 0))
            d_real, d_fake = logits.float().chunk(2)
            d_loss, d_parts = discriminator_loss(d_real, d_fake)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        with self.autocast():
            g_logits = D(torch.cat([x, fake], 1)).float()
            g_loss, g_parts = generator_loss(
                g_logits, fake.float(), y, self.config.l1_weight, self.config.gradient_weight, self.config.tail_weight
            )
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        opt_d.zero_grad(set_to_none=True)  # drop the D gradients the G step produced
        return {
            "g_loss": float(g_loss.detach()),
            **{f"g_{name}": float(part) for name, part in g_parts.items()},  # adv, l1 and each extra term switched on
            "d_loss": float(d_loss.detach()),
            "d_real": float(d_parts["real"]),
            "d_fake": float(d_parts["fake"]),
        }


@dataclass(frozen=True)
class Gan3dNetwork(GanNetwork):
    """gan3d's default network: a stride-2 first level, width 16 with an 8-channel full-resolution head, linear
    upsampling and a width-32 PatchGAN (why: benchmarks/RESULTS.md §1, §8)."""

    base_channels: int = 16
    stem: Literal["residual", "strided"] = "strided"
    full_res_channels: int | None = 8
    upsample: Literal["transposed", "linear"] = "linear"
    disc_channels: int = 32


@register("gan3d")
class GAN3D(ConditionalGAN):
    """The paper's 3D conditional GAN; whole volumes (or patches) in, sliding-window inference out."""

    spatial_dims = 3
    cpu_bf16_inference = True  # bfloat16 prediction keeps this method's quality (RESULTS.md §7)
    # Two random 64^3 patches per step on the data's own grid, Adam 5e-4 kept for the first half of the budget and
    # then lowered linearly to 0 (pix2pix's rule); the choices and their measurements: benchmarks/RESULTS.md §8, §9.
    recipe = {
        "lr": 5e-4,
        "lr_schedule": "linear-decay",
        "preprocess": {"grid": "auto"},
        "patch": (64, 64, 64),
        "batch_size": 2,
    }
    network_settings = Gan3dNetwork
    # 64^3 Gaussian-blended windows (sigma a quarter of the window), at least 0.4 apart, four per batch
    inference_defaults = InferenceConfig(window=None, overlap=0.4, windows_per_batch=4, sigma=0.25)
    # A FLAIR -> T1 run with the default network starts from the simulator prior (generator weights trained on
    # simulated subjects only; `--init none` starts from random ones).
    priors = {("flair", "t1"): "builtin:sim-flair-t1"}
    network_keys = ("base_channels", "depth", "norm", "stem", "full_res_channels", "head_kernel", "upsample")
    # The paper's literal settings, one option away (`--preset paper`).
    presets = {
        "paper": {
            "lr": 1e-4,
            "lr_schedule": "constant",
            "preprocess": {"grid": (48, 288, 240)},
            "patch": None,
            "batch_size": 1,
            "model": {
                "stem": "residual",
                "base_channels": 32,
                "full_res_channels": None,
                "disc_channels": 64,
                "upsample": "transposed",
            },
            "inference": {"window": None, "overlap": 0.5, "windows_per_batch": 1},
        },
    }

    def training_window(self) -> tuple[int, int, int] | None:
        """The patch, else the fixed grid; None for 'auto' grids trained whole."""
        if self.config.patch:
            return tuple(self.config.patch)  # type: ignore[return-value]
        grid = self.config.preprocess.grid
        return None if grid == "auto" else tuple(grid)  # type: ignore[return-value]

    def application(self, inference: InferenceConfig) -> Inferer:
        """Sliding windows (`inference.window`, else the training window); the whole volume for `window: volume` or
        for 'auto' grids trained whole."""
        window = inference.window if inference.window is not None else self.training_window()
        if window is None or window == "volume":
            return VolumeInferer()
        return SlidingWindowInferer.from_config(inference, window=tuple(window), parallel=True)
