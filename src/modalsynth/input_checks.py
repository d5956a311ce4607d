"""Cheap checks that an input volume is what a built-in model expects; they warn, they never stop a prediction."""

from __future__ import annotations

import numpy as np

from .data.preprocess import foreground_mask
from .data.skullstrip import MAX_BRAIN_ML, outline_ml
from .io import Volume

#: far below any brain (a newborn's holds about 0.4 litres): less foreground than this is not a head scan
MIN_BRAIN_ML = 150.0
#: neighbouring voxels of an MRI volume are alike (smooth anatomy: a correlation near 1); of noise, unrelated (near 0)
MIN_NEIGHBOUR_CORRELATION = 0.5
# The contrast is not checked: why, in benchmarks/RESULTS.md §13.


def neighbour_correlation(data: np.ndarray, inside: np.ndarray | None = None, stride: int = 1) -> float:
    """The correlation of each voxel with its neighbour along every axis (averaged): near 1 for anatomy, 0 for noise.
    `inside`: only pairs of voxels that both lie there (a brain's own texture, not the step at its edge); `stride`:
    pairs taken at every stride-th voxel (still next to each other), for speed."""
    values = np.asarray(data, dtype=np.float32)
    keep = np.ones(values.shape, dtype=bool) if inside is None else np.asarray(inside, dtype=bool)
    every = (slice(None, None, stride),) * values.ndim
    correlations = []
    for axis in range(values.ndim):
        if values.shape[axis] < 2:
            continue
        moved, kept = np.moveaxis(values, axis, 0), np.moveaxis(keep, axis, 0)
        first, second = moved[:-1][every], moved[1:][every]
        both = kept[:-1][every] & kept[1:][every]
        a, b = first[both], second[both]
        if a.size < 2:
            continue
        if a.std() == 0 and b.std() == 0:  # a flat region: as smooth as it gets
            correlations.append(1.0)
        elif a.std() > 0 and b.std() > 0:
            correlations.append(float(np.corrcoef(a, b)[0, 1]))
    return float(np.mean(correlations)) if correlations else 0.0


#: fewer slices than this along an axis is a slab, not a volume the model can read
MIN_SLICES = 4


def input_warnings(
    volume: Volume, expected: str, foreground: np.ndarray | None = None, check_whole_head: bool = True
) -> list[str]:
    """Warnings (strings) when a volume does not look like a skull-stripped `expected` head scan; empty when it does.
    `foreground`: the volume's `foreground_mask`, when the caller has it already; `check_whole_head` False when skull
    stripping has already looked at the volume (so a whole head cannot reach here)."""
    foreground = foreground_mask(volume.data) if foreground is None else foreground
    millilitres = float(foreground.sum()) * float(np.prod(volume.spacing)) / 1e3
    step = max(1, min(volume.shape) // 48)  # about 48 voxels along the shortest axis are plenty
    correlation = neighbour_correlation(volume.data, foreground, step)
    if min(volume.shape) < MIN_SLICES:
        return [
            f"it holds {min(volume.shape)} slice(s) along one axis, not a volume; the model expects a skull-stripped "
            f"{expected} MRI covering the brain and will give a meaningless image"
        ]
    if millilitres < MIN_BRAIN_ML or correlation < MIN_NEIGHBOUR_CORRELATION:
        return [
            f"it does not look like a head scan ({millilitres:.0f} ml of foreground, neighbouring voxels correlate "
            f"{correlation:.2f}; a brain holds 1000-1800 ml and its voxels correlate above "
            f"{MIN_NEIGHBOUR_CORRELATION}); "
            f"the model expects a skull-stripped {expected} MRI of a head and will give a meaningless image"
        ]
    outline = outline_ml(volume) if check_whole_head else 0.0
    if outline > MAX_BRAIN_ML:
        return [
            f"it shows {outline / 1000:.1f} litres, more than a brain; the model expects a skull-stripped "
            f"{expected} (predict with --skull-strip auto or always)"
        ]
    return []
