"""Read and write NIfTI volumes with nibabel, turning every bad file into a one-line `UserError`."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import tempfile
import zlib
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from isal import igzip
from nibabel.openers import ImageOpener

from .errors import UserError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: the gzip writer of .nii.gz outputs: Intel ISA-L's (python-isal), the same format and level as nibabel's zlib,
#: faster (benchmarks/RESULTS.md §13)
GZIP_WRITER = igzip.IGzipFile


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


#: Analyze 7.5 (.hdr/.img pairs): refused, because the format stores no reliable orientation (left/right can flip)
ANALYZE_SUFFIXES = (".hdr", ".hdr.gz", ".img", ".img.gz")


def is_analyze(path: Path | str) -> bool:
    """True when the file name is one half of an Analyze 7.5 .hdr/.img pair."""
    return str(path).lower().endswith(ANALYZE_SUFFIXES)


def check_path(path: Path | str) -> Path:
    """A `UserError` unless `path` is a regular, non-empty file: missing, a folder, a broken or looping link, 0
    bytes."""
    path = Path(path)
    if os.path.islink(path) and not path.exists():
        try:
            path.resolve(strict=True)
        except RuntimeError:  # Python < 3.13 says 'Symlink loop'
            raise UserError(
                f"{path}: is a symbolic link that loops back on itself; point the link at the real file"
            ) from None
        except OSError as exc:
            if "loop" in str(exc).lower() or getattr(exc, "errno", None) == 40:
                raise UserError(
                    f"{path}: is a symbolic link that loops back on itself; point the link at the real file"
                ) from None
        raise UserError(f"{path}: is a broken symbolic link (to {os.readlink(path)}); point the link at the real file")
    if not path.exists():
        raise UserError(f"{path}: file not found; check the path")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a NIfTI file; pass the .nii or .nii.gz file (or rename the folder)")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: is empty (0 bytes); export or copy the file again")
    return path


def read_header(path: Path | str) -> nib.Nifti1Image:
    """Open a NIfTI lazily (header and affine only) and check what the header says without reading the voxels:
    a missing, empty, non-NIfTI or Analyze file, complex or RGB voxels, zero or negative voxel sizes, a singular
    affine, or (uncompressed .nii) a header describing more data than the file holds is a one-line `UserError`."""
    path = check_path(path)
    if is_analyze(path):
        raise UserError(
            f"{path}: is an Analyze 7.5 .hdr/.img pair, not NIfTI (Analyze has no reliable orientation); "
            "convert it to .nii.gz (e.g. fslchfiletype NIFTI_GZ) after checking left and right"
        )
    try:
        with _quiet_nibabel():  # nibabel logs (and silently 'fixes') bad pixdims; they are checked below instead
            img = nib.load(str(path))
    except (nib.filebasedimages.ImageFileError, gzip.BadGzipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable NIfTI file ({_short(exc)}); re-export it as .nii or .nii.gz") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise UserError(f"{path}: is a {type(img).__name__}, not NIfTI; convert it to .nii.gz (e.g. with dcm2niix)")
    _check_header(img, path)
    return img


def _check_header(img: nib.Nifti1Image, path: Path) -> None:
    dtype = img.get_data_dtype()
    if dtype.kind == "c":
        raise UserError(
            f"{path}: holds complex-valued voxels ({dtype}); save the magnitude image "
            "(e.g. fslcomplex -realabs) and pass that"
        )
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise UserError(
            f"{path}: holds {'RGB or vector' if dtype.fields else dtype} voxels, not one intensity per voxel; "
            "save a single-channel (grey) image"
        )
    raw = _raw_header(img, path)
    if raw is not None and int(raw["sform_code"]) == 0:  # without an sform the voxel sizes (pixdim) make the affine
        ndim = min(3, int(raw["dim"][0]) if 1 <= int(raw["dim"][0]) <= 7 else 3)
        sizes = [float(v) for v in raw["pixdim"][1 : 1 + ndim]]
        if not all(np.isfinite(v) and v > 0 for v in sizes):
            raise UserError(
                f"{path}: the header gives voxel sizes {tuple(sizes)} (zero or negative); fix the header's "
                "voxel size (pixdim) or re-export the image with a valid orientation"
            )
    linear = np.asarray(img.affine, dtype=np.float64)[:3, :3]
    lengths = np.sqrt((linear**2).sum(axis=0))
    if (
        not np.isfinite(linear).all()
        or lengths.min() <= 0
        or abs(np.linalg.det(linear)) < 1e-6 * float(np.prod(lengths))
    ):
        raise UserError(
            f"{path}: its affine (orientation matrix) is singular or not finite, so the voxel grid is "
            "undefined; fix the sform/qform (e.g. fslorient) or re-export the image"
        )
    if not str(path).lower().endswith(".gz"):
        header = img.header
        needed = int(header.get_data_offset()) + int(np.prod(img.shape)) * header.get_data_dtype().itemsize
        size = path.stat().st_size
        if size < needed:
            raise UserError(
                f"{path}: the header describes {needed} bytes of voxel data and offset but the file holds "
                f"{size}; the file is truncated: copy or export it again"
            )


@contextmanager
def _quiet_nibabel():
    """Keep nibabel's header warnings off stderr (an error here is one line, from us)."""
    logger = nib.imageglobals.logger
    disabled, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = disabled


def _raw_header(img: nib.Nifti1Image, path: Path):
    """The header exactly as stored (nibabel fixes bad pixdims while loading), or None if it cannot be re-read."""
    try:
        with ImageOpener(str(path)) as fh:
            return type(img.header).from_fileobj(fh, check=False)
    except Exception:  # noqa: BLE001 - the loaded header is checked anyway
        return None


def spatial_shape(img: nib.Nifti1Image, path: Path | str) -> tuple[int, int, int]:
    """The 3D grid of an image; a 2D image or a 4D one with more than one volume is a `UserError`."""
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) > 4 or (len(shape) == 4 and shape[3] != 1):
        raise UserError(
            f"{path}: is {len(shape)}D with shape {shape}; expected one 3D volume (split it, e.g. fslsplit, and "
            f"pass one)"
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
        if "Expected" in str(exc) and "bytes" in str(exc):
            raise UserError(
                f"{path}: the header describes more voxel data than the file holds ({_short(exc)}); "
                "the file is truncated: copy or export it again"
            ) from exc
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
        raise UserError(
            f"{path}: every voxel has the value {float(data.min()):g}, so the image is blank; "
            "export it again (or pass the right file)"
        )
    header = img.header.copy()
    return Volume(data=data, affine=img.affine.copy(), header=header, path=path)


def sidecar_path(volume_path: Path) -> Path:
    """The JSON record beside a NIfTI file: NAME.json for NAME.nii.gz or NAME.nii."""
    return volume_path.with_name(volume_path.name.removesuffix(".gz").removesuffix(".nii") + ".json")


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
    return atomic_write(path, suffix, lambda tmp: write_nifti(img, tmp))


def write_nifti(img: nib.Nifti1Image, path: str) -> None:
    """nibabel's save, with .nii.gz streamed through `GZIP_WRITER` at nibabel's compression level."""
    if not path.lower().endswith(".gz"):
        nib.save(img, path)
        return
    # no file name and time in the gzip header (the name is a temporary one): the same volume gives the same bytes
    with (
        open(path, "wb") as raw,
        GZIP_WRITER(
            filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=nib.openers.Opener.default_compresslevel
        ) as stream,
    ):
        holder = nib.FileHolder(fileobj=stream)
        img.to_file_map({"image": holder, "header": holder})


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
        raise UserError(
            f"{path}: could not be written ({_short(exc)}); free disk space or choose a writable folder{kept}"
        ) from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
    return path


def plain(value: Any) -> Any:
    """The value in plain JSON and YAML types: dataclasses as dicts, tuples as lists, NumPy scalars as numbers."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def file_digest(path: Path | str, algorithm: str = "sha256") -> str:
    """The hex digest of a file's content (SHA-256 unless another hashlib algorithm is named, e.g. a published sha1)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, algorithm).hexdigest()


def file_identity(path: Path | str) -> dict[str, object]:
    """A file's resolved path, size and modification time: what tells, without reading it, that it may have changed."""
    st = os.stat(path)
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:120]
