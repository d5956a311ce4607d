"""Bring a volume onto the network's grid and intensity scale, and record what was done so `postprocess` undoes it.

Steps (DESIGN.md, "Axes and grids"): reorient to RAS (nibabel's canonical) and index (z, y, x); resample to a
spacing; crop/pad to a fixed grid centred on the foreground, or (`auto`) crop to the foreground box plus a margin
and pad to a multiple of 2**depth; scale intensities by their 0.5-99.5 percentiles inside the foreground to [-1, 1].
The geometry of a pair is taken from the source and applied unchanged to the target and masks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform
from scipy import ndimage

from ..io import Volume, voxel_spacing

#: the paper's grid (D, H, W) and its spacing in mm (z, y, x); the one place these are defined
PAPER_GRID: tuple[int, int, int] = (48, 288, 240)
PAPER_SPACING: tuple[float, float, float] = (3.0, 0.8, 0.8)
#: the field of view of the paper's grid in mm (z, y, x); a fixed grid with no spacing given (and every simulated
#: grid) covers this
PAPER_FOV_MM: tuple[float, float, float] = tuple(g * s for g, s in zip(PAPER_GRID, PAPER_SPACING))  # type: ignore[assignment]
_RAS = axcodes2ornt(("R", "A", "S"))
#: skull stripping before preprocessing (data/skullstrip.py): when the input looks like a whole head, always, or never
STRIP_MODES = ("auto", "always", "never")


def grid_spacing(grid: tuple[int, int, int]) -> tuple[float, float, float]:
    """Voxel size in mm (z, y, x) that makes `grid` cover the paper's field of view."""
    return tuple(fov / n for fov, n in zip(PAPER_FOV_MM, grid))  # type: ignore[return-value]


@dataclass(frozen=True)
class PreprocessConfig:
    """How volumes reach the network: grid (D, H, W) or 'auto', spacing in mm (z, y, x), intensity percentiles."""

    grid: tuple[int, int, int] | Literal["auto"] = PAPER_GRID
    spacing: tuple[float, float, float] | None = None  # None: fixed grid covers PAPER_FOV_MM; auto grid keeps native
    depth: int = 4  # auto grid: pad each axis to a multiple of 2**depth
    margin: int = 4  # auto grid: voxels kept around the foreground box
    lower_percentile: float = 0.5
    upper_percentile: float = 99.5
    clip: bool = True  # clip scaled intensities to [-1, 1] (the generator's tanh range)
    skull_strip: Literal[STRIP_MODES] = "never"  # type: ignore[valid-type]  # brain extraction of each source first (raw scans)
    register: bool = False  # the other sources and the target registered onto the first source first (data/register.py)

    def target_spacing(self, native: tuple[float, float, float]) -> tuple[float, float, float]:
        """The spacing the volume is resampled to."""
        if self.spacing is not None:
            return tuple(float(s) for s in self.spacing)  # type: ignore[return-value]
        if self.grid == "auto":
            return native
        return grid_spacing(self.grid)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GridRecord:
    """Everything needed to put an array on the network grid back onto the original file's grid."""

    original_shape: tuple[int, int, int]
    original_affine: list[list[float]]
    orientation: list[list[float]]  # nibabel ornt taking the stored array to RAS
    native_spacing: tuple[float, float, float]  # (z, y, x) after reorientation
    spacing: tuple[float, float, float]  # (z, y, x) on the network grid
    resampled_shape: tuple[int, int, int]
    window_start: tuple[int, int, int]  # start of the network window in the resampled array (negative = padding)
    grid: tuple[int, int, int]

    @property
    def affine(self) -> np.ndarray:
        """The affine of the network-grid array, indexed (z, y, x)."""
        orig = np.asarray(self.original_affine)
        ornt = np.asarray(self.orientation)
        ras = orig @ inv_ornt_aff(ornt, self.original_shape)
        zyx = ras[:, [2, 1, 0, 3]]
        scale = np.diag([s / n for s, n in zip(self.spacing, self.native_spacing)] + [1.0])
        shifted = zyx @ scale
        shifted[:3, 3] = (zyx @ scale @ np.array([*self.window_start, 1.0]))[:3]
        return shifted


@dataclass
class IntensityRecord:
    """The robust range mapped to [-1, 1], and the value of the empty background (used for predictions)."""

    low: float
    high: float
    background: float | None = None


@dataclass
class Preprocessed:
    """An array on the network grid in [-1, 1], its foreground mask, and the records that invert it."""

    array: np.ndarray
    mask: np.ndarray
    grid: GridRecord
    intensity: IntensityRecord


def to_zyx(volume: Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reorient to RAS and index (z, y, x); returns the array, the orientation used and the (z, y, x) affine."""
    ornt = io_orientation(volume.affine)
    ras = apply_orientation(volume.data, ornt)
    affine = volume.affine @ inv_ornt_aff(ornt, volume.data.shape)
    return np.ascontiguousarray(ras.transpose(2, 1, 0)), ornt, affine[:, [2, 1, 0, 3]]


def from_zyx(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Undo `to_zyx`: back to the axis order and directions of the stored file."""
    ras = array.transpose(2, 1, 0)
    return np.ascontiguousarray(apply_orientation(ras, ornt_transform(_RAS, ornt)))


def bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """The smallest box holding every True voxel of a non-empty mask (projections: no index arrays)."""
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def foreground_mask(array: np.ndarray) -> np.ndarray:
    """Where the head/brain is: voxels unlike the dominant background value (skull-stripped data) or above Otsu/2."""
    sample = array[:: max(1, array.size // 200_000)] if array.size else np.zeros(1, array.dtype)
    values, counts = np.unique(sample, return_counts=True)
    mode = values[int(np.argmax(counts))]
    if counts.max() / max(1, counts.sum()) > 0.2:  # a large exactly-constant background, e.g. skull-stripped MRI
        mask = array != mode
    else:
        from skimage.filters import threshold_otsu

        # on the flat values: Otsu is a histogram threshold, and skimage takes an (N, M, 3) array for an RGB image
        mask = array > 0.5 * threshold_otsu(array.ravel())
    if not mask.any():
        return np.ones_like(array, dtype=bool)
    # Opening and hole filling inside the mask's bounding box: the same result as on the whole array (outside the box
    # nothing is foreground and everything reaches the array's border, so the box's faces act as the border), in
    # less time.
    box = bounding_box(mask)
    inner = ndimage.binary_fill_holes(ndimage.binary_opening(mask[box], iterations=1))
    mask = np.zeros_like(mask)
    mask[box] = inner
    return mask if mask.any() else np.ones_like(array, dtype=bool)


def _resample(array: np.ndarray, zoom: np.ndarray, shape: tuple[int, ...], order: int) -> np.ndarray:
    """Sample `array` at index i * zoom (voxel 0 stays voxel 0) onto `shape`; scipy does the interpolation."""
    if np.allclose(zoom, 1.0) and tuple(shape) == array.shape:
        return array.copy()
    return ndimage.affine_transform(
        array, np.asarray(zoom, dtype=float), output_shape=shape, order=order, mode="nearest"
    )


def crop_window(array: np.ndarray, start: tuple[int, ...], size: tuple[int, ...], fill: float) -> np.ndarray:
    """Cut a window that may reach outside the array; the outside is filled with `fill`."""
    out = np.full(size, fill, dtype=array.dtype)
    src = tuple(slice(max(0, s), min(n, s + w)) for s, w, n in zip(start, size, array.shape))
    dst = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(src, start))
    out[dst] = array[src]
    return out


def _place(window: np.ndarray, start: tuple[int, ...], shape: tuple[int, ...], fill: float) -> np.ndarray:
    """Inverse of `_window`: put the window back into an array of `shape`; what it did not cover gets `fill`."""
    out = np.full(shape, fill, dtype=window.dtype)
    dst = tuple(slice(max(0, s), min(n, s + w)) for s, w, n in zip(start, window.shape, shape))
    src = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(dst, start))
    out[dst] = window[src]
    return out


def plan_grid(volume: Volume, config: PreprocessConfig, mask: np.ndarray | None = None) -> GridRecord:
    """Decide reorientation, resampling and the crop/pad window for one volume (the source of a pair)."""
    zyx, ornt, affine = to_zyx(volume)
    native = voxel_spacing(affine)
    spacing = config.target_spacing(native)
    zoom = np.array(spacing) / np.array(native)
    resampled_shape = tuple(max(1, int(round(n / z))) for n, z in zip(zyx.shape, zoom))
    fg = foreground_mask(zyx) if mask is None else mask.astype(bool)
    if not (np.allclose(zoom, 1.0) and resampled_shape == fg.shape):
        fg = _resample(fg.astype(np.float32), zoom, resampled_shape, order=0) > 0.5
    box = bounding_box(fg) if fg.any() else tuple(slice(0, n) for n in fg.shape)
    lo, hi = np.array([b.start for b in box]), np.array([b.stop for b in box])
    if config.grid == "auto":
        lo = np.maximum(lo - config.margin, 0)
        hi = np.minimum(hi + config.margin, resampled_shape)
        multiple = 2**config.depth
        size = tuple(int(-(-(h - low) // multiple) * multiple) for low, h in zip(lo, hi))
        start = tuple(int(low - (s - (h - low)) // 2) for low, h, s in zip(lo, hi, size))
    else:
        size = tuple(int(g) for g in config.grid)
        centre = (lo + hi) / 2.0
        start = tuple(int(round(c - s / 2.0)) for c, s in zip(centre, size))
    return GridRecord(
        original_shape=tuple(int(s) for s in volume.data.shape),  # type: ignore[arg-type]
        original_affine=np.asarray(volume.affine).tolist(),
        orientation=np.asarray(ornt).tolist(),
        native_spacing=native,
        spacing=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
        resampled_shape=resampled_shape,  # type: ignore[arg-type]
        window_start=start,  # type: ignore[arg-type]
        grid=size,  # type: ignore[arg-type]
    )


def to_grid(volume: Volume, record: GridRecord, order: int = 1, fill: float | None = None) -> np.ndarray:
    """Apply a planned geometry to a volume of the same original grid (order 0 for masks and labels)."""
    zyx, _, _ = to_zyx(volume)
    zoom = np.array(record.spacing) / np.array(record.native_spacing)
    resampled = _resample(zyx.astype(np.float32), zoom, record.resampled_shape, order)
    if fill is None:
        fill = float(resampled.min())
    return crop_window(resampled, record.window_start, record.grid, fill)


def from_grid(array: np.ndarray, record: GridRecord, fill: float, order: int = 1) -> np.ndarray:
    """Undo `to_grid`: uncrop (outside filled with `fill`), resample back, and restore the stored axis order."""
    placed = _place(np.asarray(array, dtype=np.float32), record.window_start, record.resampled_shape, fill)
    zoom = np.array(record.native_spacing) / np.array(record.spacing)
    zyx_shape = tuple(record.original_shape[i] for i in np.argsort(np.asarray(record.orientation)[:, 0]))[::-1]
    restored = _resample(placed, zoom, zyx_shape, order)
    return from_zyx(restored, np.asarray(record.orientation))


def scale_intensity(
    array: np.ndarray, mask: np.ndarray, config: PreprocessConfig
) -> tuple[np.ndarray, IntensityRecord]:
    """Map the percentile range inside the mask to [-1, 1], clipping if the config says so."""
    values = array[mask] if mask.any() else array.ravel()
    low, high = np.percentile(values, [config.lower_percentile, config.upper_percentile])
    if high <= low:
        high = low + 1.0
    record = IntensityRecord(float(low), float(high))
    scaled = 2.0 * (array - low) / (high - low) - 1.0
    if config.clip:
        scaled = np.clip(scaled, -1.0, 1.0)
    return scaled.astype(np.float32), record


def unscale_intensity(array: np.ndarray, record: IntensityRecord) -> np.ndarray:
    """Inverse of `scale_intensity` (before any clipping)."""
    return ((np.asarray(array, dtype=np.float32) + 1.0) / 2.0 * (record.high - record.low) + record.low).astype(
        np.float32
    )


def preprocess(
    volume: Volume,
    config: PreprocessConfig,
    grid: GridRecord | None = None,
    mask: Volume | None = None,
) -> Preprocessed:
    """Put one volume on the network grid in [-1, 1]; pass the source's `grid` to process its target identically."""
    mask_zyx = to_zyx(mask)[0] > 0 if mask is not None else None
    record = grid if grid is not None else plan_grid(volume, config, mask_zyx)
    array = to_grid(volume, record)
    if mask is not None:
        fg = to_grid(mask, record, order=0, fill=0.0) > 0
    else:
        fg = foreground_mask(array)
    scaled, intensity = scale_intensity(array, fg, config)
    return Preprocessed(scaled, fg, record, intensity)


def postprocess(
    array: np.ndarray, grid: GridRecord, intensity: IntensityRecord, header: nib.Nifti1Header | None = None
) -> Volume:
    """Put a network-grid array in [-1, 1] back on the original grid, affine and intensity range."""
    restored = from_grid(array, grid, fill=-1.0)
    data = unscale_intensity(restored, intensity)
    hdr = header.copy() if header is not None else nib.Nifti1Header()
    return Volume(data=data, affine=np.asarray(grid.original_affine), header=hdr)
