"""`modalsynth inspect`: describe a NIfTI file or a data folder and list every problem before a user trains."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import yaml

from .checkpoints import Checkpoint
from .config import Methods, config_from_checkpoint
from .data.pairs import discover_subjects, find_pairs
from .errors import UserError
from .io import check_path, is_analyze, is_nifti, load_volume, read_header

log = logging.getLogger(__name__)


def describe_file(path: Path) -> list[tuple[str, str]]:
    """Grid, spacing, orientation and an intensity summary of one NIfTI file."""
    vol = load_volume(path, allow_constant=True)
    data = vol.data
    nonzero = data[data != 0]
    p = np.percentile(data, [0.5, 50, 99.5])
    rows = [
        ("file", str(path)),
        ("grid", " x ".join(str(s) for s in vol.shape)),
        ("spacing (mm)", " x ".join(f"{s:.3g}" for s in vol.spacing)),
        ("orientation", vol.orientation),
        ("field of view (mm)", " x ".join(f"{n * s:.0f}" for n, s in zip(vol.shape, vol.spacing))),
        ("stored dtype", str(vol.header.get_data_dtype())),
        ("min / max", f"{data.min():.4g} / {data.max():.4g}"),
        ("p0.5 / median / p99.5", f"{p[0]:.4g} / {p[1]:.4g} / {p[2]:.4g}"),
        ("non-zero voxels", f"{nonzero.size / data.size:.1%}"),
    ]
    if data.max() == data.min():
        rows.append(
            ("problem", f"every voxel has the value {float(data.min()):g}, so the image is blank; export it again")
        )
    return rows


def _print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    log.info("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    log.info("  ".join("-" * w for w in widths))
    for row in rows:
        log.info("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))


def inspect_folder(root: Path, source: str, target: str) -> int:
    """Print one row per subject (files, grid, problem); return 2 if any pair is unusable, else 0."""
    subjects = discover_subjects(root, (source, target))
    report = find_pairs(root, source, target)
    usable = {p.subject: p for p in report.pairs}
    rows = []
    for subject, files in subjects.items():
        grid = problem = ""
        if subject in usable:
            try:
                vol = load_volume(usable[subject].first_source)
                grid = (
                    "x".join(map(str, vol.shape))
                    + " @ "
                    + "x".join(f"{s:.2g}" for s in vol.spacing)
                    + " "
                    + vol.orientation
                )
                target_file = usable[subject].target
                if target_file is not None:
                    load_volume(target_file)
            except UserError as exc:
                problem = str(exc)
                del usable[subject]
        else:
            problem = report.problems.get(subject, "")
        rows.append([subject, ",".join(sorted(files)), grid, problem or "ok"])
    log.info(f"{root}: {len(subjects)} subject(s), {len(usable)} usable {source}->{target} pair(s)")
    _print_table(rows, ["subject", "files", "grid (source)", "status"])
    bad = [row for row in rows if row[3] != "ok"]
    if bad:
        log.info(f"{len(bad)} subject(s) cannot be used; fix or remove them before training")
        return _problem(
            f"{root}: {len(bad)} of {len(subjects)} subject(s) cannot be used, the first: subject {bad[0][0]}: "
            f"{bad[0][3]}; fix or remove them before training (the table above lists every problem)"
        )
    return 0


def _problem(message: str) -> int:
    """The one line a problem found after the table gets: on stderr, like every other error; exit status 2."""
    log.error(f"{message}")
    return 2


def inspect_path(path: Path, source: str = "flair", target: str = "t1") -> int:
    """Describe a file or a folder on stdout; the return value is the exit status: 0 fine, or 2 with one line on stderr
    (after the table, so it still shows what was found) for a problem a user must fix. A path that cannot be described
    at all is a `UserError`."""
    path = Path(path)
    if path.is_dir() or path.suffix.lower() == ".csv":
        return inspect_folder(path, source, target)
    if os.path.islink(path) and not path.exists():
        check_path(path)  # a broken or looping link: its own message
    if not path.exists():
        raise UserError(f"{path}: no such file or folder; check the path")
    if is_analyze(path):
        read_header(path)  # says how to convert it

    if not is_nifti(path) and path.is_file():
        raise UserError(f"{path}: not a NIfTI file (.nii or .nii.gz) or a data folder; pass one of those")
    rows = describe_file(path)
    _print_table([list(r) for r in rows], ["property", "value"])
    problems = [value for key, value in rows if key == "problem"]
    if problems:
        return _problem(f"{path}: {problems[0]}")
    return 0


def checkpoint_summary(checkpoint: Path, methods: Methods) -> str:
    """What a checkpoint holds and, as YAML, the fully resolved settings its run used (`modalsynth inspect RUN/best.pt`;
    `methods`: the method registry's lookup, which settings resolution needs)."""
    ckpt = Checkpoint.load(checkpoint)
    config = config_from_checkpoint(ckpt.config, ckpt.format_version, methods, str(checkpoint))
    head = (
        f"# {checkpoint}: step {ckpt.step}, {ckpt.elapsed_s / 60:.1f} minutes of training, checkpoint format "
        f"{ckpt.format_version}, written by modalsynth {ckpt.package_version}\n"
    )
    return head + yaml.safe_dump(config.to_dict(), sort_keys=False)
