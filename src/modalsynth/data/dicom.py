"""DICOM folders as input (`predict --input`, `inspect`, `strip`): converted by dcm2niix (the `dicom` extra) into a
temporary folder that is removed afterwards, one series picked per sequence, written as NIfTI with a fresh header.

How a folder given as input is read (the one rule, in the README's words): a folder that holds no NIfTI file but DICOM
files (the 'DICM' marker at byte 128, at any depth) is a DICOM folder; every other folder is NIfTI data as
`pairs.discover_subjects` reads it (a BIDS tree, a data folder of subject folders, or for `predict` one subject's
folder).

A series is picked by what it is: its description (FLAIR, 'tirm'/'dark-fluid', T2, T1, MPRAGE, ...) and its
acquisition parameters (an inversion time of 1.5 s or more with a long TR nulls CSF: FLAIR; a short TR and TE: T1; a
long TR and TE: T2); localisers and derived series (reformats, maps, projections) are skipped, and so are series with
missing or unevenly spaced slices (refused, if asked for). Nothing identifying leaves: dcm2niix anonymises its sidecar,
the sidecars and the conversion are deleted, and the NIfTI written has a new header (no description, no times).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..errors import UserError
from ..io import NIFTI_SUFFIXES

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'modalsynth[dicom]'"
#: fewer slices than this is not a volume (a localiser, a single slice)
MIN_SLICES = 8
#: dcm2niix's words for a series that is not one evenly spaced volume
BROKEN_WARNINGS = ("Missing images", "Interslice distance varies", "slice spacing", "Unable to equalize")

_DESCRIPTION_KINDS = (
    ("flair", re.compile(r"flair|tirm|dark[\s_-]*fluid|darkfluid", re.I)),
    ("t1", re.compile(r"(?<![a-z0-9])t1|mprage|mp-rage|mp2rage|spgr|bravo|tfl3d|t1w|tfe", re.I)),
    ("t2", re.compile(r"(?<![a-z0-9])t2|t2w", re.I)),
)
_SKIPPED_DESCRIPTIONS = re.compile(r"locali[sz]er|scout|survey|aahead|(?<![a-z])loc(?![a-z])|3[\s_-]*plane", re.I)
_DERIVED_TYPES = {"DERIVED", "SECONDARY", "LOCALIZER", "MPR", "PROJECTION IMAGE", "MIP", "ADC", "TRACEW", "FA"}


def is_dicom_file(path: Path) -> bool:
    """True for a file with the DICOM preamble's 'DICM' marker."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom_folder(path: Path) -> bool:
    """The module's rule: a folder with DICOM files and no NIfTI file (any depth) is a DICOM folder."""
    path = Path(path)
    if not path.is_dir():
        return False
    files = [p for p in path.rglob("*") if p.is_file()]
    if any(p.name.lower().endswith(NIFTI_SUFFIXES) for p in files):
        return False
    return any(is_dicom_file(p) for p in files)


@dataclass(frozen=True)
class Series:
    """One volume dcm2niix made from a DICOM folder: its id (the series number, with dcm2niix's suffix when one
    series gave several), description, the sequence it looks like, why it is skipped (None: usable), its NIfTI file."""

    id: str
    description: str
    kind: str | None
    skipped: str | None
    nifti: Path
    shape: tuple[int, ...]

    def label(self) -> str:
        what = self.kind.upper() if self.kind and not self.skipped else (self.skipped or "unknown sequence")
        named = f" '{self.description}'" if self.description else ""
        return f"{self.id}{named} ({what})"


def _dcm2niix() -> str:
    """The dcm2niix binary: the `dcm2niix` package's, else one on PATH; a `UserError` naming the extra otherwise."""
    try:
        import dcm2niix

        if Path(dcm2niix.bin).is_file():
            return str(dcm2niix.bin)
    except ImportError:
        pass
    found = shutil.which("dcm2niix")
    if found is None:
        raise UserError(f"reading a DICOM folder needs dcm2niix: {INSTALL_HINT}")
    return found


def kind_of(sidecar: dict) -> str | None:
    """The sequence a series looks like ('flair', 't1', 't2'), from its description and its acquisition parameters
    together; None when they disagree or say nothing."""
    text = f"{sidecar.get('SeriesDescription', '')} {sidecar.get('ProtocolName', '')}"
    by_name = next((kind for kind, pattern in _DESCRIPTION_KINDS if pattern.search(text)), None)
    tr, te = sidecar.get("RepetitionTime"), sidecar.get("EchoTime")  # seconds, as dcm2niix writes them
    ti = sidecar.get("InversionTime")
    timing: tuple[str, ...] = ()  # the sequences the timing allows, the likeliest first
    if ti is not None and tr is not None:
        if ti >= 1.5 and tr >= 4.0:
            timing = ("flair",)  # CSF nulled by a long inversion
        elif ti < 1.5 and tr <= 3.0:
            timing = ("t1",)  # an inversion-prepared T1 (MPRAGE) or T1-FLAIR
    elif tr is not None and te is not None:
        if tr <= 1.0 and te <= 0.02:
            timing = ("t1",)
        elif tr >= 2.0 and te >= 0.06:
            timing = ("t2", "flair")  # without its inversion time a FLAIR's timing is a T2's
    if by_name is not None:
        return by_name if not timing or by_name in timing else None
    return timing[0] if timing else None


def _skip_reason(sidecar: dict, shape: tuple[int, ...], broken: str | None) -> str | None:
    text = f"{sidecar.get('SeriesDescription', '')} {sidecar.get('ProtocolName', '')}"
    image_type = {str(t).upper() for t in sidecar.get("ImageType", [])}
    if "LOCALIZER" in image_type or _SKIPPED_DESCRIPTIONS.search(text):
        return "localiser"
    if image_type & _DERIVED_TYPES:
        return "derived"
    if broken:
        return broken
    if len(shape) < 3 or min(shape[:3]) < MIN_SLICES:
        return "not a volume"
    if len(shape) > 3 and int(np.prod(shape[3:])) > 1:
        return "several volumes"
    return None


def convert(folder: Path, work: Path) -> list[Series]:
    """Every series of a DICOM folder as NIfTI in `work` (dcm2niix, anonymised sidecars), each described."""
    folder, work = Path(folder), Path(work)
    work.mkdir(parents=True, exist_ok=True)
    command = [_dcm2niix(), "-b", "y", "-ba", "y", "-z", "n", "-f", "s%s", "-o", str(work), str(folder)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"{folder}: dcm2niix could not convert it ({type(exc).__name__}); check the files") from None
    warnings: list[str] = []
    broken: dict[str, str] = {}
    for line in done.stdout.splitlines():
        if line.startswith("Warning:"):
            warnings.append(line)
        match = re.match(r"Convert \d+ DICOM as (.+?) \(", line)
        if match:
            name = Path(match.group(1)).name
            if any(word.lower() in w.lower() for w in warnings for word in BROKEN_WARNINGS):
                broken[name] = "missing or unevenly spaced slices"
            warnings = []
    series = []
    for nifti in sorted(work.glob("s*.nii")):
        stem = nifti.name[: -len(".nii")]
        sidecar_path = nifti.with_suffix(".json")
        sidecar = json.loads(sidecar_path.read_text()) if sidecar_path.exists() else {}
        shape = tuple(int(s) for s in nib.Nifti1Image.from_filename(nifti).shape)
        reason = _skip_reason(sidecar, shape, broken.get(stem))
        description = re.sub(r"[\s']+", " ", str(sidecar.get("SeriesDescription") or sidecar.get("ProtocolName") or ""))
        series.append(Series(stem[1:], description.strip(), kind_of(sidecar), reason, nifti, shape))
    return series


def _listing(series: Sequence[Series]) -> str:
    usable = [s.label() for s in series if not s.skipped]
    skipped = [s.label() for s in series if s.skipped]
    return "; ".join(filter(None, [", ".join(usable), f"skipped: {', '.join(skipped)}" if skipped else ""]))


def choose(series: Sequence[Series], folder: Path, wanted: str | None, asked: str | None) -> Series:
    """The series to read for sequence `wanted` (None: the only image series), or the one `asked` names (--series:
    its number or description); a one-line `UserError` listing the series when that is not one."""
    if not series:
        raise UserError(f"{folder}: no image series in its DICOM files (reports and other objects hold no image)")
    if asked is not None:
        key = asked.strip().lower()
        found = [s for s in series if s.id.lower() == key] or [s for s in series if s.description.lower() == key]
        found = found or [s for s in series if key and key in s.description.lower()]
        if len(found) != 1:
            raise UserError(f"{folder}: --series {asked} names {len(found)} of its series ({_listing(series)})")
        if found[0].skipped == "missing or unevenly spaced slices":
            raise UserError(f"{folder}: series {found[0].label()}; export the whole series from the scanner again")
        return found[0]
    usable = [s for s in series if not s.skipped]
    fitting = [s for s in usable if wanted is not None and s.kind == wanted]
    if len(fitting) == 1:
        return fitting[0]
    if not fitting and len(usable) == 1 and (wanted is None or usable[0].kind in (None, wanted)):
        return usable[0]
    if not usable:
        broken = [s for s in series if s.skipped == "missing or unevenly spaced slices"]
        if broken:
            raise UserError(f"{folder}: series {broken[0].label()}; export the whole series from the scanner again")
        raise UserError(f"{folder}: no image series to read ({_listing(series)}); choose one with --series NUMBER")
    need = f"a {wanted.upper()} series" if wanted else "one series"
    raise UserError(
        f"{folder}: {len(usable)} image series for {need} ({_listing(series)}); choose with --series NUMBER"
    )


def write_clean(nifti: Path, out: Path) -> Path:
    """The converted volume as NIfTI with a new header (orientation and voxels as dcm2niix wrote them; no description,
    no acquisition time): nothing from the DICOM files but the image and its geometry."""
    image = nib.Nifti1Image.from_filename(nifti)
    data = np.asarray(image.dataobj, dtype=np.float32)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    clean = nib.Nifti1Image(data, image.affine)
    clean.header.set_xyzt_units("mm", "sec")
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(clean, out)
    return out


def nifti_inputs(
    input: Path,
    output: Path | None,
    sequences: Sequence[str | None],
    asked: str | None,
    on_close: Callable[[Callable[..., Any]], Any],
) -> tuple[Path, Path | None]:
    """`input` and `output` as a command reads them: unchanged for NIfTI input; for a DICOM folder, a temporary NIfTI
    file (one sequence) or one subject's folder (several) converted from it, and an output that lands where asked.
    `on_close` registers what runs when the command ends (success or error): the temporary folder is removed."""
    input = Path(input)
    if not is_dicom_folder(input):
        return input, output
    temporary = tempfile.TemporaryDirectory(prefix="modalsynth-dicom-")
    on_close(temporary.cleanup)
    work = Path(temporary.name)
    series = convert(input, work / "dcm2niix")
    asks = [None] * len(sequences) if asked is None else [a or None for a in asked.split(",")]
    if len(asks) != len(sequences):
        raise UserError(f"--series {asked}: give one series per source ({', '.join(map(str, sequences))})")
    subject = work / "in" / (input.resolve().name or "subject")
    files = []
    for sequence, ask in zip(sequences, asks):
        chosen = choose(series, input, sequence, ask)
        name = sequence or "input"
        log.info(f"{input}: series {chosen.label()} read as {name} (dcm2niix)")
        files.append(write_clean(chosen.nifti, subject / f"{name}.nii.gz"))
    shutil.rmtree(work / "dcm2niix")  # the sidecars and the other series go at once
    if len(files) == 1:
        return files[0], output
    if output is None or not str(output).lower().endswith(NIFTI_SUFFIXES):
        return subject.parent, output
    produced = work / "out"

    def deliver() -> None:  # runs before the folder is removed (registered after it: callbacks run last first)
        made = sorted(produced.rglob("*.nii.gz")) if produced.is_dir() else []
        if len(made) == 1:
            Path(output).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(made[0]), output)
            log.info(f"moved the prediction to {output}")

    on_close(deliver)
    return subject.parent, produced
