"""What every method is: networks, optimisers, one training step, and how its network is applied; plus the registry.

A method does not run inference itself: it hands over a function and an `Inferer` (whole volume, sliding windows or
slices: `modalsynth.inferers`) and `modalsynth.inference` applies the one with the other.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from .. import runtime
from ..config import InferenceConfig, NetworkSettings, TrainConfig
from ..inferers import Inferer
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


class Method(ABC):
    """A synthesis method. It owns its networks and its training step; data, inference plumbing and checkpoints are
    shared."""

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
            k: torch.optim.Adam(v.parameters(), lr=self.config.lr, betas=self.config.betas)
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
    def application(self, inference: InferenceConfig) -> Inferer:
        """How that function is applied to a whole volume."""

    @classmethod
    def size_multiple(cls, config: TrainConfig) -> tuple[int, int, int]:
        """Each training grid/patch axis (D, H, W) must be a multiple of this (checked when settings are resolved)."""
        return (1, 1, 1)

    def fit_closed_form(self, subjects: Iterable[Any]) -> None:  # noqa: B027  (optional: only closed-form methods)
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

    def load_extra_state(self, extra: dict[str, Any]) -> None:  # noqa: B027  (optional: most methods keep none)
        """Restore what `extra_state` returned."""

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast of a training step (`runtime.training_autocast`: bfloat16 with `amp` where it is native)."""
        return runtime.training_autocast(self.device, self.config.amp)

    def predicts_in_bf16(self, inference: InferenceConfig) -> bool:
        """Whether prediction runs under bfloat16 autocast (`runtime.predicts_in_bf16`, with `cpu_bf16_inference`)."""
        return runtime.predicts_in_bf16(self.device, inference.precision, self.cpu_bf16_inference)

    def inference_autocast(self, inference: InferenceConfig) -> contextlib.AbstractContextManager:
        """The autocast a prediction runs under (`predicts_in_bf16`)."""
        return runtime.prediction_autocast(self.device, self.predicts_in_bf16(inference))

    def train_mode(self, on: bool) -> None:
        for net in self.nets.values():
            net.train(on)
