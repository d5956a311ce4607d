"""Cheap checks that an input volume is what a built-in model expects; they warn, they never stop a prediction."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .data.preprocess import foreground_mask
from .data.skullstrip import MAX_BRAIN_ML, outline_ml
from .io import Volume

#: inside the brain, scaled to its 1-99 % range: a T1 has its median high (white matter is the brightest tissue) and a
#: wide dark half (grey matter, then CSF); a FLAIR's dark half is narrow. On the 7 real-dev subjects the FLAIRs had
#: p50 - p10 of 0.10-0.22 and the T1s 0.245-0.41, medians 0.30-0.70 and 0.59-0.78: the threshold sits between (a thin
#: margin of 0.012 each side, measured on 14 volumes only; hence a warning, never a refusal).
T1_LIKE_MIN_DARK_SPREAD = 0.235
T1_LIKE_MIN_MEDIAN = 0.55


def brain_intensity_profile(data: np.ndarray) -> tuple[float, float]:
    """(median, p50 - p10) of the foreground intensities, scaled to their 1-99 % range, away from the brain's edge."""
    coarse = np.asarray(data[::2, ::2, ::2], dtype=np.float32)  # every other voxel is plenty for percentiles
    inside = ndimage.binary_erosion(foreground_mask(coarse), iterations=2)
    values = coarse[inside]
    if values.size < 100:
        return float("nan"), float("nan")
    lo, p10, p50, hi = np.percentile(values, [1, 10, 50, 99])
    span = max(float(hi - lo), 1e-8)
    return float(p50 - lo) / span, float(p50 - p10) / span


def input_warnings(volume: Volume, expected: str) -> list[str]:
    """Warnings (strings) when a volume does not look like a skull-stripped `expected` image; empty when it does."""
    warnings = []
    millilitres = outline_ml(volume)
    if millilitres > MAX_BRAIN_ML:
        warnings.append(f"it shows {millilitres / 1000:.1f} litres, more than a brain; "
                        f"the model expects a skull-stripped {expected} (predict with --skull-strip auto or always)")
    if expected == "flair":
        median, dark_spread = brain_intensity_profile(volume.data)
        if median >= T1_LIKE_MIN_MEDIAN and dark_spread >= T1_LIKE_MIN_DARK_SPREAD:
            warnings.append("its contrast looks like a T1 (bright white matter, wide dark half), not a FLAIR; the model "
                            "expects a FLAIR and will give a wrong image for another contrast")
    return warnings
