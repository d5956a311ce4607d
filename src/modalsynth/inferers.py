"""How a network is applied to a whole (1, C, D, H, W) volume: at once, in blended sliding windows, or slice by slice.

MONAI's `Inferer` idea: each strategy is a small frozen object called with the network function and the volume. A
method's `application` builds one from its `InferenceConfig`; the sliding-window and slice inferers take their
settings under the config's own field names (`from_config`), so a new setting of theirs is one field here and one
in `InferenceConfig`, with its default stated there only.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import torch
from monai.inferers import sliding_window_inference

from .threads import split_across_threads

Function = Callable[[torch.Tensor], torch.Tensor]
I = TypeVar("I", bound="Inferer")  # noqa: E741


@dataclass(frozen=True, kw_only=True)
class Inferer(ABC):
    """A strategy for applying a function to a whole volume. `parallel`: the function is deterministic and per item, so
    on a CPU the items of a batch may run on the torch threads side by side (`split_across_threads`; not for a
    sampler that draws from a shared generator)."""

    parallel: bool = False

    @abstractmethod
    def __call__(self, function: Function, source: torch.Tensor) -> torch.Tensor:
        """Apply `function` to a (1, C, D, H, W) volume; returns its (1, 1, D, H, W) output."""

    @classmethod
    def from_config(cls: type[I], inference: Any, **given: Any) -> I:
        """This inferer with every field the inference settings share by name, then `given` over them."""
        shared = {f.name: getattr(inference, f.name) for f in fields(cls) if hasattr(inference, f.name)}
        return cls(**{**shared, **given})

    def _runner(self, function: Function) -> Function:
        return split_across_threads(function) if self.parallel else function


@dataclass(frozen=True, kw_only=True)
class VolumeInferer(Inferer):
    """The whole volume in one call."""

    @torch.no_grad()
    def __call__(self, function: Function, source: torch.Tensor) -> torch.Tensor:
        return function(source)


@dataclass(frozen=True, kw_only=True)
class SlidingWindowInferer(Inferer):
    """3D windows of `window` at least `overlap` apart, spread evenly over each axis, `windows_per_batch` per call,
    blended with Gaussian weights of sigma `sigma` x window (MONAI's `sliding_window_inference`). A volume of exactly
    one window is one call."""

    window: tuple[int, int, int]
    overlap: float
    windows_per_batch: int
    sigma: float

    @torch.no_grad()
    def __call__(self, function: Function, source: torch.Tensor) -> torch.Tensor:
        if tuple(source.shape[2:]) == tuple(self.window):
            return function(source)
        out = sliding_window_inference(
            source,
            tuple(self.window),
            sw_batch_size=self.windows_per_batch,
            predictor=self._runner(function),
            mode="gaussian",
            overlap=spread_overlaps(source.shape[2:], self.window, self.overlap),
            sigma_scale=self.sigma,
        )
        assert isinstance(out, torch.Tensor)  # one output: MONAI returns a tuple or dict only for several
        return out


@dataclass(frozen=True, kw_only=True)
class SliceInferer(Inferer):
    """A 2D function over every axial slice, `slices_per_batch` slices per call."""

    slices_per_batch: int

    @torch.no_grad()
    def __call__(self, function: Function, source: torch.Tensor) -> torch.Tensor:
        slices = source[0].permute(1, 0, 2, 3)  # (D, C, H, W)
        run, step = self._runner(function), self.slices_per_batch
        outputs = [run(slices[i : i + step]) for i in range(0, slices.shape[0], step)]
        return torch.cat(outputs).permute(1, 0, 2, 3)[None]


def spread_overlaps(shape: Sequence[int], window: Sequence[int], overlap: float) -> tuple[float, ...]:
    """Per axis, the largest overlap that needs no more windows than `overlap` does: the same windows, spread evenly
    over the axis instead of packed at `overlap` with the last one pushed back from the edge (MONAI places them so).
    More overlap at no cost; written by hand because MONAI takes the overlap as given."""
    overlaps = []
    for size, width in zip(shape, window):
        if size <= width:
            overlaps.append(0.0)
            continue
        count = math.ceil((size - width) / max(int(width * (1 - overlap)), 1)) + 1
        step = math.ceil((size - width) / (count - 1))
        overlaps.append(1.0 - (step + 0.5) / width)  # MONAI's step is int(width * (1 - overlap)) = step
    return tuple(overlaps)
