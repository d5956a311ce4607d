"""Brain extraction for raw (not skull-stripped) scans, offline, with deepbet's networks (the `strip` extra).

deepbet (MIT, Fisch et al. 2024) ships its two TorchScript networks inside its wheel, so nothing is downloaded at run
time; it works on the voxel grid it is given (a 128^3 pass to find the brain's box, a 256^3 pass inside it) and its
mask comes back on the input's grid. That mask is the brain mask (`strip --mask`); a prediction keeps it grown by
BRAIN_MARGIN_MM (`kept_region`), so no brain edge the mask misses is lost. `auto` skips it for an input that already
looks skull-stripped: a foreground of at most MAX_BRAIN_ML inside its outline (a brain, not a head), which costs a
threshold and a hole filling instead of a network pass.
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


def looks_skull_stripped(volume: Volume) -> bool:
    """True when what the volume shows is no bigger than a brain (a head with skull and scalp is about twice as big)."""
    return outline_ml(volume) <= MAX_BRAIN_ML


@functools.lru_cache(maxsize=1)
def _extractor() -> Any:
    """deepbet's two networks, loaded once per process from its wheel; a `UserError` when deepbet is missing."""
    try:
        from deepbet import BrainExtraction
    except ImportError:
        raise UserError(f"skull stripping needs the optional package deepbet: {INSTALL_HINT}") from None
    import torch

    return BrainExtraction(no_gpu=not torch.cuda.is_available())


def brain_mask(volume: Volume) -> np.ndarray:
    """The brain of a whole-head volume as a boolean array on its own grid: deepbet's mask (threshold 0.5)."""
    image = nib.Nifti1Image(np.asarray(volume.data, dtype=np.float32), volume.affine, volume.header)
    try:
        _, mask, _ = _extractor().run(image)
    except AssertionError as exc:  # deepbet asserts when its first pass finds no brain
        raise UserError(
            f"{volume.path or 'input'}: the skull stripper found no brain ({exc}); is it a head MRI?"
        ) from None
    return np.asarray(mask.dataobj) > 0


def kept_region(mask: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """The voxels a prediction keeps around a brain mask (`spacing` in mm per array axis): the mask grown by
    BRAIN_MARGIN_MM, so a brain edge the mask misses is synthesised rather than blanked."""
    return mask | (ndimage.distance_transform_edt(~mask, sampling=spacing) <= BRAIN_MARGIN_MM)


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
        """The region to strip `volume` with (the brain mask grown by the margin, `kept_region`), or None when it is
        used as it is."""
        if self.mode == "never" or (self.mode == "auto" and looks_skull_stripped(volume)):
            return None
        return kept_region(brain_mask(volume), volume.spacing)

    def around(
        self, volume: Volume, predict: Callable[[Volume, list[Volume]], Volume], companions: Sequence[Volume] = ()
    ) -> Volume:
        """`predict(brain, companions' brains)`: the brain of `volume` (with its margin) and of images on its grid
        (other sequences), found on `volume`; the result is on the input's grid, the rest as `predict` left it (its
        background) or, with `keep_head`, the input's head."""
        region = self.region_of(volume)
        if region is None:
            return predict(volume, list(companions))
        out = predict(masked(volume, region), [masked(v, region) for v in companions])
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
        written.append(save_volume(masked(volume, kept_region(mask, volume.spacing)), output))
    return written
