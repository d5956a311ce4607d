"""What every method is: networks, optimisers, one training step, and how its network is applied; plus the registry.

A method does not run inference itself: it hands over a function and an `InferencePlan` (whole volume, sliding
windows or slices, the idea of MONAI's inferers) and `modalsynth.inference` applies it.
"""

from __future__ import annotations

import contextlib
import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..config import InferenceConfig, NetworkSettings, TrainConfig
from .sources import input_channels, widen_input_weights

#: name -> class; filled by `@register` as each method module is imported (see `modalsynth.methods`)
REGISTRY: dict[str, type[Method]] = {}


def register(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: make a method available to `modalsynth train --method NAME`."""

    def add(cls: type[Method]) -> type[Method]:
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return add


@dataclass(frozen=True)
class InferencePlan:
    """How inference applies a method's function to a whole (1, 1, D, H, W) volume.

    mode 'volume': once on the whole volume; 'window': Gaussian-blended sliding windows of `roi` (falls back to
    'volume' when the volume is exactly one window), at least `overlap` apart, the Gaussian's sigma `sigma_scale` x
    roi; 'slices': on axial slices, `batch_size` at a time. `parallel`: the function is deterministic and per item, so
    on a CPU the items of a batch may run on the torch threads side by side (not for a sampler that draws from a
    shared generator).
    """

    mode: str = "volume"
    roi: tuple[int, int, int] | None = None
    overlap: float = 0.5
    batch_size: int = 1
    sigma_scale: float = 0.125
    parallel: bool = False


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU has AMX tiles, where oneDNN's bf16 convolutions beat float32; without them (AVX512-BF16 alone
    included) bf16 training steps are not trusted (benchmarks/RESULTS.md §1). Asked once: autocast() runs every step."""
    return _cpu_supports("amx_tile")


@functools.cache
def cpu_bf16_predicts_natively() -> bool:
    """Whether this CPU runs bfloat16 convolutions in hardware for prediction: AMX tiles, or AVX512-BF16 without them
    (an AMD EPYC: about 0.55x the float32 time per 64^3 window, finite outputs, brain SSIM within 0.0005 of float32 on
    real volumes, benchmarks/RESULTS.md §13). Only training steps showed NaN there, so they keep `cpu_has_native_bf16`."""
    return _cpu_supports("amx_tile") or _cpu_supports("avx512_bf16")


def _cpu_supports(feature: str) -> bool:
    """torch's probe of one CPU feature, by its flags (False where this torch has no such probe)."""
    check = getattr(torch.cpu, f"_is_{feature}_supported", None)
    return bool(check is not None and check())


class Method(ABC):
    """A synthesis method. It owns its networks and its training step; data, inference plumbing and checkpoints are shared."""

    name = "base"
    #: 3 for volumetric networks (sliding-window inference), 2 for slice-wise ones (slice loop)
    spatial_dims = 3
    #: False for methods fitted in closed form (no optimiser steps), e.g. the intensity look-up table
    trainable = True
    #: the method's own training defaults over TrainConfig's (lr, schedule, patch, ...); whatever the user sets wins
    recipe: ClassVar[Mapping[str, Any]] = {}
    #: the method's network options and their defaults (`model:` in YAML)
    network_settings: ClassVar[type[NetworkSettings]] = NetworkSettings
    #: how the method predicts unless told otherwise
    inference_defaults: ClassVar[InferenceConfig] = InferenceConfig()
    #: named sets of settings one option away (`--preset NAME`), applied over the recipe
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    #: shipped weights a run starts from by default, per (source, target), when its `network_keys` settings match them
    priors: ClassVar[Mapping[tuple[str, str], str]] = {}
    network_keys: ClassVar[tuple[str, ...]] = ()
    #: validate on this many axial slices per subject instead of whole volumes (None: whole volumes)
    validation_slices: ClassVar[int | None] = None
    #: predict under bfloat16 autocast on a CPU with native bf16 too (precision 'auto'), where it was measured to keep
    #: the method's quality; otherwise CPU prediction stays float32
    cpu_bf16_inference: ClassVar[bool] = False
    #: the network takes several sources (`--source flair,t2`: methods/sources.py)
    multi_source: ClassVar[bool] = False

    def __init__(self, config: TrainConfig, training: bool = True):
        self.config = config
        self.model: Any = config.model  # this method's `network_settings`
        self.training = training
        self.nets: dict[str, nn.Module] = {}
        self.train_nets: dict[str, nn.Module] = {}  # the same modules, wrapped by DDP when distributed
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.device = torch.device("cpu")

    @property
    def input_channels(self) -> int:
        """Channels of the network's input: one per source, plus a presence flag each when there are several."""
        return input_channels(len(self.config.sources))

    def to(self, device: torch.device) -> Method:
        self.device = device
        for net in self.nets.values():
            net.to(device)
        self.train_nets = dict(self.nets)
        return self

    def wrap(self, wrapper: Callable[[nn.Module], nn.Module]) -> None:
        """Wrap every trainable network (e.g. in DistributedDataParallel) for the training step."""
        self.train_nets = {k: wrapper(v) for k, v in self.nets.items() if any(p.requires_grad for p in v.parameters())}

    def make_optimizers(self) -> None:
        """Adam for every trained network, with the config's learning rate and betas (the paper's optimiser)."""
        self.optimizers = {
            k: torch.optim.Adam(v.parameters(), lr=self.config.lr, betas=tuple(self.config.betas))
            for k, v in self.nets.items()
            if any(p.requires_grad for p in v.parameters())
        }

    @abstractmethod
    def training_step(self, batch: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, float]:
        """One optimiser step on a batch on `self.device` (source (N, S, D, H, W) for S sources; target and mask
        (N, 1, D, H, W)); returns the losses to log."""

    @abstractmethod
    def inference_function(
        self, inference: InferenceConfig, gen: torch.Generator | None = None
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """The function inference applies to each volume, window or slice batch (network input, `sources.network_input`,
        in [-1, 1] -> target)."""

    @abstractmethod
    def application(self, inference: InferenceConfig) -> InferencePlan:
        """How that function is applied to a whole volume."""

    @classmethod
    def size_multiple(cls, config: TrainConfig) -> tuple[int, int, int]:
        """Each training grid/patch axis (D, H, W) must be a multiple of this (checked when settings are resolved)."""
        return (1, 1, 1)

    def fit_closed_form(self, subjects: list[Any]) -> None:
        """Fit without optimiser steps (only methods with `trainable = False`)."""

    def reported_network(self) -> nn.Module:
        """The network whose size and speed the benchmark reports."""
        return self.nets["generator"]

    def state(self) -> dict[str, Any]:
        """Weights and optimiser states for a checkpoint."""
        return {
            "nets": {k: v.state_dict() for k, v in self.nets.items()},
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
            "extra": self.extra_state(),
        }

    def load_state(self, state: dict[str, Any], with_optimizers: bool = True) -> None:
        """Load weights (of the networks this instance holds: a prediction-only build has no discriminator)."""
        for k, v in state["nets"].items():
            if k in self.nets:
                self.nets[k].load_state_dict(v)
        if with_optimizers:
            for k, v in state.get("optimizers", {}).items():
                if k in self.optimizers:
                    self.optimizers[k].load_state_dict(v)
        self.load_extra_state(state.get("extra", {}))

    def load_init_weights(self, nets: dict[str, Any], their_sources: tuple[str, ...]) -> None:
        """Fine-tuning: another model's network weights, optimisers fresh. A single-source model's weights fill a
        multi-source network (`widen_input_weights`); the config has checked that its source is one of this run's."""
        if their_sources != self.config.sources:
            channel = self.config.sources.index(their_sources[0])
            nets = {k: widen_input_weights(v, self.nets[k], channel) for k, v in nets.items() if k in self.nets}
        self.load_state({"nets": nets}, with_optimizers=False)

    def extra_state(self) -> dict[str, Any]:
        """Anything besides weights a method must keep (e.g. a look-up table); plain types or tensors only."""
        return {}

    def load_extra_state(self, extra: dict[str, Any]) -> None:
        pass

    def autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 autocast for a training step when the config asks for mixed precision (`amp`) and the device runs
        bfloat16 natively (CUDA; a CPU with AMX tiles)."""
        if not self.config.amp:
            return contextlib.nullcontext()
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        if self.device.type == "cpu" and cpu_has_native_bf16():
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def predicts_in_bf16(self, inference: InferenceConfig) -> bool:
        """Whether prediction runs under bfloat16 autocast: precision 'auto' on CUDA, or on a CPU with native bfloat16
        convolutions (AMX or AVX512-BF16: `cpu_bf16_predicts_natively`) for methods whose quality was measured with it
        (`cpu_bf16_inference`)."""
        if inference.precision != "auto":
            return False
        if self.device.type == "cuda":
            return True
        return self.device.type == "cpu" and self.cpu_bf16_inference and cpu_bf16_predicts_natively()

    def inference_autocast(self, inference: InferenceConfig) -> contextlib.AbstractContextManager:
        """The autocast a prediction runs under (`predicts_in_bf16`)."""
        if not self.predicts_in_bf16(inference):
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def train_mode(self, on: bool) -> None:
        for net in self.nets.values():
            net.train(on)
