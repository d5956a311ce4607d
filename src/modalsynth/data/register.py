"""Same-session rigid registration (`--register`): each moving image onto the first source's grid with SimpleITK
(the `register` extra), 6 degrees of freedom, Mattes mutual information.

Scans of one session share the scanner's coordinates, so the search starts at the identity (in world space) and looks
only for the head's motion between sequences. A result that makes the metric worse, or lands more than
MAX_SHIFT_MM / MAX_ROTATION_DEG away, is refused with one line naming both files: a wrong registration must never
reach a prediction or a training pair.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import UserError
from ..io import Volume

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'modalsynth[register]'"
#: motion between the sequences of one session stays well inside these; more means the optimiser went astray
MAX_SHIFT_MM = 20.0
MAX_ROTATION_DEG = 15.0
#: the metric's share of voxels per evaluation (random, seeded: the same run gives the same transform)
SAMPLING = 0.04
SEED = 41
#: LPS (ITK) from RAS (NIfTI) world coordinates, and back (its own inverse)
_FLIP = np.diag([-1.0, -1.0, 1.0])


def _sitk() -> Any:
    """SimpleITK, or a one-line `UserError` naming the extra that installs it."""
    try:
        import SimpleITK
    except ImportError:
        raise UserError(f"--register needs the optional package SimpleITK: {INSTALL_HINT}") from None
    return SimpleITK


@dataclass(frozen=True)
class Registration:
    """A rigid transform from the fixed image's world points to the moving image's (ITK's convention, LPS mm), and
    the metric (Mattes mutual information, lower is better) before and after."""

    fixed: str
    moving: str
    parameters: tuple[float, ...]  # Euler angles (rad) about x, y, z, then the translation (mm), all in LPS
    center: tuple[float, ...]  # the rotation's centre (LPS mm): the fixed image's foreground centre
    metric_before: float
    metric_after: float
    seconds: float

    @property
    def matrix(self) -> np.ndarray:
        """The 4x4 homogeneous matrix of the transform in RAS world coordinates (fixed point -> moving point)."""
        sitk = _sitk()
        euler = self.transform(sitk)
        rotation = np.asarray(euler.GetMatrix()).reshape(3, 3)
        lps = np.eye(4)
        lps[:3, :3] = rotation
        lps[:3, 3] = np.asarray(euler.GetTranslation()) + np.asarray(euler.GetCenter()) - rotation @ euler.GetCenter()
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        return flip @ lps @ flip

    @property
    def rotation_deg(self) -> float:
        """The transform's rotation angle in degrees."""
        rotation = self.matrix[:3, :3]
        return float(np.degrees(np.arccos(np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0))))

    @property
    def shift_mm(self) -> float:
        """How far the rotation's centre (the fixed foreground's centre) moves, in mm."""
        centre = np.append(_FLIP @ np.asarray(self.center), 1.0)
        return float(np.linalg.norm((self.matrix @ centre - centre)[:3]))

    def transform(self, sitk: Any | None = None) -> Any:
        """The SimpleITK `Euler3DTransform`."""
        sitk = sitk or _sitk()
        euler = sitk.Euler3DTransform()
        euler.SetCenter(self.center)
        euler.SetParameters(self.parameters)
        return euler

    def describe(self) -> str:
        """One log line: what moved onto what, by how much, and the metric before and after."""
        angles = ", ".join(f"{np.degrees(a):.2f}" for a in self.parameters[:3])
        shift = ", ".join(f"{t:.2f}" for t in self.parameters[3:])
        return (
            f"registered {self.moving} onto {self.fixed}: rigid, rotation {self.rotation_deg:.2f} deg (Euler x, y, z "
            f"{angles} deg), translation ({shift}) mm (ITK LPS), centre moved {self.shift_mm:.2f} mm; Mattes MI "
            f"{self.metric_before:.4f} -> {self.metric_after:.4f} ({self.seconds:.1f} s)"
        )

    def to_dict(self) -> dict[str, object]:
        """The record for a cache manifest or a run's log (JSON-ready)."""
        return {
            "fixed": self.fixed,
            "moving": self.moving,
            "euler_xyz_rad_then_translation_mm_lps": [round(p, 6) for p in self.parameters],
            "center_mm_lps": [round(c, 4) for c in self.center],
            "rotation_deg": round(self.rotation_deg, 4),
            "center_shift_mm": round(self.shift_mm, 4),
            "mattes_mi_before": round(self.metric_before, 6),
            "mattes_mi_after": round(self.metric_after, 6),
        }

    def save(self, path: Path) -> Path:
        """Write the transform as an ITK transform file (.tfm, .txt or .h5), readable by ANTs, Slicer and SimpleITK."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _sitk().WriteTransform(self.transform(), str(path))
        return path


def to_itk(volume: Volume, data: np.ndarray | None = None) -> Any:
    """A SimpleITK image of `volume` (or of `data` on its grid) in ITK's LPS world coordinates."""
    sitk = _sitk()
    array = np.asarray(volume.data if data is None else data)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    linear = _FLIP @ np.asarray(volume.affine, dtype=float)[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(d) for d in (linear / spacing).ravel()])
    image.SetOrigin([float(o) for o in _FLIP @ np.asarray(volume.affine, dtype=float)[:3, 3]])
    return image


def _name(volume: Volume) -> str:
    return str(volume.path) if volume.path is not None else "the image"


def _foreground(volume: Volume) -> np.ndarray:
    """Voxels above a tenth of the 99th percentile, closed: where the metric looks (the head or the brain)."""
    data = np.asarray(volume.data, dtype=np.float32)
    above = data > 0.1 * float(np.percentile(data[::2, ::2, ::2], 99.0))
    return ndimage.binary_dilation(above, iterations=2)


def _method(sitk: Any, fixed_mask: Any, sampling: float) -> Any:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(sampling, SEED)
    method.SetMetricFixedMask(fixed_mask)
    # gradients at the sampled points only: a gradient image of the whole volume per level costs more than the search
    method.SetMetricUseFixedImageGradientFilter(False)
    method.SetMetricUseMovingImageGradientFilter(False)
    method.SetInterpolator(sitk.sitkLinear)
    return method


def register_rigid(fixed: Volume, moving: Volume) -> Registration:
    """The rigid transform that brings `moving` onto `fixed` (same session: searched from the identity in world
    space); a `UserError` naming both files when it fails or lands implausibly (`check_plausible`)."""
    import time

    sitk = _sitk()
    start = time.perf_counter()
    fixed_image = sitk.Cast(to_itk(fixed), sitk.sitkFloat32)
    moving_image = sitk.Cast(to_itk(moving), sitk.sitkFloat32)
    mask = _foreground(fixed)
    fixed_mask = to_itk(fixed, mask.astype(np.uint8))
    centre_index = np.argwhere(mask).mean(axis=0)
    centre = fixed_image.TransformContinuousIndexToPhysicalPoint([float(c) for c in centre_index])
    initial = sitk.Euler3DTransform()
    initial.SetCenter(centre)
    method = _method(sitk, fixed_mask, SAMPLING)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=0.005, numberOfIterations=120, relaxationFactor=0.6, gradientMagnitudeTolerance=1e-8
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(initial, inPlace=False)
    try:
        found = method.Execute(fixed_image, moving_image)
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else "no reason given"
        raise UserError(
            f"registering {_name(moving)} onto {_name(fixed)} failed ({first_line}); check that both are scans of "
            "one head from one session, or leave out --register"
        ) from None
    euler = sitk.Euler3DTransform(sitk.CompositeTransform(found).GetNthTransform(0))
    judge = _method(sitk, fixed_mask, 0.1)  # before and after on the same, larger sample
    judge.SetInitialTransform(initial, inPlace=False)
    before = judge.MetricEvaluate(fixed_image, moving_image)
    judge.SetInitialTransform(euler, inPlace=False)
    after = judge.MetricEvaluate(fixed_image, moving_image)
    result = Registration(
        _name(fixed),
        _name(moving),
        tuple(float(p) for p in euler.GetParameters()),
        tuple(float(c) for c in euler.GetCenter()),
        float(before),
        float(after),
        time.perf_counter() - start,
    )
    check_plausible(result)
    return result


def check_plausible(result: Registration) -> None:
    """A `UserError` naming both files when a registration made the metric worse or moved more than the limits."""
    problem = None
    if not result.metric_after <= result.metric_before:
        problem = f"it made the match worse (Mattes MI {result.metric_before:.4f} -> {result.metric_after:.4f})"
    elif result.shift_mm > MAX_SHIFT_MM or result.rotation_deg > MAX_ROTATION_DEG:
        problem = (
            f"it moved {result.shift_mm:.1f} mm and {result.rotation_deg:.1f} deg, more than the {MAX_SHIFT_MM:.0f} mm "
            f"/ {MAX_ROTATION_DEG:.0f} deg head motion within one session"
        )
    if problem:
        raise UserError(
            f"registering {result.moving} onto {result.fixed} failed: {problem}; check that both are scans of one "
            "head from one session, or leave out --register"
        )


def resample_onto(moving: Volume, fixed: Volume, registration: Registration, nearest: bool = False) -> Volume:
    """`moving` on `fixed`'s grid (its affine and header) through the registration's transform: linear, or nearest
    neighbour for a label image (a lesion mask); 0 outside the moving image's field of view."""
    sitk = _sitk()
    interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    image = to_itk(moving, np.asarray(moving.data, dtype=np.float32))
    out = sitk.Resample(image, to_itk(fixed), registration.transform(sitk), interpolator, 0.0, sitk.sitkFloat32)
    data = np.ascontiguousarray(sitk.GetArrayFromImage(out).transpose(2, 1, 0), dtype=np.float32)
    return Volume(data, fixed.affine.copy(), fixed.header.copy(), moving.path)


@dataclass(frozen=True)
class Aligner:
    """`--register` for a prediction: every other source registered onto the first and resampled onto its grid, each
    transform printed and, with `transforms` (a folder), written as <subject>/<moving>_to_<fixed>.tfm."""

    transforms: Path | None = None

    def onto(self, first: Volume, others: list[Volume]) -> list[Volume]:
        """`others` on `first`'s grid; a `UserError` (before anything is written) when one registration fails."""
        results = [(other, register_rigid(first, other)) for other in others]
        moved = []
        for other, registration in results:
            log.info(registration.describe())
            if self.transforms is not None:
                log.info(f"wrote {registration.save(transform_path(self.transforms, first, other))}")
            moved.append(resample_onto(other, first, registration))
        return moved


def transform_path(folder: Path, fixed: Volume, moving: Volume) -> Path:
    """Where `--save-transform FOLDER` writes one registration: FOLDER/<subject>/<moving>_to_<fixed>.tfm, the subject
    being the moving file's folder."""
    subject = Path(moving.path).parent.name if moving.path is not None else "input"
    return Path(folder) / subject / f"{_stem(moving)}_to_{_stem(fixed)}.tfm"


def _stem(volume: Volume) -> str:
    return Path(volume.path).name.split(".")[0] if volume.path is not None else "image"


def register_subject(
    source: Volume, others: list[Volume], target: Volume | None, masks: list[Volume | None]
) -> tuple[list[Volume], Volume | None, list[Volume | None], list[dict[str, object]]]:
    """A training pair on its first source's grid (`train --register`): the other sources and the target registered
    onto `source` (even on its grid: the head may have moved between sequences) and resampled; a mask (brain, lesion)
    on the source's grid stays, one on the target's grid moves with the target's transform by nearest neighbour.
    Returns the moved images and each registration's record (printed too); a failed one is a `UserError`."""
    from .pairs import compare_grids

    def same_grid(a: Volume, b: Volume) -> bool:
        return compare_grids(a.shape, a.affine, b.shape, b.affine) is None

    records: list[dict[str, object]] = []

    def onto_source(moving: Volume) -> tuple[Volume, Registration]:
        registration = register_rigid(source, moving)
        log.info(registration.describe())
        records.append(registration.to_dict())
        return resample_onto(moving, source, registration), registration

    moved_others = [onto_source(v)[0] for v in others]
    moved_target, target_registration = (None, None) if target is None else onto_source(target)
    moved_masks: list[Volume | None] = []
    for mask in masks:
        if mask is not None and target is not None and target_registration is not None and not same_grid(source, mask):
            if not same_grid(target, mask):
                raise UserError(
                    f"{_name(mask)}: on neither the grid of {_name(source)} nor of {_name(target)}; save the mask on "
                    "the grid of the image it was drawn on"
                )
            mask = resample_onto(mask, source, target_registration, nearest=True)
        moved_masks.append(mask)
    return moved_others, moved_target, moved_masks, records


def record_registrations(subjects: dict[str, dict], out: Path) -> Path:
    """Write the registrations of a training run's subjects (their cache manifest entries) to OUT/registration.json
    and print one line summing them up."""
    import json

    records = {name: entry.get("registration", []) for name, entry in sorted(subjects.items())}
    done = [r for rs in records.values() for r in rs]
    path = Path(out) / "registration.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1) + "\n")
    if done:
        log.info(
            f"registered {len(done)} image(s) of {len(records)} subject(s) onto their first source: rotation up to "
            f"{max(float(r['rotation_deg']) for r in done):.1f} deg, centre moved up to "
            f"{max(float(r['center_shift_mm']) for r in done):.1f} mm ({path})"
        )
    return path
