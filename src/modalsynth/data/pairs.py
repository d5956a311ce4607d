"""Find paired subjects (folder layout, BIDS tree or CSV manifest), check their grids, and split them by subject."""

from __future__ import annotations

import csv
import json
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import UserError
from ..io import (
    ANALYZE_SUFFIXES,
    NIFTI_SUFFIXES,
    Volume,
    check_path,
    is_analyze,
    is_nifti,
    load_volume,
    read_header,
    spatial_shape,
)

#: names a user may give for one modality; BIDS suffixes map onto the short names used in the folder layout
MODALITY_ALIASES = {"t1w": "t1", "t2w": "t2", "t1ce": "t1ce", "t1gd": "t1ce", "flair": "flair", "ct": "ct", "pd": "pd"}
MASK_NAMES = ("mask", "brainmask", "brain_mask")
LESION_NAMES = ("lesion", "lesions", "seg")
GRID_TOLERANCE_MM = 1e-3
SPLIT_FILE = "split.json"


def canonical_modality(name: str) -> str:
    """Lower-case a modality name and map BIDS suffixes onto the short names (T1w -> t1, FLAIR -> flair)."""
    key = name.lower()
    return MODALITY_ALIASES.get(key, key)


def source_list(text: str) -> tuple[str, ...]:
    """'flair, T2w' -> ('flair', 't2'): the sequences of a source setting, in canonical names (`canonical_modality`)."""
    return tuple(canonical_modality(part.strip()) for part in str(text).split(","))


def _strip_nifti(name: str) -> str:
    for suffix in NIFTI_SUFFIXES + ANALYZE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def discover_subjects(
    root: Path | str, modalities: tuple[str | None, ...] | None = None, one_subject: bool = False
) -> dict[str, dict[str, Path]]:
    """Map subject -> {modality: file} for a folder layout, a BIDS tree or a CSV manifest (UserError if none found);
    with `one_subject` (prediction), a folder holding NIfTI files directly is one subject named after it.

    Two files for one modality of one subject (two BIDS runs, or flair.nii next to flair.nii.gz) are a `UserError`
    naming both, for the `modalities` asked for (every modality when None). An Analyze .hdr is listed like a NIfTI
    file, so that reading it gives the error that says how to convert it."""
    root = Path(root)
    if os.path.islink(root) and not root.exists():
        check_path(root)  # a broken or looping link: its own message
    if not root.exists():
        raise UserError(f"{root}: no such file or folder; check the data path")
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return _from_csv(root)
        raise UserError(f"{root}: expected a data folder or a .csv manifest (subject,source,target[,mask])")
    if is_nifti(root):
        raise UserError(
            f"{root}: is a folder named like a NIfTI file; pass the data folder above it, or the .nii.gz file itself"
        )
    duplicates: dict[tuple[str, str], list[Path]] = {}
    if any(root.glob("sub-*/anat")) or any(root.glob("sub-*/ses-*/anat")):
        subjects = _from_bids(root, duplicates)
    else:
        subjects = _from_folders(root, duplicates)
    wanted = None if modalities is None else {canonical_modality(m) for m in modalities if m}
    for (subject, modality), files in duplicates.items():
        if wanted is None or modality in wanted:
            names = ", ".join(f.name for f in files)
            raise UserError(
                f"{files[0].parent}: subject {subject} has {len(files)} {modality} files ({names}); keep one (move the "
                "others out of the folder) or list the pairs to use in a CSV manifest (subject,source,target)"
            )
    if not subjects and one_subject and any(is_nifti(f) for f in root.iterdir()):
        for f in sorted(root.iterdir()):
            if _is_image(f):
                _add(subjects, duplicates, root.resolve().name, canonical_modality(_strip_nifti(f.name)), f)
        for (_, modality), files in duplicates.items():
            raise UserError(f"{root}: {len(files)} {modality} files ({', '.join(f.name for f in files)}); keep one")
    if not subjects and any(is_nifti(f) for f in root.iterdir()):
        raise UserError(f"{root}: holds NIfTI files directly, so it looks like one subject; pass its parent folder")
    if not subjects:
        raise UserError(
            f"{root}: no subjects found; expected ROOT/<subject>/<modality>.nii.gz, a BIDS tree or a CSV manifest"
        )
    return subjects


def _is_image(path: Path) -> bool:
    """A NIfTI name, or the .hdr half of an Analyze pair (the .img half is not listed twice)."""
    return is_nifti(path) or (is_analyze(path) and ".hdr" in path.name.lower())


def _add(subjects: dict, duplicates: dict, subject: str, modality: str, path: Path) -> None:
    files = subjects.setdefault(subject, {})
    if modality in files:
        duplicates.setdefault((subject, modality), [files[modality]]).append(path)
    else:
        files[modality] = path


def _from_folders(root: Path, duplicates: dict) -> dict[str, dict[str, Path]]:
    subjects: dict[str, dict[str, Path]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and not is_nifti(p)):
        for f in sorted(folder.iterdir()):
            if _is_image(f):
                _add(subjects, duplicates, folder.name, canonical_modality(_strip_nifti(f.name)), f)
    return subjects


_BIDS_NAME = re.compile(r"^(?P<entities>sub-[^_]+(?:_[a-zA-Z]+-[^_]+)*)_(?P<suffix>[A-Za-z0-9]+)$")


def _from_bids(root: Path, duplicates: dict) -> dict[str, dict[str, Path]]:
    subjects: dict[str, dict[str, Path]] = {}
    for anat in sorted(list(root.glob("sub-*/anat")) + list(root.glob("sub-*/ses-*/anat"))):
        session = anat.parent.name if anat.parent.name.startswith("ses-") else None
        subject = anat.parent.parent.name if session else anat.parent.name
        key = f"{subject}_{session}" if session else subject
        for f in sorted(anat.iterdir()):
            if not _is_image(f):
                continue
            match = _BIDS_NAME.match(_strip_nifti(f.name))
            if match:
                _add(subjects, duplicates, key, canonical_modality(match["suffix"]), f)
    return subjects


def _from_csv(manifest: Path) -> dict[str, dict[str, Path]]:
    """A CSV with a `subject` column and one column per file: `source`, `target` or a sequence's name (`flair`, `t2`,
    `T1w`, ...), and optionally `mask` and `lesion`; paths relative to the CSV's folder, an empty cell for none."""
    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    header = [c.strip() for c in (rows[0] if rows else {}) if c]
    columns = [c for c in header if c != "subject"]
    images = [c for c in columns if canonical_modality(c) not in MASK_NAMES + LESION_NAMES]
    if "subject" not in header or len(images) < 2:  # a source and a target at least
        raise UserError(
            f"{manifest}: a manifest needs the header 'subject,source,target[,mask]' (or one column per "
            "sequence, e.g. 'subject,flair,t2,t1[,mask,lesion]') and at least one row"
        )
    subjects: dict[str, dict[str, Path]] = {}
    for row in rows:
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        entry = {}
        for column in columns:
            if row.get(column):
                path = Path(row[column])
                entry[canonical_modality(column)] = path if path.is_absolute() else manifest.parent / path
        subjects[row["subject"]] = entry
    return subjects


@dataclass
class Pair:
    """One usable subject: source(s) and target files on one grid, plus optional brain and lesion masks."""

    subject: str
    sources: tuple[Path | None, ...]  # in the config's order; the first sets the geometry; None: an absent later one
    target: Path | None
    mask: Path | None = None
    lesion: Path | None = None
    resample_target: bool = False

    @property
    def first_source(self) -> Path:
        """The first source, which every pair has: it sets the geometry."""
        first = self.sources[0]
        assert first is not None, f"{self.subject}: a pair without its first source"
        return first


@dataclass
class PairReport:
    """Pairs that can be used and, per subject, the problems that make the others unusable."""

    pairs: list[Pair] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)


def modality_file(files: dict[str, Path], name: str, csv_role: str | None) -> Path | None:
    """The subject's file of sequence `name`, else its manifest's `csv_role` column (`source`, `target`)."""
    return files.get(canonical_modality(name)) or (files.get(csv_role) if csv_role else None)


def first_present(files: dict[str, Path], names: tuple[str, ...]) -> Path | None:
    """The file of the first of `names` a subject has (e.g. its lesion mask under any of LESION_NAMES), else None."""
    return next((files[n] for n in names if n in files), None)


class Grid(NamedTuple):
    """A volume's voxel grid and where it comes from (a file's header, or a loaded `Volume`)."""

    path: Path | None
    shape: tuple[int, ...]
    affine: np.ndarray

    @classmethod
    def of(cls, path: Path) -> Grid:
        """A file's grid, read from its header without its voxels."""
        return cls(Path(path), *grid_of(path))


def grid_of(path: Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of a NIfTI without reading its voxels."""
    img = read_header(path)
    return spatial_shape(img, path), np.asarray(img.affine)


def compare_grids(
    shape_a: tuple[int, ...], affine_a: np.ndarray, shape_b: tuple[int, ...], affine_b: np.ndarray
) -> tuple[str, float] | None:
    """How two voxel grids differ: ('shape', 0.0), ('affine', largest difference in mm beyond 1e-3 mm), or None."""
    if tuple(shape_a) != tuple(shape_b):
        return "shape", 0.0
    diff = float(np.abs(np.asarray(affine_a) - np.asarray(affine_b)).max())
    return ("affine", diff) if diff > GRID_TOLERANCE_MM else None


def describe_mismatch(a: Grid, b: Grid) -> str | None:
    """The one wording of how two grids differ (shape, or affine beyond 1e-3 mm), or None when they agree."""
    difference = compare_grids(a.shape, a.affine, b.shape, b.affine)
    if difference is None:
        return None
    if difference[0] == "shape":
        return f"grid {tuple(a.shape)} in {a.path} but {tuple(b.shape)} in {b.path}"
    return f"affines of {a.path} and {b.path} differ by up to {difference[1]:.3g} mm"


def grid_mismatch(a: Path, b: Path) -> str | None:
    """How two files' grids differ (`describe_mismatch`), read from their headers."""
    return describe_mismatch(Grid.of(a), Grid.of(b))


#: what to do when several sources of one subject are on different grids
NOT_REGISTERED = "register the sequences to one grid first (add --register), or use one of them (--source)"


def require_same_grid(first: Volume, other: Volume) -> None:
    """Several sources must share one voxel grid: a one-line `UserError` otherwise."""
    problem = describe_mismatch(
        Grid(other.path, other.shape, other.affine), Grid(first.path, first.shape, first.affine)
    )
    if problem is not None:
        raise UserError(f"{problem}; {NOT_REGISTERED}")


def find_pairs(
    root: Path | str,
    source: str,
    target: str | None,
    *,
    resample_target: bool = False,
    check_grids: bool = True,
    check_data: bool = False,
    register: bool = False,
    optional_sources: bool = False,
) -> PairReport:
    """Collect source/target pairs under `root`, listing every subject that is missing a file or has mismatched grids.

    `source` names one sequence or several, comma-separated (every subject needs each; they share the first one's
    grid). A modality that no subject has at all (a misspelt --source or --target) is a `UserError`. `check_data`
    also reads every voxel (NaN, Inf, a blank image, a truncated file), so nothing unusable reaches training.
    `register`: sources and target on other grids are usable (they are registered onto the first source).
    `optional_sources`: a subject without a source other than the first is usable with that source absent (None)."""
    report = PairReport()
    sources = source_list(source)
    subjects = discover_subjects(root, (*sources, target))
    # a manifest's generic `source` column stands for the first source only; more sources need their own columns
    roles = [(name, "source" if i == 0 else None) for i, name in enumerate(sources)] + [(target, "target")]
    for name, role in roles:
        if name and not any(modality_file(files, name, role) for files in subjects.values()):
            found = sorted({m for files in subjects.values() for m in files})
            option = "--target" if role == "target" else "--source"
            raise UserError(
                f"{option} {name}: no subject in {root} has a {name} file (found: {', '.join(found)}); "
                f"choose {option} from those names"
            )
    for subject, files in subjects.items():
        srcs = [modality_file(files, name, role) for name, role in roles[:-1] if name]
        tgt = modality_file(files, target, "target") if target else None
        required = [(name, f) for i, (name, f) in enumerate(zip(sources, srcs)) if i == 0 or not optional_sources]
        missing = [name for name, f in (*required, (target, tgt)) if name and f is None]
        if missing:
            have = ", ".join(sorted(files)) or "nothing"
            where = next(iter(files.values())).parent if files else Path(root) / subject
            report.problems[subject] = (
                f"{where}: missing {' and '.join(missing)} (found: {have}); add the file, move "
                "the subject out of the data folder, or list the usable pairs in a CSV manifest"
            )
            continue
        pair = Pair(subject, tuple(srcs), tgt, first_present(files, MASK_NAMES), first_present(files, LESION_NAMES))
        src = pair.first_source
        if check_grids:
            try:
                problem = grid_mismatch(src, tgt) if tgt is not None else None
                others = (grid_mismatch(src, other) for other in pair.sources[1:] if other is not None)
                unregistered = next(filter(None, others), None)
                if problem is None:
                    grid_of(src)
            except UserError as exc:
                report.problems[subject] = str(exc)
                continue
            if unregistered and not register:
                report.problems[subject] = f"{unregistered}; {NOT_REGISTERED}"
                continue
            if problem and not (resample_target or register):
                report.problems[subject] = f"{problem}; register them, or pass --resample-target"
                continue
            pair.resample_target = problem is not None and not register
        if check_data:
            try:
                for path in (*pair.sources, tgt):
                    if path is not None:
                        load_volume(path)
            except UserError as exc:
                report.problems[subject] = str(exc)
                continue
        report.pairs.append(pair)
    return report


def require_pairs(
    root: Path | str, source: str, target: str | None, *, check_data: bool = True, **kwargs
) -> list[Pair]:
    """Like `find_pairs`, but every subject must be usable: the first problem (and how many subjects have one) is a
    `UserError`, so a run never trains on a silently shortened data set. `check_data` reads every voxel first."""
    report = find_pairs(root, source, target, check_data=check_data, **kwargs)
    if report.problems:
        subject, problem = next(iter(report.problems.items()))
        more = len(report.problems) - 1
        others = f" ({more} more subject(s) have problems)" if more else ""
        raise UserError(f"subject {subject}: {problem}{others}; `modalsynth inspect {root}` lists every problem")
    if not report.pairs:
        raise UserError(f"{root}: no usable {source}->{target} pair; run `modalsynth inspect {root}`")
    return report.pairs


def check_volumes(paths: list[Path], *, allow_constant: bool = False) -> None:
    """Read every file (`io.load_volume`) before any output is written: the first bad one is a `UserError`."""
    for path in paths:
        load_volume(path, allow_constant=allow_constant)


def split_subjects(
    subjects: list[str], seed: int = 0, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
) -> dict[str, list[str]]:
    """Deterministic train/val/test split by subject name: same names and seed, same split, whatever the order given."""
    names = sorted(set(subjects))
    random.Random(seed).shuffle(names)
    n = len(names)
    if n == 1:
        return {"train": names, "val": names, "test": names}
    n_test = max(1, round(n * fractions[2])) if fractions[2] > 0 else 0
    n_val = max(1, round(n * fractions[1])) if fractions[1] > 0 and n - n_test > 1 else 0
    n_train = n - n_val - n_test
    if n_train < 1:  # tiny sets: keep at least one training subject
        n_test = max(0, n_test - 1)
        n_train = n - n_val - n_test
    return {
        "train": sorted(names[:n_train]),
        "val": sorted(names[n_train : n_train + n_val]) or sorted(names[:n_train][:1]),
        "test": sorted(names[n_train + n_val :]) or sorted(names[:n_train][:1]),
    }


HOLDOUTS = ("val+test", "val", "none")


def holdout_split(subjects: list[str], seed: int = 0, holdout: str = "val+test") -> dict[str, list[str]]:
    """The split for a hold-out mode: 'val+test' (70/15/15, `split_subjects`), 'val' (every subject but one validation
    subject trains; no test) or 'none' (every subject trains: a final model; no validation, no test)."""
    if holdout == "val+test":
        return split_subjects(subjects, seed)
    names = sorted(set(subjects))
    if holdout == "none" or len(names) == 1:
        return {"train": names, "val": [], "test": []}
    if holdout == "val":
        val = random.Random(seed).choice(names)
        return {"train": [n for n in names if n != val], "val": [val], "test": []}
    raise UserError(f"holdout {holdout!r}: choose one of {', '.join(HOLDOUTS)}")


def load_or_make_split(
    run_dir: Path, subjects: list[str], seed: int = 0, holdout: str = "val+test"
) -> dict[str, list[str]]:
    """Reuse RUN_DIR/split.json when it exists (so later commands see the same split), else make and write one."""
    path = Path(run_dir) / SPLIT_FILE
    if path.exists():
        try:
            split = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: not valid JSON ({exc}); delete it to make a new split") from exc
        if not (
            isinstance(split, dict)
            and set(split) <= {"train", "val", "test"}
            and "train" in split
            and all(isinstance(names, list) and all(isinstance(n, str) for n in names) for names in split.values())
        ):
            raise UserError(
                f"{path}: not a split (a mapping of train, val and test to lists of subject names); delete it to "
                "make a new split"
            )
        unknown = set(sum(split.values(), [])) - set(subjects)
        if unknown:
            raise UserError(
                f"{path}: names subjects not in the data ({', '.join(sorted(unknown)[:3])}); delete it to re-split"
            )
        return split
    split = holdout_split(subjects, seed, holdout)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(split, indent=1))
    return split
