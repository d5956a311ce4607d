"""Brain extraction for raw (not skull-stripped) scans, offline, with deepbet's networks (the `strip` extra).

deepbet (MIT, Fisch et al. 2024) ships its two TorchScript networks inside its wheel, so nothing is downloaded at run
time; it works on the voxel grid it is given (a 128^3 pass to find the brain's box, a 256^3 pass inside it) and its
mask comes back on the input's grid. That mask is the brain mask (`strip --mask`); a prediction keeps it grown by
BRAIN_MARGIN_MM, and on a slab also into the brain-like tissue connected to it up to TISSUE_GROW_MM away
(`kept_region_of`), so no brain edge the mask misses is lost. `auto` skips it for an input that already looks
skull-stripped, judged by what a head looks like (`head_cues`, a fraction of a second instead of a network pass):
a head shows a bright scalp rim (skin, fat) outside a dark band (the skull) in every slice across it, whatever its
size or coverage; a stripped brain's outer shells are cortex and sulci. An outline bigger than any brain is a head too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from ..errors import UserError
from ..io import Volume
from .preprocess import STRIP_MODES

#: the largest adult intracranial volumes are about 2 litres (the simulator's brain on coarse grids shows up to 2.2);
#: a head with skull and scalp shows 3-5 litres in a brain MRI's field of view
MAX_BRAIN_ML = 2500.0
INSTALL_HINT = "pip install 'modalsynth[strip]'"
#: a prediction keeps deepbet's mask grown by this margin: a brain voxel left out becomes background in the synthetic
#: image (and drags its percentile scaling), an extra CSF voxel at the edge costs little; the brain mask itself stays
#: deepbet's, the closest to the brain (benchmarks/RESULTS.md, "Raw scans")
BRAIN_MARGIN_MM = 1.0
#: on a slab (`is_slab`), grown further through voxels in the brain's own intensity range (above TISSUE_LOW of the
#: median inside the mask, at most its TISSUE_HIGH_PERCENTILE), up to this far from the mask: deepbet's mask of a slab
#: cuts off cortex, which this keeps, while the dark band of CSF and skull around the brain stops the grow before the
#: marrow and the scalp; a whole head's mask misses little cortex, and there the grow would spread deepbet's own
#: false positives (marrow, fat) further (benchmarks/RESULTS.md section 18)
TISSUE_GROW_MM, TISSUE_LOW, TISSUE_HIGH_PERCENTILE = 3.0, 0.5, 99.0


def check_mode(mode: str) -> str:
    """The skull-strip mode, or a `UserError` naming the choices."""
    if mode not in STRIP_MODES:
        raise UserError(f"--skull-strip {mode}: choose {', '.join(STRIP_MODES)}")
    return mode


def outline_ml(volume: Volume) -> float:
    """Millilitres inside the outline of what the volume shows: voxels above a tenth of its 99.5th percentile (skin and
    muscle are, noise is not), with the holes of every slice filled along each axis (a skull is dark in every MR
    contrast, and a head cut by the field of view is closed in its slices, not in 3D); on every other voxel."""
    step = 2 if min(volume.shape) >= 32 else 1
    coarse = np.asarray(volume.data[::step, ::step, ::step], dtype=np.float32)
    above = coarse > 0.1 * float(np.percentile(coarse, 99.5))
    filled = above.copy()
    for axis in range(3):
        in_plane = np.zeros((3, 3, 3), bool)
        in_plane[tuple(1 if a == axis else slice(None) for a in range(3))] = ndimage.generate_binary_structure(2, 1)
        filled |= ndimage.binary_fill_holes(above, in_plane)
    return float(filled.sum()) * float(np.prod(volume.spacing)) * volume.data.size / coarse.size / 1000.0


#: a head's scalp rim is at least this many times as bright (above the air) as the darkest shell inside it (the skull
#: band); a stripped brain's outer shells hold cortex and sulci and stay within a third of each other (RESULTS.md)
MIN_RIM_CONTRAST = 1.6
#: the outer shells searched for the scalp rim, the shells inside it searched for the skull band, and a shell's width
RIM_MM, BAND_MM, SHELL_MM = 10.0, 12.0, 2.0


@dataclass(frozen=True)
class HeadCues:
    """What tells a head from a brain: the scalp rim's contrast over the darkest shell inside it (shells of equal
    in-plane depth below the outline, each by its median above the air) and the outline's size."""

    rim_contrast: float
    outline_ml: float

    def reasons(self) -> list[str]:
        """Why the volume looks like a head; empty for a skull-stripped brain."""
        found = []
        if self.rim_contrast >= MIN_RIM_CONTRAST:
            found.append(f"a bright rim over a dark band ({self.rim_contrast:.1f}x)")
        if self.outline_ml > MAX_BRAIN_ML:
            found.append(f"an outline of {self.outline_ml / 1000:.1f} litres")
        return found


def head_cues(volume: Volume) -> HeadCues:
    """The cues of a head in `volume`, measured in the slices across its thinnest extent (so a slab that covers part
    of a head shows its scalp ring in every slice), one slice every 3 mm, about 2 mm per in-plane voxel."""
    spacing = np.asarray(volume.spacing, dtype=float)
    axis = int(np.argmin(np.asarray(volume.shape) * spacing))
    steps = [2 if s < 1.3 else 1 for s in spacing]
    steps[axis] = max(1, int(round(3.0 / spacing[axis])))
    sampled = np.asarray(volume.data[tuple(slice(None, None, s) for s in steps)], dtype=np.float32)
    sampled = np.moveaxis(sampled, axis, 0)
    in_plane = np.delete(spacing * steps, axis)
    low, high = (float(v) for v in np.percentile(sampled, [1.0, 99.5]))
    above = sampled > low + 0.1 * (high - low)
    inside = np.zeros_like(above)
    for k in range(len(above)):  # a skull is dark in every MR contrast: the outline's holes are filled per slice
        inside[k] = ndimage.binary_fill_holes(above[k])
    millilitres = float(inside.sum()) * float(np.prod(spacing * steps)) / 1000.0
    # the median of each shell of in-plane depth below the outline (a huge spacing across keeps slices apart)
    depth = ndimage.distance_transform_edt(inside, sampling=(1e6, *in_plane))
    near = inside & (depth < RIM_MM + BAND_MM)
    shell = (depth[near] // SHELL_MM).astype(np.int64)
    values = sampled[near]
    ordered = values[np.lexsort((values, shell))]
    ends = np.cumsum(np.bincount(shell, minlength=int((RIM_MM + BAND_MM) / SHELL_MM)))
    starts = np.concatenate([[0], ends[:-1]])
    medians = np.array([ordered[(a + b) // 2] - low if b - a > 20 else np.nan for a, b in zip(starts, ends)])
    rim = medians[: int(RIM_MM / SHELL_MM)]
    contrast = 1.0
    if not np.all(np.isnan(rim)):
        peak = int(np.nanargmax(rim))
        band = medians[peak + 1 : peak + 1 + int(BAND_MM / SHELL_MM)]
        band = band[~np.isnan(band)]
        if band.size:
            contrast = float(medians[peak] / max(float(band.min()), 1e-3 * (high - low), 1e-12))
    return HeadCues(contrast, millilitres)


def looks_skull_stripped(volume: Volume) -> bool:
    """True when the volume shows none of a head's cues (`head_cues`): no scalp rim over a skull band, an outline no
    bigger than a brain."""
    return not head_cues(volume).reasons()


@functools.lru_cache(maxsize=1)
def _extractor() -> Any:
    """deepbet's two networks, loaded once per process from its wheel; a `UserError` when deepbet is missing."""
    try:
        from deepbet import BrainExtraction
    except ImportError:
        raise UserError(f"skull stripping needs the optional package deepbet: {INSTALL_HINT}") from None
    import torch

    return BrainExtraction(no_gpu=not torch.cuda.is_available())


#: an axis whose field of view is shorter than SLAB_MM is a slab of a head; deepbet (which looks at the whole field of
#: view squeezed into 128^3 first) finds its brain far better when that axis is padded with air to about PAD_TO_MM
#: (a 30 mm slab: Dice 0.92 as it is, 0.99 padded; benchmarks/RESULTS.md section 17)
SLAB_MM, PAD_TO_MM = 100.0, 150.0


def is_slab(volume: Volume) -> bool:
    """True for a volume that covers part of a head: one of its axes spans less than SLAB_MM."""
    return any(n * mm < SLAB_MM for n, mm in zip(volume.shape, volume.spacing))


def brain_mask(volume: Volume) -> np.ndarray:
    """The brain of a whole-head volume as a boolean array on its own grid: deepbet's mask (threshold 0.5); a slab is
    padded with air to PAD_TO_MM across for deepbet and its mask cropped back."""
    data = np.asarray(volume.data, dtype=np.float32)
    affine = np.asarray(volume.affine, dtype=float).copy()
    pads = []
    for axis, (n, mm) in enumerate(zip(volume.shape, volume.spacing)):
        before = int(round((PAD_TO_MM - n * mm) / (2 * mm))) if n * mm < SLAB_MM else 0
        pads.append((before, before))
        affine[:3, 3] -= affine[:3, axis] * before
    padded = np.pad(data, pads, constant_values=float(data.min())) if any(b for b, _ in pads) else data
    image = nib.Nifti1Image(padded, affine, volume.header)
    try:
        _, mask, _ = _extractor().run(image)
    except AssertionError as exc:  # deepbet asserts when its first pass finds no brain
        raise UserError(
            f"{volume.path or 'input'}: the skull stripper found no brain ({exc}); is it a head MRI?"
        ) from None
    crop = tuple(slice(b, b + n) for (b, _), n in zip(pads, volume.shape))
    return np.asarray(mask.dataobj)[crop] > 0


def kept_region(mask: np.ndarray, spacing: tuple[float, ...], data: np.ndarray | None = None) -> np.ndarray:
    """The voxels a prediction keeps around a brain mask (`spacing` in mm per array axis): the mask grown by
    BRAIN_MARGIN_MM, and by at least one voxel along the finest axis (on a coarse grid a millimetre grows nothing), so
    a brain edge the mask misses is synthesised rather than blanked; with the image `data`, also the voxels of
    brain-like intensity connected to that through such voxels, up to TISSUE_GROW_MM from the mask."""
    distance = ndimage.distance_transform_edt(~mask, sampling=spacing)
    region = mask | (distance <= max(BRAIN_MARGIN_MM, min(spacing)))
    if data is None or not mask.any():
        return region
    inside = np.asarray(data[mask], dtype=np.float32)
    low = TISSUE_LOW * float(np.median(inside))
    high = float(np.percentile(inside, TISSUE_HIGH_PERCENTILE))
    tissue = (data > low) & (data <= high) & (distance <= max(TISSUE_GROW_MM, min(spacing)))
    return ndimage.binary_dilation(region, iterations=0, mask=region | tissue)


def kept_region_of(volume: Volume, mask: np.ndarray) -> np.ndarray:
    """The region a prediction keeps of `volume` around its brain `mask` (`kept_region`), grown into brain-like tissue
    on a slab, whose mask misses cortex, and by the margin alone on a whole head."""
    return kept_region(mask, volume.spacing, volume.data if is_slab(volume) else None)


def masked(volume: Volume, mask: np.ndarray) -> Volume:
    """The volume with everything outside `mask` set to 0 (a skull-stripped image)."""
    return Volume(np.where(mask, volume.data, 0.0).astype(np.float32), volume.affine, volume.header, volume.path)


@dataclass(frozen=True)
class SkullStrip:
    """How a prediction treats the skull: strip it (`always`), only when the input looks like a whole head (`auto`),
    or never; with `keep_head`, the output shows the input's head (in the output's intensity range) around the brain."""

    mode: str = "never"
    keep_head: bool = False

    def __post_init__(self) -> None:
        check_mode(self.mode)

    def region_of(self, volume: Volume) -> np.ndarray | None:
        """The region to strip `volume` with (the brain mask grown, `kept_region_of`), or None when it is used as it
        is."""
        if self.mode == "never" or (self.mode == "auto" and looks_skull_stripped(volume)):
            return None
        return kept_region_of(volume, brain_mask(volume))

    def around(
        self,
        volume: Volume,
        predict: Callable[[Volume, list[Volume], bool], Volume],
        companions: Sequence[Volume] = (),
    ) -> Volume:
        """`predict(brain, companions' brains, stripped)`: the brain of `volume` (with its margin) and of images on its
        grid (other sequences), found on `volume`, and whether it was stripped here; the result is on the input's grid,
        the rest as `predict` left it (its background) or, with `keep_head`, the input's head."""
        region = self.region_of(volume)
        if region is None:
            return predict(volume, list(companions), False)
        out = predict(masked(volume, region), [masked(v, region) for v in companions], True)
        if self.keep_head:
            out.data[~region] = head_in_range_of(volume, out, region)
        return out


def head_in_range_of(volume: Volume, out: Volume, mask: np.ndarray) -> np.ndarray:
    """The input's voxels outside the brain, scaled so the input brain's 99.5th percentile becomes the output brain's
    (a scale, no shift: air stays dark, as in any magnitude image)."""
    source_high, out_high = (float(np.percentile(v.data[mask], 99.5)) if mask.any() else 1.0 for v in (volume, out))
    return (volume.data[~mask] * (out_high / max(source_high, 1e-6))).astype(np.float32)


def strip_file(source: Path, output: Path | None = None, mask_path: Path | None = None) -> list[Path]:
    """`modalsynth strip`: write the brain mask (uint8) and/or the skull-stripped volume of one file, the latter as
    `predict` strips it (zero outside the mask's `kept_region`), so predicting from it equals predicting from the
    head."""
    from ..io import NIFTI_SUFFIXES, load_volume, save_array, save_volume
    from ..writeguard import Output, check_writes

    if output is None and mask_path is None:
        raise UserError("modalsynth strip: give --output (the stripped volume) and/or --mask (the brain mask)")
    outputs = [
        Output(path, what, option, NIFTI_SUFFIXES)
        for path, what, option in (
            (output, "the skull-stripped volume", "--output"),
            (mask_path, "the brain mask", "--mask"),
        )
        if path is not None
    ]
    check_writes([source], outputs)
    volume = load_volume(source)
    mask = brain_mask(volume)
    written = []
    if mask_path is not None:
        written.append(
            save_array(mask.astype(np.uint8), volume.affine, mask_path, header=volume.header, dtype=np.uint8)
        )
    if output is not None:
        written.append(save_volume(masked(volume, kept_region_of(volume, mask)), output))
    return written
