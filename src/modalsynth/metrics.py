"""Image-quality metrics for synthetic volumes under one fixed protocol (pure functions on numpy arrays).

Protocol: prediction and reference are each clipped to their own 0.5-99.5 percentile inside the brain and scaled
to [0, 1]; every metric below then uses data range 1.
SSIM is true 3D SSIM (Gaussian window sigma 1.5, truncated at 3.5 sigma = 11 voxels, K1 0.01, K2 0.03,
sample covariance as scikit-image's default), reported over the whole volume (border of 5 voxels cropped,
exactly as `skimage.metrics.structural_similarity`), and as the mean of the SSIM map inside the brain,
the lesion and the healthy brain. Arrays are (D, H, W) = (axial slice, row, column).
Calibration (`calibration_ratio`) and tissue agreement (`tissue_dice`) use the same [0, 1] volumes: the share of
brain voxels at or above 0.9, prediction over reference, and the Dice per class of each volume's own three-class
multi-Otsu map inside the brain (`tissue_map`, the classes the grey/white contrast measure uses).

The BraSyn challenge's SSIM (`brasyn_metrics`) is reported beside these under the challenge's own protocol, which
differs in its percentiles (whole volume), window borders, variance and data range: see `brasyn_ssim`.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import ndimage

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # radius int(3.5 * 1.5 + 0.5) = 5, an 11-voxel window as in Wang et al. 2004
SSIM_WINDOW = 2 * int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5) + 1  # taps of the truncated Gaussian along one axis
SSIM_K1 = 0.01
SSIM_K2 = 0.03
PERCENTILES = (0.5, 99.5)
#: the array axis each slice plane cuts across, for (z, y, x) = (D, H, W) arrays; used by metrics, FID and figures
PLANE_AXES = {"axial": 0, "coronal": 1, "sagittal": 2}

# Order of the per-subject metrics in every table: brain-masked figures lead (whole-volume SSIM is inflated by the
# shared black background), then lesion / healthy brain, whole volume, 2D slice-averaged, through-plane.
METRIC_LABELS: dict[str, str] = {
    "ssim_brain": "SSIM 3D, brain",
    "psnr_brain": "PSNR (dB), brain",
    "mae_brain": "MAE, brain",
    "rmse_brain": "RMSE, brain",
    "ssim_lesion": "SSIM 3D, lesion",
    "mae_lesion": "MAE, lesion",
    "rmse_lesion": "RMSE, lesion",
    "psnr_lesion": "PSNR (dB), lesion",
    "ssim_healthy": "SSIM 3D, healthy brain",
    "mae_healthy": "MAE, healthy brain",
    "rmse_healthy": "RMSE, healthy brain",
    "psnr_healthy": "PSNR (dB), healthy brain",
    "ssim_volume": "SSIM 3D, whole volume",
    "psnr_volume": "PSNR (dB), whole volume",
    "mae_volume": "MAE, whole volume",
    "rmse_volume": "RMSE, whole volume",
    "ssim2d_axial_slices": "SSIM 2D slice-averaged, axial, whole slice",
    "ssim2d_brain_axial": "SSIM 2D (axial planes), brain",
    "ssim2d_brain_coronal": "SSIM 2D (coronal planes), brain",
    "ssim2d_brain_sagittal": "SSIM 2D (sagittal planes), brain",
    "gradz_mae_brain": "through-plane gradient error (axial slice axis), brain",
    "gradxy_mae_brain": "in-plane gradient error, brain",
    "gradz_ratio": "through-plane / in-plane gradient error",
    "slice_jitter": "slice-to-slice jitter of the mean error (x1000), brain",
    "streak_ratio": "slice streaks: through-plane / in-plane roughness of the local error",
    "gw_contrast_ratio": "grey/white contrast kept (1 = the real's)",
    "lesion_contrast_error": "lesion contrast error",
    "calibration_ratio": "calibration: share of brain >= 0.9, prediction / real (1 = calibrated)",
    "tissue_dice_csf": "tissue agreement: Dice of CSF (multi-Otsu), brain",
    "tissue_dice_gm": "tissue agreement: Dice of grey matter (multi-Otsu), brain",
    "tissue_dice_wm": "tissue agreement: Dice of white matter (multi-Otsu), brain",
}
# The BraSyn challenge's SSIM, computed as its organisers' scoring script does (`brasyn_metrics`).
BRASYN_LABELS: dict[str, str] = {
    "brasyn_ssim_tumour": "BraSyn SSIM, tumour (challenge protocol)",
    "brasyn_ssim_non_tumour": "BraSyn SSIM, non-tumour (challenge protocol)",
    "brasyn_ssim_whole": "BraSyn SSIM, whole volume (challenge protocol)",
}
#: every per-subject column of an evaluation report: the protocol's metrics, then the BraSyn challenge's SSIM
REPORT_LABELS: dict[str, str] = {**METRIC_LABELS, **BRASYN_LABELS}
HIGHER_IS_BETTER = {name: name.startswith(("ssim", "psnr", "brasyn_ssim", "tissue_dice")) for name in REPORT_LABELS}
#: metrics whose ideal value is 1 (a ratio to the reference's own figure): neither higher nor lower is better
BEST_AT_ONE = frozenset({"gw_contrast_ratio", "calibration_ratio"})
#: `calibration_ratio` counts brain voxels at or above this level of the [0, 1] range (after `scale_to_unit`)
BRIGHT_LEVEL = 0.9
#: the three intensity classes of a T1 inside the brain, darkest first (`tissue_map` labels them 1, 2, 3)
TISSUES = ("csf", "gm", "wm")


def scale_to_unit(
    volume: np.ndarray, brain_mask: np.ndarray, percentiles: tuple[float, float] = PERCENTILES
) -> np.ndarray:
    """Clip a volume to its own 0.5-99.5 percentile inside the brain and scale that range to [0, 1] (float64).

    The percentiles are those of the brain voxels the volume fills (non-zero): a part of the brain that a prediction
    leaves as background (a tighter skull-strip mask, a slab's edge) is scored as 0 where it lies, but does not pull
    the lower percentile to 0 and so rescale the whole prediction.
    """
    mask = np.asarray(brain_mask, dtype=bool)
    if mask.shape != volume.shape:
        raise ValueError(f"mask shape {mask.shape} differs from volume shape {volume.shape}")
    if not mask.any():
        raise ValueError("the brain mask is empty")
    inside = np.asarray(volume)[mask]
    filled = inside[inside != 0]
    low, high = np.percentile(filled if filled.size else inside, percentiles)
    data = np.asarray(volume, dtype=np.float64)
    if high <= low:
        return np.zeros(data.shape)
    return (np.clip(data, low, high) - low) / (high - low)


def ssim_map(
    a: np.ndarray,
    b: np.ndarray,
    data_range: float = 1.0,
    axes: tuple[int, ...] | None = None,
    *,
    border: str = "reflect",
    sample_covariance: bool = True,
) -> np.ndarray:
    """The SSIM map of two arrays, filtering along `axes` (all axes by default: 3D SSIM; two axes: 2D per plane).

    By default the same formula as scikit-image's `structural_similarity(gaussian_weights=True)`: Gaussian sigma 1.5
    truncated to an 11-tap window, scipy's 'reflect' borders (edge voxel repeated), sample covariance scaled by
    NP / (NP - 1) with NP = 11 ** len(axes). `border="mirror"` and `sample_covariance=False` give torchmetrics'
    formula (its 'reflect' padding does not repeat the edge voxel; population variance).
    """
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    axes = tuple(range(a.ndim)) if axes is None else tuple(axes)
    win = SSIM_WINDOW
    if any(a.shape[ax] < win for ax in axes):
        raise ValueError(f"SSIM needs at least {win} voxels along each filtered axis; got shape {a.shape}")
    sigma = [SSIM_SIGMA if ax in axes else 0.0 for ax in range(a.ndim)]

    def smooth(x: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(x, sigma=sigma, truncate=SSIM_TRUNCATE, mode=border)

    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    n_window = win ** len(axes)
    cov_norm = n_window / (n_window - 1) if sample_covariance else 1.0
    ux, uy = smooth(x), smooth(y)
    vx = cov_norm * (smooth(x * x) - ux * ux)
    vy = cov_norm * (smooth(y * y) - uy * uy)
    vxy = cov_norm * (smooth(x * y) - ux * uy)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def _border_cropped_mean(values: np.ndarray) -> float:
    """Mean of an SSIM map without the 5-voxel border strip, as scikit-image reports the mean SSIM."""
    pad = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    return float(values[tuple(slice(pad, -pad) for _ in values.shape)].mean(dtype=np.float64))


def masked_mean(values: np.ndarray, mask: np.ndarray | None) -> float:
    """Mean of `values` over the mask voxels (NaN for an empty mask)."""
    if mask is None:
        return float(np.mean(values, dtype=np.float64))
    mask = np.asarray(mask, dtype=bool)
    return float(values[mask].mean(dtype=np.float64)) if mask.any() else math.nan


def ssim3d(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, data_range: float = 1.0) -> float:
    """3D SSIM: without a mask skimage's mean (border cropped); with a mask the mean of the SSIM map inside it."""
    values = ssim_map(a, b, data_range)
    return _border_cropped_mean(values) if mask is None else masked_mean(values, mask)


def _slice_average(plane_map: np.ndarray, axis: int, slice_mask: np.ndarray | None) -> float:
    """Average over slices of each slice's border-cropped mean SSIM (slices where `slice_mask` has a voxel)."""
    values = np.moveaxis(plane_map, axis, 0)
    pad = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    per_slice = values[:, pad:-pad, pad:-pad].mean(axis=(1, 2), dtype=np.float64)
    if slice_mask is not None:
        per_slice = per_slice[np.moveaxis(np.asarray(slice_mask, dtype=bool), axis, 0).any(axis=(1, 2))]
    return float(per_slice.mean()) if per_slice.size else math.nan


def _plane_ssim_map(a: np.ndarray, b: np.ndarray, plane: str, data_range: float) -> np.ndarray:
    """2D SSIM maps of every slice of `plane` (filtering only within the slices), stacked back into a volume."""
    axis = PLANE_AXES[plane]
    return ssim_map(a, b, data_range, axes=tuple(ax for ax in range(3) if ax != axis))


def ssim_slices2d(
    a: np.ndarray, b: np.ndarray, plane: str = "axial", data_range: float = 1.0, slice_mask: np.ndarray | None = None
) -> float:
    """Slice-averaged 2D SSIM as 2D papers report it: skimage's mean SSIM of each slice of `plane`, averaged.

    Only slices where `slice_mask` (e.g. the brain mask) has a voxel are averaged; all slices without a mask.
    """
    return _slice_average(_plane_ssim_map(a, b, plane, data_range), PLANE_AXES[plane], slice_mask)


def ssim2d_masked(a: np.ndarray, b: np.ndarray, mask: np.ndarray, plane: str, data_range: float = 1.0) -> float:
    """Mean over the mask of the 2D SSIM map computed slice by slice in `plane` (no filtering across slices)."""
    return masked_mean(_plane_ssim_map(a, b, plane, data_range), mask)


def mae(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute error (over the mask voxels when a mask is given)."""
    return masked_mean(np.abs(np.asarray(a, np.float64) - b), mask)


def mse(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean squared error (over the mask voxels when a mask is given)."""
    return masked_mean((np.asarray(a, np.float64) - b) ** 2, mask)


def rmse(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Root mean squared error (over the mask voxels when a mask is given)."""
    return math.sqrt(mse(a, b, mask))  # sqrt(nan) is nan


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, 10 log10(range^2 / MSE); infinite for identical inputs."""
    error = mse(a, b, mask)
    if math.isnan(error):
        return math.nan
    return math.inf if error == 0 else 10.0 * math.log10(data_range**2 / error)


def _gradient_errors(pred: np.ndarray, ref: np.ndarray, brain_mask: np.ndarray, axis: int) -> np.ndarray:
    """|difference of neighbour steps| along `axis`, NaN where either neighbour is outside the brain."""
    mask = np.asarray(brain_mask, dtype=bool)
    error = np.abs(np.diff(np.asarray(pred, np.float64), axis=axis) - np.diff(np.asarray(ref, np.float64), axis=axis))
    lower = [slice(None)] * mask.ndim
    upper = [slice(None)] * mask.ndim
    lower[axis], upper[axis] = slice(None, -1), slice(1, None)
    return np.where(mask[tuple(lower)] & mask[tuple(upper)], error, np.nan)


def _nanmean(values: np.ndarray, axis: int | tuple[int, ...] | None = None) -> np.ndarray | float:
    """np.nanmean without the 'mean of empty slice' warning: all-NaN slices (no brain) stay NaN on purpose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


def through_plane_profile(pred: np.ndarray, ref: np.ndarray, brain_mask: np.ndarray) -> dict[str, np.ndarray]:
    """Per axial position: mean through-plane gradient error (between slices z and z+1) and in-plane gradient error.

    A slice-wise (2D) method stacks slices that disagree with their neighbours: its through-plane error jumps
    from slice to slice while its in-plane error stays smooth. Values on [0, 1]-scaled volumes; NaN where no brain.
    """
    depth = pred.shape[0]
    inplane = np.concatenate(
        [
            _gradient_errors(pred, ref, brain_mask, 1).reshape(depth, -1),
            _gradient_errors(pred, ref, brain_mask, 2).reshape(depth, -1),
        ],
        axis=1,
    )
    return {
        "gradz_error": np.asarray(_nanmean(_gradient_errors(pred, ref, brain_mask, 0), axis=(1, 2))),
        "inplane_error": np.asarray(_nanmean(inplane, axis=1)),
    }


def through_plane_error_map(pred: np.ndarray, ref: np.ndarray, brain_mask: np.ndarray) -> np.ndarray:
    """|step to the next axial slice in pred - same step in ref| per voxel, (D-1, H, W), 0 outside the brain."""
    return np.nan_to_num(_gradient_errors(pred, ref, brain_mask, 0), nan=0.0)


def slice_jitter(pred: np.ndarray, ref: np.ndarray, brain_mask: np.ndarray) -> float:
    """How much the brain-mean error jumps from one axial slice to the next, x1000 (hand-written: no library has it).

    With e(z) the mean of pred - ref over the brain in slice z, the mean over z of |e(z+1) - 2 e(z) + e(z-1)| / 2:
    a smooth drift of the error along z costs nothing, a slice (or window seam) brighter or darker than its
    neighbours costs its step. Slice-wise methods (stacked 2D slices) and sliding windows with per-window
    normalisation show up here, where the gradient ratio averages them away. NaN with fewer than 3 brain slices.
    """
    mask = np.asarray(brain_mask, dtype=bool)
    error = np.where(mask, np.asarray(pred, np.float64) - np.asarray(ref, np.float64), np.nan)
    profile = np.asarray(_nanmean(error, axis=(1, 2)))
    profile = profile[~np.isnan(profile)]
    if profile.size < 3:
        return math.nan
    return float(np.mean(np.abs(np.diff(profile, 2))) / 2 * 1000)


STREAK_SIGMA = 2.0  # voxels: the in-plane reach of a streak; finer detail is anatomy, not a slice artefact


def _local_error_roughness(error: np.ndarray, mask: np.ndarray, axis: int, sigma: float) -> float:
    """Mean |second difference along `axis`| / 2 of the brain's error after a Gaussian average across the other two
    axes (normalised by the mask, so the background does not leak in); voxels with all three steps in the brain."""
    spread = [sigma] * 3
    spread[axis] = 0.0
    weight = ndimage.gaussian_filter(mask.astype(np.float64), spread)
    local = ndimage.gaussian_filter(np.where(mask, error, 0.0), spread) / np.maximum(weight, 1e-6)
    step = np.abs(np.diff(local, 2, axis=axis)) / 2
    inside = [slice(None)] * 3
    keep = np.ones(step.shape, bool)
    for offset in range(3):
        inside[axis] = slice(offset, mask.shape[axis] - 2 + offset)
        keep &= mask[tuple(inside)]
    return float(step[keep].mean()) if keep.any() else math.nan


def streak_ratio(pred: np.ndarray, ref: np.ndarray, brain_mask: np.ndarray, sigma: float = STREAK_SIGMA) -> float:
    """Slice streaks: how much rougher the error is from one axial slice to the next than along the slice's own axes.

    The error pred - ref is averaged over a few voxels across the other two axes (`sigma`), which keeps a region's
    error and drops fine anatomy; its mean |second difference| is then taken along z and along y and x. A 3D method's
    error is about as smooth along every axis (ratio near the reference data's own, about 1 on isotropic scans); a
    stack of 2D predictions has region-wide errors that change from slice to slice (streaks in coronal and sagittal
    views), which raises the ratio even where no whole slice is brighter (which is all `slice_jitter` sees) and
    even where in-plane noise lowers the gradient ratio. Hand-written: no library measures this. NaN without brain.
    """
    mask = np.asarray(brain_mask, dtype=bool)
    error = np.asarray(pred, np.float64) - np.asarray(ref, np.float64)
    through = _local_error_roughness(error, mask, 0, sigma)
    inplane = np.nanmean([_local_error_roughness(error, mask, axis, sigma) for axis in (1, 2)])
    if not np.isfinite(through) or not np.isfinite(inplane):
        return math.nan
    if inplane == 0:
        return math.nan if through == 0 else math.inf
    return through / float(inplane)


def through_plane_consistency(
    pred: np.ndarray, ref: np.ndarray, brain_mask: np.ndarray, data_range: float = 1.0
) -> dict[str, float]:
    """Numbers that expose slice-stacking artefacts: 2D SSIM in the three planes (inside the brain, and slice-averaged
    over slices with brain), and the error of the intensity step between neighbouring voxels along the slice axis (z)
    versus within the slice (y, x); `gradz_ratio` well above the value of a 3D method flags stacking; `streak_ratio`
    also flags the local streaks of stacked slices that in-plane noise hides from the gradient ratio."""
    mask = np.asarray(brain_mask, dtype=bool)
    gradz = _gradient_errors(pred, ref, mask, 0)
    gradxy = np.concatenate(
        [_gradient_errors(pred, ref, mask, 1).ravel(), _gradient_errors(pred, ref, mask, 2).ravel()]
    )
    gradz_mae, gradxy_mae = float(_nanmean(gradz)), float(_nanmean(gradxy))
    ratio = gradz_mae / gradxy_mae if gradxy_mae > 0 else math.nan
    result: dict[str, float] = {}
    for plane, axis in PLANE_AXES.items():
        plane_map = _plane_ssim_map(pred, ref, plane, data_range)
        result[f"ssim2d_brain_{plane}"] = masked_mean(plane_map, mask)
        result[f"ssim2d_{plane}_slices"] = _slice_average(plane_map, axis, mask)
    result.update(
        gradz_mae_brain=gradz_mae,
        gradxy_mae_brain=gradxy_mae,
        gradz_ratio=ratio,
        slice_jitter=slice_jitter(pred, ref, mask),
        streak_ratio=streak_ratio(pred, ref, mask),
    )
    return result


def tissue_map(volume: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """Three intensity classes of `volume` inside `mask` by scikit-image's multi-Otsu thresholds (low, high): 0
    outside the mask, 1 at or below low, 2 above low up to high, 3 above high (on a T1 of the brain: CSF, grey
    and white matter, `TISSUES`). None when the volume has fewer than three distinct levels inside the mask."""
    from skimage.filters import threshold_multiotsu

    mask = np.asarray(mask, dtype=bool)
    inside = np.asarray(volume)[mask]
    try:
        low, high = threshold_multiotsu(inside, classes=3)
    except ValueError:  # fewer than three distinct levels
        return None
    labels = np.zeros(mask.shape, dtype=np.uint8)
    labels[mask] = 1 + (inside > low).astype(np.uint8) + (inside > high).astype(np.uint8)
    return labels


def tissue_classes(ref: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The upper two of three intensity classes of `ref` inside `mask` (`tissue_map`); on a T1 of the brain these
    are grey and white matter (the lowest class is CSF). None when `ref` has too few levels."""
    labels = tissue_map(ref, mask)
    return None if labels is None else (labels == 2, labels == 3)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap 2 |a ∩ b| / (|a| + |b|) of two boolean masks; NaN when both are empty."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.logical_and(a, b).sum()) / total if total else math.nan


def tissue_dice(pred: np.ndarray, ref: np.ndarray, brain_mask: np.ndarray) -> dict[str, float]:
    """Tissue agreement: Dice per class (`tissue_dice_csf`, `_gm`, `_wm`) of the three-class maps of `pred` and
    `ref` inside the brain, each classified by its own multi-Otsu thresholds (`tissue_map`).

    NaN for every class when the reference has fewer than three levels (no classes to agree with); 0 for every class
    when only the prediction has too few (a flat prediction draws no tissue). Hand-written on skimage's thresholds.
    """
    brain = np.asarray(brain_mask, dtype=bool)
    real = tissue_map(ref, brain)
    if real is None:
        return {f"tissue_dice_{name}": math.nan for name in TISSUES}
    synthetic = tissue_map(pred, brain)
    if synthetic is None:
        return {f"tissue_dice_{name}": 0.0 for name in TISSUES}
    return {f"tissue_dice_{name}": dice(synthetic == k, real == k) for k, name in enumerate(TISSUES, start=1)}


def bright_share(volume: np.ndarray, brain_mask: np.ndarray, level: float = BRIGHT_LEVEL) -> float:
    """The share of brain voxels at or above `level` in a volume on [0, 1] (scaled by `scale_to_unit`)."""
    brain = np.asarray(brain_mask, dtype=bool)
    if not brain.any():
        raise ValueError("the brain mask is empty")
    return float(np.count_nonzero(np.asarray(volume)[brain] >= level)) / float(np.count_nonzero(brain))


def calibration_ratio(pred: np.ndarray, ref: np.ndarray, brain_mask: np.ndarray, level: float = BRIGHT_LEVEL) -> float:
    """Calibration: `bright_share` of the prediction over that of the reference, both on [0, 1] after
    `scale_to_unit` (1 = calibrated; above 1 the brain is washed out towards white, below 1 too dark).

    After the 0.5-99.5 % scaling the reference's top 0.5 % of brain voxels sit at 1, so its share is 0 only when it
    is flat inside the brain (`scale_to_unit` gives zeros): the ratio is then NaN (undefined, left out of means).
    """
    real = bright_share(ref, brain_mask, level)
    return bright_share(pred, brain_mask, level) / real if real > 0 else math.nan


def gw_contrast_ratio(pred: np.ndarray, ref: np.ndarray, healthy_mask: np.ndarray) -> float:
    """How much of the real grey/white contrast the prediction keeps: (median of the upper class - median of the
    middle class) in `pred` over the same in `ref`, both on the reference's tissue classes (`tissue_classes`).

    1 is the real contrast, below 1 washed out, above 1 exaggerated; a blurred prediction also scores lower, since
    the classes come from the real anatomy. Hand-written: no library has a contrast ratio on given classes.
    """
    classes = tissue_classes(np.asarray(ref), np.asarray(healthy_mask, dtype=bool))
    if classes is None:
        return math.nan
    middle, upper = classes
    if not middle.any() or not upper.any():
        return math.nan
    real = float(np.median(ref[upper]) - np.median(ref[middle]))
    if real <= 0:
        return math.nan
    return float(np.median(pred[upper]) - np.median(pred[middle])) / real


def lesion_contrast_error(
    pred: np.ndarray, ref: np.ndarray, lesion_mask: np.ndarray, healthy_mask: np.ndarray
) -> float:
    """|(mean over the lesion - median over the healthy brain) of `pred` - the same of `ref`|, on [0, 1] intensities:
    0 when the lesion stands out from the brain as much and in the same direction (dark or bright) as in the real
    image. NaN without a lesion."""
    lesion, healthy = np.asarray(lesion_mask, dtype=bool), np.asarray(healthy_mask, dtype=bool)
    if not lesion.any() or not healthy.any():
        return math.nan

    def contrast(volume: np.ndarray) -> float:
        return float(np.mean(volume[lesion]) - np.median(volume[healthy]))

    return abs(contrast(pred) - contrast(ref))


def subject_metrics(
    pred: np.ndarray, ref: np.ndarray, brain_mask: np.ndarray, lesion_mask: np.ndarray | None = None, scale: bool = True
) -> dict[str, float]:
    """All per-subject metrics of the protocol (keys of `METRIC_LABELS`); `scale=False` if both are already on [0, 1].

    Lesion figures use lesion ∩ brain, healthy figures brain minus lesion; both are NaN without a lesion mask or
    with an empty one.
    """
    brain = np.asarray(brain_mask, dtype=bool)
    if pred.shape != ref.shape or brain.shape != ref.shape:
        raise ValueError(f"shapes differ: prediction {pred.shape}, reference {ref.shape}, mask {brain.shape}")
    if scale:
        pred, ref = scale_to_unit(pred, brain), scale_to_unit(ref, brain)
    regions: dict[str, np.ndarray | None] = {"brain": brain, "volume": None}
    lesion = np.zeros_like(brain) if lesion_mask is None else np.logical_and(np.asarray(lesion_mask) > 0, brain)
    has_lesion = bool(lesion.any())
    healthy = np.logical_and(brain, ~lesion)  # the brain itself without a lesion
    regions["lesion"] = lesion if has_lesion else None
    regions["healthy"] = healthy if has_lesion else None

    values = ssim_map(pred, ref, 1.0)
    result: dict[str, float] = {}
    for name, region in regions.items():
        if region is None and name != "volume":
            result.update({f"{m}_{name}": math.nan for m in ("ssim", "psnr", "mae", "rmse")})
            continue
        result[f"ssim_{name}"] = _border_cropped_mean(values) if region is None else masked_mean(values, region)
        result[f"psnr_{name}"] = psnr(pred, ref, region)
        result[f"mae_{name}"] = mae(pred, ref, region)
        result[f"rmse_{name}"] = rmse(pred, ref, region)
    del values
    result.update(through_plane_consistency(pred, ref, brain, 1.0))
    result["gw_contrast_ratio"] = gw_contrast_ratio(pred, ref, healthy)
    result["lesion_contrast_error"] = lesion_contrast_error(pred, ref, lesion, healthy) if has_lesion else math.nan
    result["calibration_ratio"] = calibration_ratio(pred, ref, brain)
    result.update(tissue_dice(pred, ref, brain))
    return {name: float(result[name]) for name in METRIC_LABELS}


# ---------------------------------------------------------------- the BraSyn challenge's SSIM
# As the organisers' scoring script computes it: github.com/hongweilibran/BraSyn, ssim.py at commit
# ecdaf0020c42e5c301a69508656310bbdd2187ab (compute_metrics and __percentile_clip), which calls torchmetrics'
# StructuralSimilarityIndexMeasure() with its defaults. torchmetrics up to 1.4.1 (the versions of the 2023 and 2024
# challenges) averages the SSIM map without a 5-voxel border; 1.4.2 and later average the whole map, which puts the
# background's SSIM of 1 in the border into the score. The challenge's script reports tumour and non-tumour only;
# the whole-volume figure is the same computation without a mask.


def brasyn_scale(volume: np.ndarray) -> np.ndarray:
    """The challenge's intensity scaling: clip to the volume's own 0.5-99.5 percentiles over all voxels, background
    included (a negative lower bound becomes 0), and scale that range to [0, 1] (all zeros for a constant volume,
    where the challenge's script divides by zero)."""
    data = np.asarray(volume, dtype=np.float64)
    low, high = np.percentile(data, PERCENTILES)
    low = max(float(low), 0.0)
    if high <= low:
        return np.zeros(data.shape)
    return (np.clip(data, low, high) - low) / (high - low)


def brasyn_ssim(pred: np.ndarray, ref: np.ndarray, region: np.ndarray | None = None) -> float:
    """SSIM of the challenge on volumes already scaled by `brasyn_scale`: both multiplied by the region mask (whole
    volumes without one), torchmetrics' 3D SSIM (Gaussian sigma 1.5, 11 voxels, mirrored borders, population
    variance, data range the larger of the two masked volumes' ranges), the mean of the map without its 5-voxel
    border; NaN when both masked volumes are constant (the challenge's script divides 0 by 0 there)."""
    if region is not None:
        pred, ref = pred * region, ref * region
    data_range = max(float(np.ptp(pred)), float(np.ptp(ref)))
    if data_range == 0:
        return math.nan
    return _border_cropped_mean(ssim_map(pred, ref, data_range, border="mirror", sample_covariance=False))


def brasyn_metrics(pred: np.ndarray, ref: np.ndarray, lesion_mask: np.ndarray | None) -> dict[str, float]:
    """The BraSyn columns (keys of `BRASYN_LABELS`) from the volumes as stored: tumour = lesion mask > 0, non-tumour
    = everything else, background included; both NaN without a lesion mask or with an empty one."""
    if pred.shape != ref.shape:
        raise ValueError(f"shapes differ: prediction {pred.shape}, reference {ref.shape}")
    pred, ref = brasyn_scale(pred), brasyn_scale(ref)
    result = {
        "brasyn_ssim_tumour": math.nan,
        "brasyn_ssim_non_tumour": math.nan,
        "brasyn_ssim_whole": brasyn_ssim(pred, ref),
    }
    tumour = None if lesion_mask is None else np.asarray(lesion_mask) > 0
    if tumour is not None and tumour.any():
        result["brasyn_ssim_tumour"] = brasyn_ssim(pred, ref, tumour)
        result["brasyn_ssim_non_tumour"] = brasyn_ssim(pred, ref, ~tumour)
    return result
