"""The paper's method: a 3D conditional GAN (residual UNet generator, conditional 3D PatchGAN), eq. (1) as the loss."""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch

from ..config import TrainConfig
from ..data.views import overlapping_views, view_region
from ..errors import UserError
from ..losses import AdversarialLoss, consistency_loss, discriminator_loss, generator_loss
from ..nets import PatchDiscriminator, ResUNet
from ..nets.cpu_bf16 import cpu_bf16_copy
from .base import Application, Method, register

GENERATOR_DEFAULTS = {"base_channels": 32, "depth": 4, "norm": "instance"}
DISCRIMINATOR_DEFAULTS = {"disc_channels": 64, "disc_layers": 3, "disc_norm": "instance"}


class ConditionalGAN(Method):
    """Generator G(x) and discriminator D(x, y) trained with adversarial + lambda * L1 (pix2pix's recipe, eq. (1))."""

    recipe = {"model": {**GENERATOR_DEFAULTS, **DISCRIMINATOR_DEFAULTS}}

    def __init__(self, config: TrainConfig, training: bool = True):
        super().__init__(config, training)
        options = self.options()
        self.nets["generator"] = ResUNet(
            spatial_dims=self.spatial_dims,
            base_channels=options["base_channels"],
            depth=options["depth"],
            norm=options["norm"],
            checkpointing=config.checkpointing,
            stem=options.get("stem", "residual"),
            full_res_channels=options.get("full_res_channels"),
            head_kernel=int(options.get("head_kernel", 3)),
            upsample=str(options.get("upsample", "transposed")),
        )
        if not training:
            return  # prediction needs only the generator
        self.nets["discriminator"] = PatchDiscriminator(
            spatial_dims=self.spatial_dims,
            in_channels=2,
            base_channels=options["disc_channels"],
            n_layers=options["disc_layers"],
            # not the generator's norm: a batch-norm D would compare the real and generated halves of its batch
            norm=options.get("disc_norm", "instance"),
        )
        if self.consistency_weight and (self.spatial_dims != 3 or not config.patch):
            raise UserError("model.consistency needs 3D training patches: set `patch` (e.g. [64, 64, 64]) or leave it out")
        self.adversarial = AdversarialLoss(config.adversarial)
        self.make_optimizers()
        if self.ema_decay:
            # an exponential moving average of the generator's weights, used for validation and prediction
            self.nets["generator_ema"] = copy.deepcopy(self.nets["generator"]).requires_grad_(False)
            self.ema_updates = 0

    @property
    def ema_decay(self) -> float:
        """`model.ema`: the decay of the generator's weight average (0 or None: no average)."""
        return float(self.options().get("ema") or 0.0)

    @property
    def consistency_weight(self) -> float:
        """`model.consistency`: weight of the L1 term between two overlapping views' outputs (0 or None: off)."""
        return float(self.options().get("consistency") or 0.0)

    def sampling_patch(self) -> tuple[int, int, int] | None:
        """With the consistency term, each batch item is a larger region that two overlapping patches are cut from."""
        patch = super().sampling_patch()
        return view_region(patch) if patch is not None and self.consistency_weight else patch

    @classmethod
    def size_multiple(cls, config: TrainConfig) -> tuple[int, int, int]:
        """The generator halves every spatial axis `depth` times (2D: only H and W)."""
        options = {**cls.recipe["model"], **config.model}
        m = 2 ** int(options["depth"])
        window = options.get("window")
        if window is not None and window != "volume" and any(int(w) % m for w in window):
            raise UserError(f"model.window {list(window)}: each size must be a multiple of {m} (2**depth)")
        return (m, m, m) if cls.spatial_dims == 3 else (1, m, m)

    def prediction_generator(self) -> torch.nn.Module:
        """The generator that predicts: the weight average when the recipe keeps one, else the trained generator."""
        return self.nets.get("generator_ema", self.nets["generator"])

    def inference_function(self, gen: torch.Generator | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        """The generator; for CPU bfloat16 prediction a channels-last copy of it (`cpu_bf16_copy`) fed channels-last
        inputs, the memory layout oneDNN's bf16 convolutions run fastest in (about 2x float32 per 64^3 window; bf16
        or channels-last alone gain far less: RESULTS.md §2, §7)."""
        generator = self.prediction_generator()
        if not (self.spatial_dims == 3 and self.cpu_bf16_autocast(inference=True)):
            return generator
        fast = cpu_bf16_copy(generator)
        return lambda x: fast(x.contiguous(memory_format=torch.channels_last_3d))

    @torch.no_grad()
    def update_ema(self) -> None:
        """Move the averaged generator towards the trained one; the decay ramps up as (1 + n) / (10 + n) so that a
        short run's average is not dominated by its random start (a hand-written EMA: 3 lines, no library needed)."""
        decay = min(self.ema_decay, (1 + self.ema_updates) / (10 + self.ema_updates))
        live, ema = self.nets["generator"], self.nets["generator_ema"]
        torch._foreach_lerp_(list(ema.parameters()), list(live.parameters()), 1.0 - decay)
        for b_ema, b_live in zip(ema.buffers(), live.buffers()):
            b_ema.copy_(b_live)  # batch-norm statistics: the live ones
        self.ema_updates += 1

    def load_state(self, state: dict[str, Any], with_optimizers: bool = True) -> None:
        """As `Method.load_state`; a prediction-only build takes the averaged generator when the checkpoint has one,
        and a training build whose checkpoint has none (e.g. `--init` from a built-in model) starts it from the
        generator."""
        nets = state["nets"]
        if not self.training and "generator_ema" in nets:
            state = {**state, "nets": {**nets, "generator": nets["generator_ema"]}}
        super().load_state(state, with_optimizers)
        if "generator_ema" in self.nets and "generator_ema" not in nets:
            self.nets["generator_ema"].load_state_dict(self.nets["generator"].state_dict())

    def extra_state(self) -> dict[str, Any]:
        return {"ema_updates": self.ema_updates} if self.ema_decay and self.training else {}

    def load_extra_state(self, extra: dict[str, Any]) -> None:
        if self.ema_decay and self.training:
            self.ema_updates = int(extra.get("ema_updates", 0))

    def model_batch(self, batch: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, torch.Tensor]:
        """The tensors the networks see (volumes here; slices for the 2D subclass)."""
        return batch

    def training_step(self, batch: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, float]:
        """One discriminator step on (x, y) vs (x, G(x)), then one generator step on adversarial + lambda * L1."""
        b = self.model_batch(batch, gen)
        shared = None
        if self.consistency_weight:  # two overlapping patches per sampled region (N regions -> 2N patches)
            b, shared = overlapping_views(b, tuple(self.config.patch), gen)  # type: ignore[arg-type]
        x, y = b["source"], b["target"]
        G, D = self.train_nets["generator"], self.train_nets["discriminator"]
        opt_g, opt_d = self.optimizers["generator"], self.optimizers["discriminator"]
        with self.autocast():
            fake = G(x)
            # D sees the real and the generated pair in one forward (one DDP all-reduce per step)
            logits = D(torch.cat([torch.cat([x, y], 1), torch.cat([x, fake.detach()], 1)], 0))
            d_real, d_fake = logits.float().chunk(2)
            d_loss, d_parts = discriminator_loss(d_real, d_fake, self.adversarial)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        with self.autocast():
            g_logits = D(torch.cat([x, fake], 1)).float()
            g_loss, g_parts = generator_loss(
                g_logits, fake.float(), y, self.config.l1_weight, self.adversarial, ssim_weight=self.config.ssim_weight
            )
            if shared is not None:
                consistency = consistency_loss(fake.float(), shared)
                g_loss = g_loss + self.consistency_weight * consistency
                g_parts["consistency"] = consistency.detach()  # detached for logging, as generator_loss's parts
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        opt_d.zero_grad(set_to_none=True)  # drop the D gradients the G step produced
        if "generator_ema" in self.nets:
            self.update_ema()
        return {
            "g_loss": float(g_loss.detach()), "g_adv": float(g_parts["adv"]), "g_l1": float(g_parts["l1"]),
            **({"g_ssim": float(g_parts["ssim"])} if "ssim" in g_parts else {}),
            **({"g_consistency": float(g_parts["consistency"])} if "consistency" in g_parts else {}),
            "d_loss": float(d_loss.detach()), "d_real": float(d_parts["real"]), "d_fake": float(d_parts["fake"]),
        }


@register("gan3d")
class GAN3D(ConditionalGAN):
    """The paper's 3D conditional GAN; whole volumes (or patches) in, sliding-window inference out."""

    spatial_dims = 3
    # bfloat16 prediction on CPUs with native bf16 (with `amp`, the default): measured to keep brain SSIM and MAE of
    # the same checkpoint (RESULTS.md §7)
    cpu_bf16_inference = True
    # The default a user gets: the residual UNet with a stride-2 first level (no residual block at full resolution,
    # 3.4x the 64^3 patches per minute of the paper's layout on a 2-core CPU, benchmarks/RESULTS.md), trained on
    # two 64^3 patches per step of the data's own grid, predicted with 64^3 Gaussian-blended windows, overlap 0.4,
    # four per batch (on a real 240x240x155 volume: 96^3 windows lost 0.035 brain SSIM, since instance norm then sees
    # other statistics than in training; on 30-minute real-dev models overlap 0.4 is within 0.002 brain SSIM of 0.5
    # and 0.014 above 0.25, and in CPU bfloat16 it costs what 0.25 cost in float32: benchmarks/RESULTS.md §7).
    # Upsampling is linear (1x1 conv + trilinear): the kernel-2 transposed convolutions left a period-2 grid, and
    # on real-dev the linear version cut slice jitter from 13.8 to 3.7 at equal brain SSIM/MAE (RESULTS.md §8).
    # Adam at 5e-4, kept for the first half of the budget and then lowered linearly to 0 (pix2pix's rule): with
    # bfloat16 training steps (TrainConfig.amp, 1.75x the steps on a CPU with AMX) 2e-4 gave +0.038 brain SSIM at
    # 8 minutes of real-dev cross-validation over the float32, constant-1e-4 recipe; 3e-4 another +0.011 at 8 and
    # +0.012 at 30 minutes; 5e-4 another +0.014 at 30 minutes in two runs (bf16 and float32 steps), for MAE +0.000 to
    # +0.003 and FID +2 to +4; 6e-4 is level with 5e-4 (RESULTS.md §8, §9).
    recipe = {
        "lr": 5e-4,
        "lr_schedule": "linear-decay",
        "preprocess": {"grid": "auto"},
        "patch": (64, 64, 64),
        "batch_size": 2,
        "model": {**ConditionalGAN.recipe["model"], "stem": "strided", "base_channels": 16, "full_res_channels": 8,
                  "disc_channels": 32, "window": None, "overlap": 0.4, "windows_per_batch": 4, "window_sigma": 0.25,
                  "upsample": "linear"},
    }
    # A FLAIR -> T1 run with the default network starts from the simulator prior (generator weights trained on 24
    # simulated subjects only; `--init none` starts from random ones): on real-dev at 30 minutes it gave +0.012 brain
    # SSIM (7 of 7 subjects), -0.007 MAE and +0.065 grey/white contrast kept over a random start (RESULTS.md §9).
    priors = {("flair", "t1"): "builtin:sim-flair-t1"}
    network_keys = ("base_channels", "depth", "norm", "stem", "full_res_channels", "head_kernel", "upsample")
    # The paper's literal settings, one option away (`--preset paper`).
    presets = {
        "paper": {
            "lr": 1e-4, "lr_schedule": "constant",
            "preprocess": {"grid": (48, 288, 240)}, "patch": None, "batch_size": 1,
            "model": {"stem": "residual", "base_channels": 32, "full_res_channels": None, "disc_channels": 64,
                      "window": None, "overlap": 0.5, "windows_per_batch": 1, "upsample": "transposed"},
        },
    }

    def window(self) -> tuple[int, int, int] | None:
        """The training window: the patch, else the fixed grid; None for 'auto' grids trained whole."""
        if self.config.patch:
            return tuple(self.config.patch)  # type: ignore[return-value]
        grid = self.config.preprocess.grid
        return None if grid == "auto" else tuple(grid)  # type: ignore[return-value]

    def application(self) -> Application:
        """Sliding windows (`model.window`, else the training window); the whole volume for `window: volume` or for
        'auto' grids trained whole."""
        options = self.options()
        if options.get("window") == "volume":
            return Application("volume")
        roi = tuple(options["window"]) if options.get("window") else self.window()
        if roi is None:
            return Application("volume")
        return Application("window", roi, float(options["overlap"]), int(options["windows_per_batch"]),
                           float(options.get("window_sigma", 0.125)), parallel=True)
