"""Read and write NIfTI volumes with nibabel, turning every bad file into a one-line `UserError`."""

from __future__ import annotations

import gzip
import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np

from .errors import UserError

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def voxel_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along the three array axes of an affine: the lengths of its first three columns."""
    return tuple(float(v) for v in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]


@dataclass
class Volume:
    """A 3D image: float32 voxel array (as stored in the file, not reoriented), its affine and its NIfTI header."""

    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header
    path: Path | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the three array axes, from the affine."""
        return voxel_spacing(self.affine)

    @property
    def orientation(self) -> str:
        """Axis codes such as 'RAS' or 'LPS' (nibabel's convention: where each axis points)."""
        return "".join(nib.aff2axcodes(self.affine))


def is_nifti(path: Path | str) -> bool:
    """True when the file name ends in .nii or .nii.gz."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def read_header(path: Path | str) -> nib.Nifti1Image:
    """Open a NIfTI lazily (header and affine only), with a clear error for a missing or non-NIfTI file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found; check the path")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, expected a .nii or .nii.gz file")
    try:
        img = nib.load(str(path))
    except (nib.filebasedimages.ImageFileError, gzip.BadGzipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable NIfTI file ({_short(exc)}); re-export it as .nii or .nii.gz") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise UserError(f"{path}: is a {type(img).__name__}, not NIfTI; convert it to .nii.gz (e.g. with dcm2niix)")
    return img


def spatial_shape(img: nib.Nifti1Image, path: Path | str) -> tuple[int, int, int]:
    """The 3D grid of an image; a 2D image or a 4D one with more than one volume is a `UserError`."""
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) > 4 or (len(shape) == 4 and shape[3] != 1):
        raise UserError(
            f"{path}: is {len(shape)}D with shape {shape}; expected one 3D volume (split it, e.g. fslsplit, and pass one)"
        )
    if len(shape) < 3 or min(shape) < 2:
        raise UserError(f"{path}: has shape {shape}, which is not a 3D volume; pass the whole 3D image, not a slice")
    return shape  # type: ignore[return-value]


def load_volume(path: Path | str, *, allow_constant: bool = False) -> Volume:
    """Load a 3D NIfTI as float32; raise `UserError` for every problem a user can fix (one line, names the file)."""
    path = Path(path)
    img = read_header(path)
    shape = spatial_shape(img, path)
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError, ValueError) as exc:
        raise UserError(
            f"{path}: the voxel data is corrupt or truncated ({_short(exc)}); copy or export the file again"
        ) from exc
    data = data.reshape(shape)
    finite = np.isfinite(data)
    if not finite.all():
        bad = int((~finite).sum())
        raise UserError(
            f"{path}: {bad} voxel(s) are NaN or Inf; replace them (e.g. fslmaths in -nan out) before using this file"
        )
    if not allow_constant and float(data.max()) == float(data.min()):
        raise UserError(f"{path}: every voxel has the value {float(data.min()):g}; the image is empty or blank")
    header = img.header.copy()
    return Volume(data=data, affine=img.affine.copy(), header=header, path=path)


def save_volume(volume: Volume, path: Path | str, dtype: type = np.float32) -> Path:
    """Write a volume as NIfTI (float32 unless `dtype` says otherwise) keeping its affine and header, atomically."""
    path = Path(path)
    if not is_nifti(path):
        raise UserError(f"{path}: output name must end in .nii or .nii.gz")
    path.parent.mkdir(parents=True, exist_ok=True)
    header = volume.header.copy()
    header.set_data_dtype(dtype)
    header.set_slope_inter(1.0, 0.0)
    img = nib.Nifti1Image(np.asarray(volume.data, dtype=dtype), volume.affine, header=header)
    # keep the qform/sform codes the input had (nibabel resets them when only an affine is given)
    sform, scode = volume.header.get_sform(coded=True)
    qform, qcode = volume.header.get_qform(coded=True)
    img.set_sform(volume.affine, int(scode) if sform is not None and scode else 1)
    img.set_qform(volume.affine, int(qcode) if qform is not None and qcode else 1)
    suffix = ".nii.gz" if str(path).lower().endswith(".nii.gz") else ".nii"
    return atomic_write(path, suffix, lambda tmp: nib.save(img, tmp))


def save_array(
    data: np.ndarray,
    affine: np.ndarray,
    path: Path | str,
    header: nib.Nifti1Header | None = None,
    dtype: type = np.float32,
) -> Path:
    """Write a plain array with an affine (and optionally a header to copy) as NIfTI."""
    hdr = header.copy() if header is not None else nib.Nifti1Header()
    return save_volume(Volume(np.asarray(data), np.asarray(affine, dtype=np.float64), hdr), path, dtype=dtype)


def atomic_write(path: Path, suffix: str, write: Callable[[str], object]) -> Path:
    """Write through `write(temporary_path)` in the target folder, then rename: a crash never leaves half a file.

    The file gets the permissions a plain `open()` would have given it (mkstemp alone makes it owner-only). A failed
    write (full disk, read-only folder) is a one-line `UserError`; the previous file at `path`, if any, is untouched.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=suffix)
        os.close(fd)
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and "writ" not in str(exc).lower():
            raise
        kept = "; the previous file is intact" if path.exists() else ""
        raise UserError(f"{path}: could not be written ({_short(exc)}); free disk space or choose a writable folder{kept}") from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
    return path


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:120]
