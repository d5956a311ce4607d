"""The floor row: a pointwise intensity look-up table source -> target, fitted in closed form on the training subjects.

Hand-written (no library bins one image's intensities against another's): the foreground voxels of every training
subject are binned by source value (`bins` equal bins over [-1, 1], default 256); each bin keeps the mean source and
the mean target of its voxels; empty bins are filled by linear interpolation; prediction interpolates linearly
between the bins' (mean source, mean target) points and holds the end values beyond them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import InferenceConfig, NetworkSettings, Rule, TrainConfig
from ..data.datasets import Subject
from ..inferers import Inferer, VolumeInferer
from .base import Method, register

DEFAULT_BINS = 256


@dataclass(frozen=True)
class LutSettings(NetworkSettings):
    """The table's resolution: equal source-intensity bins over [-1, 1]."""

    bins: int = DEFAULT_BINS

    rules = (Rule(("bins",), lambda m: m.bins < 2, "give at least 2 bins"),)


def fit_table(sources: list[np.ndarray], targets: list[np.ndarray], bins: int = DEFAULT_BINS) -> np.ndarray:
    """(2, bins) array: per source-intensity bin over [-1, 1], the mean source (row 0) and mean target (row 1)."""
    x = np.concatenate([np.asarray(s, np.float64).ravel() for s in sources])
    y = np.concatenate([np.asarray(t, np.float64).ravel() for t in targets])
    if x.size == 0:
        raise ValueError("no foreground voxels to fit the look-up table on")
    x = np.clip(x, -1.0, 1.0)
    index = np.minimum(((x + 1.0) / 2.0 * bins).astype(np.int64), bins - 1)
    counts = np.bincount(index, minlength=bins)
    filled = counts > 0
    centres = -1.0 + (np.arange(bins) + 0.5) * 2.0 / bins
    mean_x = np.where(filled, np.bincount(index, x, bins) / np.maximum(counts, 1), centres)
    mean_y = np.bincount(index, y, bins) / np.maximum(counts, 1)
    mean_y[~filled] = np.interp(mean_x[~filled], mean_x[filled], mean_y[filled])
    return np.stack([mean_x, mean_y])


@register("lut")
class IntensityLUT(Method):
    """Target = f(source) voxel by voxel; no network (`nets` is empty and `reported_network()` returns None)."""

    trainable = False

    network_settings = LutSettings

    def __init__(self, config: TrainConfig, training: bool = True):
        super().__init__(config, training)
        self.bins = self.model.bins
        self.table: torch.Tensor | None = None

    def fit_closed_form(self, subjects: Iterable[Subject]) -> None:
        """Bin the training subjects' foreground voxels (source value -> mean target value)."""
        with_target = [s for s in subjects if s.target is not None]
        table = fit_table(
            [s.source[0][s.mask > 0] for s in with_target],
            [s.target[s.mask > 0] for s in with_target if s.target is not None],
            self.bins,
        )
        self.table = torch.from_numpy(table.astype(np.float32))

    def training_step(self, batch: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, float]:
        raise RuntimeError("the look-up table is fitted in closed form (fit_closed_form), not by optimiser steps")

    def inference_function(
        self, inference: InferenceConfig, gen: torch.Generator | None = None
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """Interpolate between the table's (mean source, mean target) points, voxel by voxel."""
        if self.table is None:
            raise RuntimeError("the look-up table is not fitted: call fit_closed_form or load a checkpoint")
        knots_x, knots_y = self.table.double().numpy()

        def look_up(source: torch.Tensor) -> torch.Tensor:
            mapped = np.interp(source.detach().cpu().double().numpy(), knots_x, knots_y)
            return torch.from_numpy(mapped).to(device=source.device, dtype=torch.float32)

        return look_up

    def application(self, inference: InferenceConfig) -> Inferer:
        return VolumeInferer()

    def reported_network(self) -> nn.Module | None:  # type: ignore[override]  # no network to report
        """No network: the benchmark reports no parameters or FLOPs for this row."""
        return None

    def extra_state(self) -> dict[str, Any]:
        return {} if self.table is None else {"table": self.table.clone()}

    def load_extra_state(self, extra: dict[str, Any]) -> None:
        if "table" in extra:
            self.table = extra["table"].detach().cpu().float()
