"""A plausible head around a skull-stripped brain: CSF rim, skull (cortical tables and fatty marrow), scalp (skin,
subcutaneous fat, muscle), eyes in orbital fat, a nasal cavity and a neck with its spine; for tests of skull
stripping on whole heads, from the simulator's brains and from real skull-stripped brains alike.

The geometry is built in a RAS volume indexed (z, y, x) from the brain mask by distances in mm, with layer
thicknesses that vary smoothly over the head; each tissue then gets the signal of the sequence's equation for its
(T1, T2, PD) at 3 T, so a FLAIR and a T1 of one head show the same anatomy with their own contrasts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.morphology import convex_hull_image

#: head tissues, in order of precedence where their regions overlap (the brain itself comes first, label 1)
HEAD_TISSUES = ("brain", "csf", "bone", "marrow", "vitreous", "orbital_fat", "cord", "air", "skin", "fat", "muscle")
#: (T1 ms, T2 ms, proton density) at 3 T, literature-typical (e.g. Gold 2004; de Bazelaire 2004; Stanisz 2005);
#: cortical bone has almost no visible signal (T2* well under a millisecond), marrow is mostly fat in adults
HEAD_TISSUES_3T: dict[str, tuple[float, float, float]] = {
    "csf": (4000.0, 2000.0, 1.00),
    "bone": (250.0, 1.0, 0.05),
    "marrow": (420.0, 100.0, 0.80),
    "vitreous": (4000.0, 1500.0, 1.00),
    "orbital_fat": (380.0, 130.0, 0.90),
    "cord": (850.0, 75.0, 0.70),
    "air": (1000.0, 1.0, 0.0),
    "skin": (1000.0, 45.0, 0.75),
    "fat": (380.0, 130.0, 0.90),
    "muscle": (1400.0, 40.0, 0.75),
}
#: a signal equation of (pd, t1_ms, t2_ms) for one sequence, e.g. a spin echo with its TR and TE bound
Sequence = Callable[[float, float, float], float]


@dataclass(frozen=True)
class HeadShape:
    """Mean layer thicknesses in mm (each varies smoothly by about +-30 % over the head) and the eyes' size."""

    csf_mm: float = 2.5
    table_mm: float = 1.8  # inner and outer cortical tables of the skull
    marrow_mm: float = 3.0
    muscle_mm: float = 3.0  # galea and the muscles over the skull
    temporalis_mm: float = 8.0  # more muscle over the temples
    fat_mm: float = 5.0
    skin_mm: float = 2.0
    eye_radius_mm: float = 12.0


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], spacing: np.ndarray, scale_mm: float) -> np.ndarray:
    """A smooth random field of unit RMS that varies over about `scale_mm`, on a grid of `shape` and `spacing`."""
    coarse_shape = tuple(max(2, int(np.ceil(n * s / scale_mm)) + 1) for n, s in zip(shape, spacing))
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), 0.7, mode="wrap")
    coarse /= max(float(coarse.std()), 1e-6)
    coords = np.meshgrid(
        *[np.linspace(0, c - 1, n, dtype=np.float32) for c, n in zip(coarse_shape, shape)], indexing="ij", sparse=True
    )
    return ndimage.map_coordinates(coarse, np.broadcast_arrays(*coords), order=1).astype(np.float32)


def _ellipsoid(shape: tuple[int, ...], spacing: np.ndarray, centre_mm: np.ndarray, radii_mm: np.ndarray) -> np.ndarray:
    """Voxels inside an axis-aligned ellipsoid; centre and radii in mm (z, y, x) from voxel 0."""
    axes = [((np.arange(n) * s - c) / r) ** 2 for n, s, c, r in zip(shape, spacing, centre_mm, radii_mm)]
    return (axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :]) <= 1.0


def _distance_outside(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distance in mm from each voxel outside `mask` to the mask (0 inside)."""
    return ndimage.distance_transform_edt(~mask, sampling=spacing).astype(np.float32)


def head_labels(
    brain: np.ndarray, spacing: tuple[float, float, float], rng: np.random.Generator, shape: HeadShape = HeadShape()
) -> np.ndarray:
    """Label every voxel (index into HEAD_TISSUES + 1; 0 is air outside the head) around a brain mask (z, y, x, RAS)."""
    spacing_arr = np.asarray(spacing, dtype=float)
    brain = ndimage.binary_fill_holes(brain)
    if not brain.any():
        raise ValueError("head_labels needs a non-empty brain mask")
    grid = brain.shape

    def layer(mean_mm: float) -> np.ndarray:  # a thickness that varies smoothly over the head, never below 40 %
        return np.maximum(mean_mm * (1.0 + 0.3 * _smooth_field(rng, grid, spacing_arr, 40.0)), 0.4 * mean_mm)

    # the inner skull surface follows the brain's envelope, not its sulci: a blurred brain
    sigma = 3.0 / spacing_arr
    hull = ndimage.gaussian_filter(brain.astype(np.float32), sigma) > 0.25
    hull |= brain
    to_brain = _distance_outside(hull, spacing_arr)
    inner_table = layer(shape.csf_mm)
    marrow_start = inner_table + shape.table_mm
    outer_table = marrow_start + layer(shape.marrow_mm)
    skull_out = outer_table + shape.table_mm
    # eyes: below the front of the frontal lobes; a nasal cavity between and below them; the neck below the brain
    mm = [np.arange(n) * s for n, s in zip(grid, spacing_arr)]
    where = np.argwhere(brain) * spacing_arr
    low, high = where.min(0), where.max(0)
    centre = (low + high) / 2
    front = where[where[:, 1] > high[1] - 25.0]
    eye_z = front[:, 0].min() - shape.eye_radius_mm - 4.0  # the globe's top just under the orbital roof
    eye_y = high[1] - 0.9 * shape.eye_radius_mm
    eyes = np.zeros(grid, bool)
    orbits = np.zeros(grid, bool)
    for side in (-1.0, 1.0):
        eye_centre = np.array([eye_z, eye_y, centre[2] + side * 0.22 * (high[2] - low[2])])
        eyes |= _ellipsoid(grid, spacing_arr, eye_centre, np.full(3, shape.eye_radius_mm))
        fat_centre = eye_centre - np.array([0.0, 0.7 * shape.eye_radius_mm, 0.0])
        orbits |= _ellipsoid(grid, spacing_arr, fat_centre, np.array([1.3, 1.6, 1.3]) * shape.eye_radius_mm)
    nose = _ellipsoid(
        grid, spacing_arr, np.array([eye_z - 20.0, eye_y - 10.0, centre[2]]), np.array([22.0, 22.0, 14.0])
    )
    neck_top = low[0] + 0.3 * (high[0] - low[0])
    zz = mm[0][:, None, None]
    below = zz < neck_top
    neck_axes = ((mm[1][None, :, None] - (centre[1] - 10.0)) / 48.0) ** 2 + (
        (mm[2][None, None, :] - centre[2]) / 52.0
    ) ** 2
    neck = below & (neck_axes <= 1.0)
    canal = (mm[1][None, :, None] - (centre[1] - 25.0)) ** 2 + (mm[2][None, None, :] - centre[2]) ** 2
    cord = below & (canal <= 5.0**2) & (zz < low[0] + 15.0) & ~brain
    canal_csf = below & (canal <= 7.5**2) & ~cord & (zz < low[0] + 15.0)
    vertebra = (
        below
        & (((mm[1][None, :, None] - (centre[1] - 5.0)) ** 2 + (mm[2][None, None, :] - centre[2]) ** 2) <= 11.0**2)
        & (zz < neck_top - 20.0)
    )
    # the head's outline: per axial slice the convex hull of skull, scalp, eyes, face and neck
    temples = np.clip((np.abs(mm[2] - centre[2]) / (0.5 * (high[2] - low[2])) - 0.5) / 0.4, 0.0, 1.0)[None, None, :]
    temples = temples * ((zz > low[0] + 0.2 * (high[0] - low[0])) & (zz < centre[0] + 0.15 * (high[0] - low[0])))
    scalp_out = skull_out + layer(shape.muscle_mm) + shape.temporalis_mm * temples + layer(shape.fat_mm) + shape.skin_mm
    inside = (to_brain <= scalp_out) | ndimage.binary_dilation(orbits | nose, iterations=2) | neck
    for z in range(grid[0]):
        if inside[z].any():
            inside[z] = convex_hull_image(inside[z])
    to_surface = ndimage.distance_transform_edt(inside, sampling=spacing_arr).astype(np.float32)
    skin = to_surface <= shape.skin_mm
    fat = to_surface <= shape.skin_mm + layer(shape.fat_mm)
    bone_region = (to_brain > inner_table) & (to_brain <= skull_out)
    marrow = bone_region & (to_brain > marrow_start) & (to_brain <= outer_table)
    orbit_wall = ndimage.binary_dilation(orbits, iterations=max(1, int(round(2.0 / spacing_arr.min())))) & ~orbits
    orbit_wall &= ~(mm[1][None, :, None] > eye_y)  # open to the front
    regions = {
        "brain": brain,
        "csf": (hull | (to_brain <= inner_table)) & ~brain | canal_csf,
        "bone": bone_region & ~marrow | orbit_wall | vertebra & ~ndimage.binary_erosion(vertebra, iterations=2),
        "marrow": marrow | vertebra,
        "vitreous": eyes,
        "orbital_fat": orbits,
        "cord": cord,
        "air": nose,
        "skin": skin,
        "fat": fat,
        "muscle": inside,
    }
    labels = np.zeros(grid, np.uint8)
    for index in range(len(HEAD_TISSUES), 0, -1):  # lowest precedence first, so earlier tissues overwrite later ones
        labels[regions[HEAD_TISSUES[index - 1]] & inside] = index
    return labels


def head_image(
    labels: np.ndarray, sequence: Sequence, scale: float, spacing: tuple[float, float, float], csf: float | None = None
) -> np.ndarray:
    """The noise-free signal of the head's tissues (brain voxels 0) for one sequence, times `scale`, with the soft
    edges of partial volume (a Gaussian of about half a millimetre); `csf`: the CSF's signal instead of the
    equation's (a real brain's own CSF level, e.g. a FLAIR's incomplete nulling)."""
    table = np.zeros(len(HEAD_TISSUES) + 1, np.float32)
    for index, name in enumerate(HEAD_TISSUES[1:], start=2):
        t1, t2, pd = HEAD_TISSUES_3T[name]
        table[index] = scale * float(sequence(pd, t1, t2))
    if csf is not None:
        table[HEAD_TISSUES.index("csf") + 1] = csf
    image = table[labels]
    return ndimage.gaussian_filter(image, [0.5 / s for s in spacing]) * (labels != 1)


def add_head(
    image: np.ndarray,
    brain: np.ndarray,
    labels: np.ndarray,
    head: np.ndarray,
    noise_sd: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """A whole-head image: the brain's own voxels kept, the head's signal elsewhere, Rician noise outside the brain."""
    real = head + rng.standard_normal(head.shape, dtype=np.float32) * np.float32(noise_sd)
    imaginary = rng.standard_normal(head.shape, dtype=np.float32) * np.float32(noise_sd)
    noisy = np.sqrt(real * real + imaginary * imaginary)
    return np.where(brain, image, noisy).astype(np.float32)
