"""The built-in paired-data generator: FLAIR/T1 subjects made from the MNI152 2009 anatomy that nilearn ships.

How a subject is made (DESIGN.md, "The built-in simulator"):
1. Anatomy: nilearn's 1 mm MNI152 2009 grey- and white-matter probability maps. The brain mask is the
   (skull-stripped) MNI T1 template's non-zero region united with GM+WM > 0.5, dilated by 1 mm so that a thin
   rim of extra-cerebral CSF surrounds the cortex; CSF = mask - GM - WM.
   The maps are blurred once per output spacing by the slice profile (partial volume) and cached.
2. Per subject (all drawn from one seed): a small affine (rotation, scale, translation), a smooth elastic
   displacement, white-matter lesions (blobs of 1-3 ellipsoids, each lesion with its own T1/T2/PD, so that some
   are dark and some nearly invisible on T1 while all are bright on FLAIR), tissue (T1, T2, PD) at 3 T jittered,
   sequence timings jittered, a different smooth bias field per modality, a gain and a Rician noise level.
3. One trilinear `map_coordinates` pass per map goes from the output grid straight into template space
   (output voxel -> mm -> affine -> + elastic displacement -> template voxel); the displacement is computed on a
   coarse grid (about 6 mm) and upsampled, and only voxels that land in 4 mm template blocks holding tissue are
   sampled (the rest is background). Tissue fractions give labels by argmax and the signals by partial-
   volume mixing of the signal equations (spin-echo T1w; FLAIR = inversion recovery with the CSF-nulling TI).

Storage: arrays are (z, y, x); on disk they are written transposed to (x, y, z) with a diagonal RAS affine, so
nibabel's canonical orientation plus ``transpose(2, 1, 0)`` gives the (z, y, x) arrays back.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ..errors import UserError
from ..io import Volume, plain, save_array, voxel_spacing
from .head import add_head, head_image, head_labels
from .preprocess import PAPER_FOV_MM as FIELD_OF_VIEW_MM  # every simulated grid covers it; spacing = grid_spacing(grid)
from .preprocess import PAPER_GRID, PAPER_SPACING, foreground_mask, from_zyx, grid_spacing, to_zyx  # noqa: F401  (PAPER_SPACING: part of this module's API)

SMALL_GRID: tuple[int, int, int] = (32, 96, 80)
#: centre of the field of view in MNI mm (x, y, z): the brain's box centre in x and y; in z the top of the brain
#: keeps a margin and the lowest cerebellum is cut (144 mm of slices, as the paper's 48 x 3 mm)
FOV_CENTRE_MM = np.array([0.0, -17.0, 18.0])

SUBJECT_FILES = (
    "flair.nii.gz",
    "t1.nii.gz",
    "t2.nii.gz",
    "pd.nii.gz",
    "labels.nii.gz",
    "lesion.nii.gz",
    "simulation.json",
)
#: the sequences the simulator can write: FLAIR and T1 always, T2 and PD on request (no contrast agent: no T1ce)
SEQUENCES = ("flair", "t1", "t2", "pd")
MARKER_FILE = ".modalsynth-simulated.json"
SUBJECT_PREFIX = "sim-"

#: (T1 ms, T2 ms, proton density) at 3 T, literature-typical values (e.g. Wansapura 1999; Stanisz 2005)
TISSUES_3T: dict[str, tuple[float, float, float]] = {
    "csf": (4000.0, 2000.0, 1.00),
    "gm": (1330.0, 110.0, 0.80),
    "wm": (830.0, 75.0, 0.70),
}
_COARSE_STEP_MM = 6.0  # control-grid spacing of the elastic displacement and the bias fields
_TEMPLATE_MARGIN = 6  # voxels kept around the brain box when cropping the template
SCANNER_KEYS = ("wm_level", "bias_std", "noise_fraction")  # per sequence: gain, bias-field strength, Rician noise
_BLOCK = 4  # voxels per side of the blocks of the template's support map (where tissue may be sampled)


@dataclass
class SimulatedSubject:
    """One simulated pair: float32 images, uint8 labels/lesion, all (z, y, x); `affine` is for (x, y, z) storage."""

    flair: np.ndarray
    t1: np.ndarray
    labels: np.ndarray
    lesion: np.ndarray
    affine: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)
    more: dict[str, np.ndarray] = field(default_factory=dict)  # the other sequences asked for (t2, pd)


@dataclass(frozen=True)
class _Template:
    """Tissue fractions on the cropped 1 mm MNI grid in (z, y, x) order, and where voxel 0 sits in mm (z, y, x).

    (z, y, x) like the output grid, so that neighbouring output voxels read neighbouring memory when sampled.
    """

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    origin_mm: np.ndarray  # (z, y, x)
    lesion_sites: np.ndarray  # (n, 3) voxel indices (z, y, x) of deep white matter, candidate lesion centres
    support: np.ndarray | None = None  # blocks of _BLOCK voxels holding any tissue, padded by one empty block


# ----------------------------------------------------------------------------------------------- grid geometry


def grid_affine(grid: tuple[int, int, int]) -> np.ndarray:
    """The RAS affine of `grid` for data stored in (x, y, z) order, centred on `FOV_CENTRE_MM`."""
    shape_xyz = np.array(grid[::-1], dtype=float)
    spacing_xyz = np.array(grid_spacing(grid)[::-1])
    affine = np.diag([*spacing_xyz, 1.0])
    affine[:3, 3] = FOV_CENTRE_MM - (shape_xyz - 1) / 2 * spacing_xyz
    return affine


def _check_grid(grid: tuple[int, int, int]) -> tuple[int, int, int]:
    values = tuple(int(g) for g in grid)
    if len(values) != 3 or min(values) < 8:
        raise UserError(f"grid {tuple(grid)}: give three integers D H W, each at least 8 (e.g. 48 288 240)")
    return values


# ----------------------------------------------------------------------------------------------- templates


def _template_path(name: str) -> Path:
    """A file of nilearn's wheel, found without importing nilearn (its import pulls in scikit-learn: seconds)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("nilearn is not installed; the simulator needs its MNI152 templates (pip install nilearn)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    path = folder / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz"
    if not path.exists():
        raise UserError(f"{path}: MNI152 template missing from the nilearn install; reinstall it (pip install nilearn)")
    return path


@functools.lru_cache(maxsize=1)
def _load_template() -> _Template:
    """Load the MNI152 2009 maps once per process, derive CSF and crop to the brain (1 mm, stored (z, y, x))."""
    images = {name: nib.Nifti1Image.from_filename(_template_path(name)) for name in ("t1", "gm", "wm")}
    affine = images["t1"].affine
    if not np.allclose(affine[:3, :3], np.eye(3)):
        raise UserError(f"{_template_path('t1')}: unexpected template affine; reinstall nilearn")
    t1, gm, wm = (np.asarray(images[name].dataobj).transpose(2, 1, 0) for name in ("t1", "gm", "wm"))  # uint8
    mask = (t1 > 0) | (gm.astype(np.uint16) + wm > 127)  # has no enclosed holes (checked), so no filling
    box = tuple(
        slice(max(int(kept[0]) - _TEMPLATE_MARGIN, 0), int(kept[-1]) + 1 + _TEMPLATE_MARGIN)
        for kept in (np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3))
    )
    gm, wm = (np.ascontiguousarray(a[box], dtype=np.float32) / np.float32(255.0) for a in (gm, wm))
    # dilated by 1 mm: a thin rim of extra-cerebral CSF around the cortex
    mask = ndimage.maximum_filter(mask[box].view(np.uint8), footprint=ndimage.generate_binary_structure(3, 1))
    brain = np.maximum(mask.astype(np.float32), gm + wm)
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    origin = affine[:3, 3][::-1] + np.array([s.start for s in box], dtype=float)
    sites = np.argwhere((wm > 0.95) & (np.arange(wm.shape[0])[:, None, None] + origin[0] > -20))
    return _Template(gm=gm, wm=wm, csf=csf.astype(np.float32), origin_mm=origin, lesion_sites=sites)


@functools.lru_cache(maxsize=4)
def _blurred_template(spacing: tuple[float, float, float]) -> _Template:
    """The template blurred by the slice profile of `spacing` (z, y, x): Gaussian FWHM = voxel size over 1 mm."""
    base = _load_template()
    sigma = [math.sqrt(max(s * s - 1.0, 0.0)) / 2.355 for s in spacing]
    if max(sigma) >= 0.2:
        blur = functools.partial(ndimage.gaussian_filter, sigma=sigma, mode="constant", truncate=3.0)
        base = _Template(
            gm=blur(base.gm),
            wm=blur(base.wm),
            csf=blur(base.csf),
            origin_mm=base.origin_mm,
            lesion_sites=base.lesion_sites,
        )
    return _Template(**{**base.__dict__, "support": _support_blocks(base.gm + base.wm + base.csf > 1e-4)})


def _support_blocks(tissue: np.ndarray) -> np.ndarray:
    """Which _BLOCK-voxel blocks hold tissue (dilated by one block), padded by one empty block on every side."""
    padded = np.pad(tissue, [(0, -n % _BLOCK) for n in tissue.shape])
    (a, b, c) = (n // _BLOCK for n in padded.shape)
    blocks = padded.reshape(a, _BLOCK, b, _BLOCK, c, _BLOCK)
    occupied = blocks.any(axis=(1, 3, 5))
    occupied = ndimage.binary_dilation(occupied, np.ones((3, 3, 3), bool))
    return np.pad(occupied, 1)


# ----------------------------------------------------------------------------------------------- physics


def spin_echo(pd: Any, t1: Any, t2: Any, tr: float, te: float) -> Any:
    """Spin-echo signal PD (1 - exp(-TR/T1)) exp(-TE/T2): with short TR and TE it is T1-weighted."""
    return pd * (1.0 - np.exp(-tr / t1)) * np.exp(-te / t2)


def inversion_recovery(pd: Any, t1: Any, t2: Any, tr: float, te: float, ti: float) -> Any:
    """Magnitude inversion-recovery signal PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2) (FLAIR)."""
    return pd * np.abs(1.0 - 2.0 * np.exp(-ti / t1) + np.exp(-tr / t1)) * np.exp(-te / t2)


def null_inversion_time(t1: float, tr: float) -> float:
    """The TI that nulls a tissue of longitudinal relaxation `t1` (TI = T1 ln 2 when TR >> T1)."""
    return t1 * math.log(2.0 / (1.0 + math.exp(-tr / t1)))


# ----------------------------------------------------------------------------------------------- parameters


def _draw_parameters(rng: np.random.Generator, template: _Template) -> dict[str, Any]:
    """Every random choice for one subject, JSON-friendly (drawn in a fixed order so a seed fixes the subject)."""
    tissues = {}
    for name, (t1, t2, pd) in TISSUES_3T.items():
        jitter = np.clip(rng.normal(0.0, [0.05, 0.05, 0.03] if name != "csf" else [0.02, 0.05, 0.02]), -0.12, 0.12)
        tissues[name] = {"t1_ms": t1 * (1 + jitter[0]), "t2_ms": t2 * (1 + jitter[1]), "pd": pd * (1 + jitter[2])}
    t1w = {"tr_ms": rng.uniform(450.0, 650.0), "te_ms": rng.uniform(8.0, 15.0)}
    flair = {"tr_ms": rng.uniform(8000.0, 10000.0), "te_ms": rng.uniform(80.0, 120.0)}
    # the protocol aims TI at the subject's CSF (as a tuned scanner protocol does) with a small error
    flair["ti_ms"] = null_inversion_time(tissues["csf"]["t1_ms"], flair["tr_ms"]) * (1 + rng.normal(0.0, 0.01))
    pose = {
        "rotation_deg": np.clip(rng.normal(0.0, 3.0, 3), -8, 8).tolist(),
        "scale": (1 + np.clip(rng.normal(0.0, 0.03, 3), -0.08, 0.08)).tolist(),
        "translation_mm": np.clip(rng.normal(0.0, 2.5, 3), -6, 6).tolist(),
        "elastic_rms_mm": rng.uniform(1.0, 3.0),
        "elastic_smoothness_mm": rng.uniform(12.0, 20.0),
    }
    lesions = _draw_lesions(rng, template, tissues["wm"]["t1_ms"])
    scanner = {
        "flair_bias_std": rng.uniform(0.04, 0.12),
        "t1_bias_std": rng.uniform(0.04, 0.12),
        "flair_wm_level": rng.uniform(260.0, 340.0),  # gain: the white-matter intensity before bias and noise
        "t1_wm_level": rng.uniform(450.0, 560.0),
        "flair_noise_fraction": rng.uniform(0.015, 0.04),  # Rician sigma as a fraction of the WM level
        "t1_noise_fraction": rng.uniform(0.015, 0.04),
    }
    return {"tissues": tissues, "t1w": t1w, "flair": flair, "pose": pose, "lesions": lesions, "scanner": scanner}


def _draw_lesions(rng: np.random.Generator, template: _Template, wm_t1: float) -> list[dict[str, Any]]:
    """White-matter lesions: 1-3 ellipsoids each, and per-lesion (T1, T2, PD) drawn independently.

    A subject-level share of 'dark' lesions (T1 1.7-2.0 x WM: hypointense on T1) against nearly isointense ones
    (T1 1.3-1.5 x WM, where the raised PD and T2 make up for the longer T1) makes the T1 look of a lesion vary
    between lesions and subjects, while T2 (130-220 ms) keeps every lesion bright on FLAIR.
    """
    count = 2 + int(rng.poisson(rng.uniform(2.0, 12.0)))
    dark_share = rng.uniform(0.2, 0.8)
    lesions = []
    for _ in range(count):
        site = template.lesion_sites[rng.integers(len(template.lesion_sites))]
        centre = (site + template.origin_mm)[::-1]  # mm (x, y, z)
        radius = float(np.clip(np.exp(rng.normal(math.log(3.5), 0.45)), 1.5, 10.0))
        parts = []
        for part in range(int(rng.integers(1, 4))):
            offset = np.zeros(3) if part == 0 else rng.normal(0.0, radius * 0.7, 3)
            parts.append(
                {
                    "centre_mm": (centre + offset).tolist(),
                    "radii_mm": (radius * rng.uniform(0.6, 1.6, 3) * (0.7 if part else 1.0)).tolist(),
                    "rotation": _random_quaternion(rng).tolist(),
                }
            )
        dark = rng.uniform() < dark_share
        lesions.append(
            {
                "parts": parts,
                "t1_ms": wm_t1 * (rng.uniform(1.7, 2.0) if dark else rng.uniform(1.3, 1.5)),
                "t2_ms": rng.uniform(130.0, 220.0),
                "pd": rng.uniform(0.78, 0.88),
                "t1_dark": bool(dark),
            }
        )
    return lesions


def _random_quaternion(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3D rotation as a unit quaternion (x, y, z, w): a normalised 4D Gaussian."""
    quaternion = rng.standard_normal(4)
    return quaternion / np.linalg.norm(quaternion)


# ----------------------------------------------------------------------------------------------- geometry


def _random_field(rng: np.random.Generator, shape: tuple[int, ...], sigma_mm: float, step_mm: np.ndarray) -> np.ndarray:
    """A smooth zero-mean unit-RMS random field on the coarse grid (white noise blurred by `sigma_mm`)."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_mm / step_mm, mode="reflect")
    noise -= noise.mean()
    return noise / max(float(np.sqrt((noise**2).mean())), 1e-12)


def _coarse_points(grid: tuple[int, int, int]) -> tuple[list[np.ndarray], tuple[int, int, int], np.ndarray]:
    """Coarse sample positions (output voxel indices, (z, y, x)) that include both grid ends."""
    counts = tuple(max(2, min(n, math.ceil(fov / _COARSE_STEP_MM) + 1)) for n, fov in zip(grid, FIELD_OF_VIEW_MM))
    points = [np.linspace(0.0, n - 1.0, c) for n, c in zip(grid, counts)]
    step_mm = np.array([fov / (c - 1) for fov, c in zip(FIELD_OF_VIEW_MM, counts)])
    return points, counts, step_mm  # type: ignore[return-value]


def _upsample(coarse: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Trilinear upsampling of a coarse field whose corner samples sit on the corner voxels of `shape`.

    Hand-written as separable 1D linear interpolation (two `take`s per axis): scipy.ndimage.zoom(order=1,
    grid_mode=False) gives the same values, several times slower.
    """
    out = coarse.astype(np.float32)
    for axis, n in enumerate(shape):
        n_in = out.shape[axis]
        position = np.linspace(0.0, n_in - 1.0, n)
        left = np.minimum(np.floor(position).astype(np.intp), max(n_in - 2, 0))
        right = np.minimum(left + 1, n_in - 1)
        weight = (position - left).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(3)])
        low = out.take(left, axis=axis)
        out = low + weight * (out.take(right, axis=axis) - low)
    return out


def _template_coordinates(
    grid: tuple[int, int, int], pose: dict[str, Any], rng: np.random.Generator, template: _Template
) -> np.ndarray:
    """For every output voxel, its template voxel coordinate (3, D, H, W) as (z, y, x) template indices."""
    points, counts, step_mm = _coarse_points(grid)
    affine = grid_affine(grid)
    zz, yy, xx = np.meshgrid(*points, indexing="ij")
    voxel_xyz = np.stack([xx, yy, zz, np.ones_like(xx)], axis=-1)
    world = voxel_xyz @ affine[:3].T  # (cz, cy, cx, 3) mm
    rotation = Rotation.from_euler("xyz", pose["rotation_deg"], degrees=True).as_matrix()
    linear = rotation @ np.diag(pose["scale"])
    moved = (world - FOV_CENTRE_MM) @ linear.T + FOV_CENTRE_MM + np.array(pose["translation_mm"])
    for axis in range(3):
        field_zyx = _random_field(rng, counts, pose["elastic_smoothness_mm"], step_mm)
        moved[..., axis] += pose["elastic_rms_mm"] * field_zyx
    # template voxel = mm - origin (1 mm voxels, identity axes), reordered to (z, y, x)
    coarse = np.moveaxis(moved[..., ::-1] - template.origin_mm, -1, 0)
    return np.stack([_upsample(c, grid) for c in coarse])


def _bias_field(rng: np.random.Generator, grid: tuple[int, int, int], std: float) -> np.ndarray:
    """A smooth multiplicative bias field exp(b), b of RMS `std`, different per call."""
    _, counts, step_mm = _coarse_points(grid)
    log_bias = std * _random_field(rng, counts, 60.0, step_mm)
    return np.exp(_upsample(log_bias, grid))


def _lesion_maps(template: _Template, lesions: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Template-space maps (4, z, y, x) over the box holding all lesions: lesion share L (soft 1 mm edges),
    L*T1, L*T2 and L*PD; and the template index (z, y, x) of the box's first voxel."""
    edge_mm = 1.0
    parts = [(lesion, part) for lesion in lesions for part in lesion["parts"]]
    centres = [np.array(part["centre_mm"])[::-1] - template.origin_mm for _, part in parts]  # template (z, y, x)
    reach = [max(part["radii_mm"]) + 2 * edge_mm for _, part in parts]
    lowest = np.min([c - r for c, r in zip(centres, reach)], axis=0)
    highest = np.max([c + r for c, r in zip(centres, reach)], axis=0)
    start = np.maximum(np.floor(lowest).astype(int), 0)
    stop = np.minimum(np.ceil(highest).astype(int) + 1, template.wm.shape)
    maps = np.zeros((4, *np.maximum(stop - start, 1)), dtype=np.float32)
    for (lesion, part), centre, extent in zip(parts, centres, reach):
        lo = np.maximum(np.floor(centre - extent).astype(int), start)
        hi = np.minimum(np.ceil(centre + extent).astype(int) + 1, stop)
        if np.any(hi <= lo):
            continue
        axes = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij")
        offsets_xyz = (np.stack(axes, axis=-1) - centre)[..., ::-1]  # mm, (x, y, z) like the rotation
        local = offsets_xyz @ Rotation.from_quat(part["rotation"]).as_matrix()  # into the ellipsoid's frame
        radii = np.array(part["radii_mm"])
        distance = np.sqrt(((local / radii) ** 2).sum(-1))  # 1 on the ellipsoid surface
        share = np.clip((1.0 - distance) * radii.min() / edge_mm + 0.5, 0.0, 1.0).astype(np.float32)
        region = maps[(slice(None), *(slice(a, b) for a, b in zip(lo - start, hi - start)))]
        stronger = share > region[0]
        for channel, factor in enumerate((1.0, lesion["t1_ms"], lesion["t2_ms"], lesion["pd"])):
            region[channel][stronger] = share[stronger] * factor
    return maps, start


# ----------------------------------------------------------------------------------------------- one subject


def _sample(volume: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of a template map at template voxel coordinates (0 outside)."""
    return ndimage.map_coordinates(volume, coords, order=1, mode="constant", cval=0.0, output=np.float32)


def _rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of a complex signal with Gaussian noise of `sigma` in both channels (Rician noise)."""
    real = signal + rng.standard_normal(signal.shape, dtype=np.float32) * np.float32(sigma)
    imaginary = rng.standard_normal(signal.shape, dtype=np.float32) * np.float32(sigma)
    return np.sqrt(real * real + imaginary * imaginary, dtype=np.float32)


def _supported(coords: np.ndarray, template: _Template) -> np.ndarray:
    """Flat indices of the output voxels whose template position lies in a block holding tissue."""
    assert template.support is not None
    block = [np.clip((c // _BLOCK).astype(np.int32) + 1, 0, n - 1) for c, n in zip(coords, template.support.shape)]
    return np.flatnonzero(template.support[tuple(block)])


def _draw_more_sequences(rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """Timings and scanner levels of the optional T2-weighted and proton-density spin echoes (their own stream)."""
    return {
        "t2": {
            "tr_ms": rng.uniform(4000.0, 6000.0),
            "te_ms": rng.uniform(85.0, 110.0),
            "wm_level": rng.uniform(180.0, 260.0),
            "bias_std": rng.uniform(0.04, 0.12),
            "noise_fraction": rng.uniform(0.015, 0.04),
        },
        "pd": {
            "tr_ms": rng.uniform(2500.0, 3500.0),
            "te_ms": rng.uniform(10.0, 20.0),
            "wm_level": rng.uniform(350.0, 450.0),
            "bias_std": rng.uniform(0.04, 0.12),
            "noise_fraction": rng.uniform(0.015, 0.04),
        },
    }


def simulate_subject(
    seed: int, grid: tuple[int, int, int] = PAPER_GRID, head: bool = False, sequences: tuple[str, ...] = ("flair", "t1")
) -> SimulatedSubject:
    """Simulate one paired FLAIR/T1 subject with tissue labels and a lesion mask on `grid` (z, y, x); with `head`,
    whole-head images (data/head.py around the brain; labels and lesion stay the brain's, the head is label 0).
    `sequences` may add 't2' and 'pd' (spin echoes of the same tissue maps, drawn from their own random stream, so
    the FLAIR and T1 of a seed do not change)."""
    grid = _check_grid(grid)
    unknown = sorted(set(sequences) - set(SEQUENCES))
    if unknown:
        raise UserError(f"--sequences {','.join(unknown)}: the simulator writes {', '.join(SEQUENCES)}")
    spacing = grid_spacing(grid)
    rng = np.random.default_rng(seed)
    template = _blurred_template(tuple(round(s, 6) for s in spacing))
    params = _draw_parameters(rng, template)
    params.update({"seed": int(seed), "grid": list(grid), "spacing_mm": list(spacing)})

    coords = _template_coordinates(grid, params["pose"], rng, template)
    # only voxels that can hold tissue are sampled (about a third of the grid); the rest is background
    inside = _supported(coords, template)
    at = coords.reshape(3, -1)[:, inside]
    gm, csf, wm = (_sample(m, at) for m in (template.gm, template.csf, template.wm))
    lesion_maps, lesion_start = _lesion_maps(template, params["lesions"])
    at_lesions = at - lesion_start[:, None].astype(np.float32)
    lesion_share = _sample(lesion_maps[0], at_lesions)
    lesion_frac = lesion_share * wm  # lesions replace white matter only
    wm -= lesion_frac
    background = np.clip(1.0 - (gm + csf + wm + lesion_frac), 0.0, 1.0)

    # per-voxel lesion relaxation times, only where a lesion is (weighted average over overlapping lesions)
    in_lesion = np.flatnonzero(lesion_frac > 1e-3)
    share = np.maximum(lesion_share[in_lesion], 1e-6)
    lesion_t1, lesion_t2, lesion_pd = (_sample(lesion_maps[k], at_lesions[:, in_lesion]) / share for k in (1, 2, 3))
    if head:  # its own random stream, so a subject's brain is the same with and without a head
        brain = np.zeros(grid, dtype=bool)
        brain.ravel()[inside] = background < 0.5
        around = head_labels(brain, spacing, np.random.default_rng([seed, 1]))
        params["head"] = True

    scanner = params["scanner"]
    protocols: list[tuple[str, Callable[..., Any], dict[str, Any], dict[str, Any], np.random.Generator]] = [
        ("flair", inversion_recovery, params["flair"], {k: scanner[f"flair_{k}"] for k in SCANNER_KEYS}, rng),
        ("t1", spin_echo, params["t1w"], {k: scanner[f"t1_{k}"] for k in SCANNER_KEYS}, rng),
    ]
    more: list[str] = [name for name in ("t2", "pd") if name in sequences]
    if more:
        more_rng = np.random.default_rng([seed, 2])
        drawn = _draw_more_sequences(more_rng)
        for name in more:
            params[name] = drawn[name]
            timing = {k: v for k, v in drawn[name].items() if k in ("tr_ms", "te_ms")}
            protocols.append((name, spin_echo, timing, {k: drawn[name][k] for k in SCANNER_KEYS}, more_rng))
    images: dict[str, np.ndarray] = {}
    for name, equation, sequence, levels, stream in protocols:
        timing = {k[:-3]: v for k, v in sequence.items()}  # tr_ms -> tr, ...
        tissue_signal = {
            t: float(equation(p["pd"], p["t1_ms"], p["t2_ms"], **timing)) for t, p in params["tissues"].items()
        }
        signal = gm * tissue_signal["gm"] + csf * tissue_signal["csf"] + wm * tissue_signal["wm"]
        signal[in_lesion] += lesion_frac[in_lesion] * equation(lesion_pd, lesion_t1, lesion_t2, **timing)
        level = levels["wm_level"]
        bias = _bias_field(stream, grid, levels["bias_std"])
        clean = np.zeros(grid, dtype=np.float32)
        clean.ravel()[inside] = signal * np.float32(level / tissue_signal["wm"]) * bias.ravel()[inside]
        if head:
            clean += (
                head_image(around, functools.partial(equation, **timing), level / tissue_signal["wm"], spacing) * bias
            )
        # whole numbers, as scanners write them (the step is far below the noise; the files gzip 3x smaller)
        images[name] = np.round(_rician(clean, levels["noise_fraction"] * level, stream))

    labels = np.zeros(grid, dtype=np.uint8)
    labels.ravel()[inside] = np.argmax(np.stack([background, csf, gm, wm, lesion_frac]), axis=0)
    lesion = (labels == 4).astype(np.uint8)
    return SimulatedSubject(
        flair=images["flair"],
        t1=images["t1"],
        labels=labels,
        lesion=lesion,
        affine=grid_affine(grid),
        params=params,
        more={name: images[name] for name in more},
    )


# ----------------------------------------------------------------------------------------------- a data folder


def subject_seed(seed: int, index: int) -> int:
    """The seed of subject `index` in a data set made with `seed` (independent streams via SeedSequence)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _prepare_folder(out: Path, grid: tuple[int, int, int], seed: int, subjects: int) -> None:
    """Create `out`, or accept it when empty or made by this simulator; refuse a folder holding other data."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: is a file; give a folder for --out")
    out.mkdir(parents=True, exist_ok=True)
    entries = sorted(out.iterdir())
    marker = out / MARKER_FILE
    if entries and not marker.exists():
        raise UserError(f"{out}: folder already holds other data; give an empty or new folder for --out")
    foreign = [p.name for p in entries if p != marker and not _is_simulator_subject(p)]
    if foreign:
        raise UserError(
            f"{out}: holds files the simulator did not write ({', '.join(foreign[:3])}); give an empty or new folder"
        )
    # subjects left from an earlier, larger run would be mixed into this data set: remove them (ours only)
    for stale in entries:
        if stale != marker and int(stale.name[len(SUBJECT_PREFIX) :]) >= subjects:
            shutil.rmtree(stale)
    text = json.dumps({"generator": "modalsynth.data.simulate", "seed": seed, "subjects": subjects, "grid": list(grid)})
    marker.write_text(text + "\n")


def _is_simulator_subject(path: Path) -> bool:
    name = path.name
    return (
        path.is_dir()
        and name.startswith(SUBJECT_PREFIX)
        and name[len(SUBJECT_PREFIX) :].isdigit()
        and all(f.name in SUBJECT_FILES for f in path.iterdir())
    )


def write_subject(subject: SimulatedSubject, folder: Path) -> Path:
    """Write a subject's four NIfTI files ((z, y, x) arrays stored as (x, y, z), RAS affine) and its parameters."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "flair": subject.flair,
        "t1": subject.t1,
        **subject.more,
        "labels": subject.labels,
        "lesion": subject.lesion,
    }
    for name, array in arrays.items():
        data = np.ascontiguousarray(array.transpose(2, 1, 0))
        save_array(
            data,
            subject.affine,
            folder / f"{name}.nii.gz",
            dtype=np.uint8 if name in ("labels", "lesion") else np.float32,
        )
    text = json.dumps(plain(subject.params), indent=1, sort_keys=True)
    (folder / "simulation.json").write_text(text + "\n")
    return folder


def simulate_dataset(
    out: Path,
    subjects: int,
    seed: int = 0,
    grid: tuple[int, int, int] = PAPER_GRID,
    progress: bool = False,
    head: bool = False,
    sequences: tuple[str, ...] = ("flair", "t1"),
) -> list[Path]:
    """Write `subjects` simulated pairs as OUT/sim-000/{flair,t1,labels,lesion}.nii.gz (and t2, pd if `sequences`
    asks); same seed, same bytes; with `head`, whole-head (not skull-stripped) images."""
    out = Path(out)
    grid = _check_grid(grid)
    if subjects < 1:
        raise UserError(f"--subjects {subjects}: give at least 1")
    if seed < 0:
        raise UserError(f"--seed {seed}: give a seed >= 0")
    _prepare_folder(out, grid, seed, subjects)
    indices = range(subjects)
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc="simulate", unit="subject")
    folders = []
    for index in indices:
        subject = simulate_subject(subject_seed(seed, index), grid, head, sequences)
        folders.append(write_subject(subject, out / f"{SUBJECT_PREFIX}{index:03d}"))
    return folders


# ----------------------------------------------------------------------------------------------- heads for real brains

#: nominal 3 T timings (ms) for a head around a real brain: the middle of the simulator's ranges
NOMINAL_SEQUENCES = {
    "flair": functools.partial(
        inversion_recovery, tr=9000.0, te=100.0, ti=null_inversion_time(TISSUES_3T["csf"][0], 9000.0)
    ),
    "t1": functools.partial(spin_echo, tr=550.0, te=12.0),
}


def with_head(volume: Volume, contrast: str, seed: int = 0) -> tuple[Volume, np.ndarray]:
    """A whole-head version of a skull-stripped FLAIR or T1 (its brain voxels unchanged) and the brain mask, both on
    its grid: the head of data/head.py, scaled so a half-grey, half-white-matter voxel matches the brain's median,
    its CSF rim at the brain's own CSF level (the brain's darkest percent: CSF is its darkest tissue in both)."""
    zyx, ornt, affine = to_zyx(volume)
    brain = foreground_mask(zyx)
    spacing = voxel_spacing(affine)
    rng = np.random.default_rng(seed)
    labels = head_labels(brain, spacing, rng)
    sequence = NOMINAL_SEQUENCES[contrast]
    darkest, median = (float(v) for v in np.percentile(zyx[brain], [1, 50]))
    reference = np.mean([sequence(pd, t1, t2) for t1, t2, pd in (TISSUES_3T["gm"], TISSUES_3T["wm"])])
    head = head_image(labels, sequence, median / reference, spacing, csf=darkest)
    whole = add_head(zyx, brain, labels, head, 0.02 * median, rng)
    return Volume(from_zyx(whole, ornt), volume.affine, volume.header, volume.path), from_zyx(brain, ornt)
