"""`modalsynth bids`: a BIDS App that fills a missing sequence (T1w) in a BIDS dataset and writes BIDS derivatives.

`participant` level: for every subject/session that has the model's source(s) and lacks the target (every one with
`all_subjects`), OUT/sub-XX[/ses-YY]/anat/<source entities>_desc-synthetic_T1w.nii.gz, a brain mask
(`_desc-brain_mask.nii.gz`) when skull stripping ran, a JSON sidecar per file (`Sources` as BIDS URIs, `SkullStripped`,
the model and settings), OUT/dataset_description.json, and one QC page per subject (OUT/sub-XX.html). `group` level:
the index page. A rerun with the same model and settings skips every output already written (`Cohort`), and under
torchrun each rank takes whole subjects.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, metadata
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from . import __version__
from .cohort import Cohort
from .data.pairs import canonical_modality, compare_grids
from .data.register import Aligner
from .data.skullstrip import SkullStrip, looks_skull_stripped, masked
from .errors import UserError
from .inference import Predictor
from .io import atomic_write, is_nifti, load_volume, save_array, save_volume, sidecar_path
from .qc_report import ReportItem, ReportModel, model_summary, write_index, write_subject_report
from .runtime import rank_device

log = logging.getLogger(__name__)

BIDS_VERSION = "1.10.0"
#: GeneratedBy's CodeURL when the installed package names no source URL (`[project.urls]` Source or Repository)
CODE_URL = "https://pypi.org/project/modalsynth/"
#: modalsynth's sequence names -> BIDS anatomical suffixes
SUFFIXES = {"t1": "T1w", "t2": "T2w", "flair": "FLAIR", "pd": "PDw"}
#: the source's entities an output name keeps, in the order BIDS writes them
CARRIED = ("acq", "rec", "run")
LEVELS = ("participant", "group")
SYNTHETIC_DESC = "synthetic"
BIDSIGNORE = "*.html\n"
_ENTITY = re.compile(r"^([a-zA-Z]+)-([a-zA-Z0-9+]+)$")


@dataclass(frozen=True)
class BidsOptions:
    """What `modalsynth bids` was asked for, besides the folders and the level."""

    participant_labels: tuple[str, ...] = ()
    session_labels: tuple[str, ...] = ()
    target: str = "t1"
    source: str | None = None
    checkpoint: str | None = None
    skull_strip: str = "auto"
    device: str = "auto"
    work_dir: Path | None = None
    skip_bids_validation: bool = False
    all_subjects: bool = False
    report: bool = True
    register: bool = False  # sources of a session on their own grids: registered onto the first (`--register`)


@dataclass(frozen=True)
class AnatFile:
    """One image in a BIDS `anat` folder: its entities (sub, ses, acq, ...) in file order and its suffix."""

    path: Path
    entities: dict[str, str]
    suffix: str

    def matches(self, other: AnatFile) -> bool:
        """Whether both carry the same entities other than the subject and session (same acquisition, run, ...)."""
        keep = ("sub", "ses")
        return {k: v for k, v in self.entities.items() if k not in keep} == {
            k: v for k, v in other.entities.items() if k not in keep
        }


@dataclass
class Job:
    """One synthetic image to make: its sources (sequence -> file, the first setting the grid) and output names."""

    subject: str
    session: str | None
    sources: dict[str, AnatFile]
    stem: str  # sub-XX[_ses-YY][_acq-..][_rec-..][_run-..]
    reference: AnatFile | None = None  # the session's real target, if it has one (all_subjects)
    anat: Path = field(default_factory=Path)  # OUT/sub-XX[/ses-YY]/anat

    def output(self, suffix: str) -> Path:
        return self.anat / f"{self.stem}_desc-{SYNTHETIC_DESC}_{suffix}.nii.gz"

    @property
    def mask(self) -> Path:
        return self.anat / f"{self.stem}_desc-brain_mask.nii.gz"


def parse_anat_name(path: Path) -> AnatFile | None:
    """`sub-01_ses-1_acq-3d_FLAIR.nii.gz` -> its entities and suffix; None for a name that is not BIDS."""
    if not is_nifti(path):
        return None
    stem = re.sub(r"\.nii(\.gz)?$", "", path.name, flags=re.IGNORECASE)
    *pairs, suffix = stem.split("_")
    entities = {}
    for pair in pairs:
        match = _ENTITY.match(pair)
        if not match or match[1] in entities:
            return None
        entities[match[1]] = match[2]
    if not pairs or next(iter(entities)) != "sub" or not suffix.isalnum():
        return None
    return AnatFile(path, entities, suffix)


def bare_label(label: str, prefix: str) -> str:
    """'sub-01' or '01' -> '01'."""
    label = label.strip()
    return label[len(prefix) + 1 :] if label.startswith(f"{prefix}-") else label


def check_dataset(bids_dir: Path) -> Path:
    """The dataset's root, or a one-line `UserError` when it is not a BIDS dataset."""
    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        raise UserError(f"{bids_dir}: no such folder; give the BIDS dataset's root folder")
    if not (bids_dir / "dataset_description.json").is_file():
        raise UserError(f"{bids_dir}: not a BIDS dataset (no dataset_description.json); give the dataset's root folder")
    if not any(p.is_dir() for p in bids_dir.glob("sub-*")):
        raise UserError(f"{bids_dir}: not a BIDS dataset (no sub-<label> folders); give the dataset's root folder")
    return bids_dir


def check_output_dir(bids_dir: Path, out_dir: Path) -> None:
    """Refuse an OUT_DIR that is the dataset itself or inside it anywhere but BIDS_DIR/derivatives/NAME."""
    raw, out = Path(bids_dir).resolve(), Path(out_dir).resolve()
    if out == raw or raw in out.parents:
        parts = out.relative_to(raw).parts
        if len(parts) != 2 or parts[0] != "derivatives":
            raise UserError(
                f"{out_dir}: is inside the BIDS dataset {bids_dir}; write to {bids_dir}/derivatives/modalsynth or "
                "outside the dataset"
            )


def sessions(bids_dir: Path, participants: tuple[str, ...] = (), session_labels: tuple[str, ...] = ()):
    """(subject label, session label or None, anat folder) for the participants and sessions asked (all: empty);
    a label the dataset does not have is a `UserError`."""
    subjects = sorted(p.name[4:] for p in bids_dir.glob("sub-*") if p.is_dir())
    wanted = [bare_label(label, "sub") for label in participants] or subjects
    unknown = [label for label in wanted if label not in subjects]
    if unknown:
        few = ", ".join(f"sub-{s}" for s in subjects[:5]) + (", ..." if len(subjects) > 5 else "")
        raise UserError(
            f"{bids_dir}: no participant sub-{unknown[0]} (the dataset has {few}); check --participant-label"
        )
    asked = {bare_label(label, "ses") for label in session_labels}
    found: list[tuple[str, str | None, Path]] = []
    seen_sessions: set[str] = set()
    for subject in wanted:
        root = bids_dir / f"sub-{subject}"
        for ses in sorted(p for p in root.glob("ses-*") if p.is_dir()):
            seen_sessions.add(ses.name[4:])
            if (not asked or ses.name[4:] in asked) and (ses / "anat").is_dir():
                found.append((subject, ses.name[4:], ses / "anat"))
        if not asked and (root / "anat").is_dir():
            found.append((subject, None, root / "anat"))
    missing = sorted(asked - seen_sessions)
    if missing:
        raise UserError(f"{bids_dir}: no session ses-{missing[0]} for the participants asked; check --session-label")
    return found


def plan_jobs(bids_dir: Path, out_dir: Path, read: tuple[str, ...], target: str, options: BidsOptions) -> list[Job]:
    """Every synthetic image to make: one per file of the first source a session has (its acquisition/run), with
    the other sources of the same acquisition and run, in sessions that lack the target (all with `all_subjects`)."""
    target_suffix = SUFFIXES[target]
    jobs: list[Job] = []
    for subject, session, anat in sessions(bids_dir, options.participant_labels, options.session_labels):
        files = [f for f in map(parse_anat_name, sorted(anat.iterdir())) if f is not None]
        references = [f for f in files if f.suffix == target_suffix]
        if references and not options.all_subjects:
            continue
        by_suffix = {name: [f for f in files if f.suffix == SUFFIXES[name]] for name in read}
        present = [name for name in read if by_suffix[name]]
        if not present:
            continue
        first, others = present[0], present[1:]
        for primary in by_suffix[first]:
            chosen = {first: primary}
            for name in others:
                same = [f for f in by_suffix[name] if f.matches(primary)]
                pick = same or (by_suffix[name] if len(by_suffix[name]) == 1 else [])
                if pick:
                    chosen[name] = pick[0]
            entities = {"sub": subject, **({"ses": session} if session else {})}
            entities.update({k: primary.entities[k] for k in CARRIED if k in primary.entities})
            stem = "_".join(f"{k}-{v}" for k, v in entities.items())
            reference = next((r for r in references if r.matches(primary)), references[0] if references else None)
            folder = out_dir / f"sub-{subject}" / (f"ses-{session}" if session else "") / "anat"
            jobs.append(Job(subject, session, chosen, stem, reference, Path(os.path.normpath(folder))))
    return jobs


def bids_uri(bids_dir: Path, path: Path) -> str:
    """A raw file as the BIDS URI `bids:raw:sub-01/anat/...` (`DatasetLinks` says where `raw` is)."""
    return f"bids:raw:{Path(path).resolve().relative_to(Path(bids_dir).resolve()).as_posix()}"


def dataset_description(bids_dir: Path, out_dir: Path) -> dict:
    """The derivative dataset's description: BIDS version, type, what generated it and where `raw` lies."""
    raw, out = Path(bids_dir).resolve(), Path(out_dir).resolve()
    link = os.path.relpath(raw, out) if raw in out.parents else raw.as_uri()
    return {
        "Name": "modalsynth: synthetic images of missing sequences",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "modalsynth",
                "Version": __version__,
                "CodeURL": code_url(),
                "Description": "3D conditional GAN synthesis of a missing MRI sequence",
            }
        ],
        "DatasetLinks": {"raw": link},
    }


def code_url() -> str:
    """The project's source URL from the installed package's metadata, else CODE_URL."""
    try:
        urls = metadata("modalsynth").get_all("Project-URL") or []
    except PackageNotFoundError:
        urls = []
    named = dict(tuple(part.strip() for part in url.split(",", 1)) for url in urls if "," in url)
    return named.get("Source") or named.get("Repository") or CODE_URL


def validator_path() -> str | None:
    """The official validator's command (`pip install bids-validator-deno`): on PATH or beside this Python."""
    beside = Path(sys.executable).parent / "bids-validator-deno"
    return shutil.which("bids-validator-deno") or (str(beside) if beside.is_file() else None)


def validate_dataset(folder: Path) -> list[str] | None:
    """The error lines the official validator (`bids-validator-deno`) reports for `folder`; None when it is not
    installed."""
    tool = validator_path()
    if tool is None:
        return None
    done = subprocess.run([tool, "--format", "json", str(folder)], capture_output=True, text=True, timeout=600)
    try:
        issues = json.loads(done.stdout)["issues"]["issues"]
    except (ValueError, KeyError):
        return [f"the validator gave no report (exit {done.returncode}): {done.stderr.strip()[:200]}"]
    return [f"{i.get('code')} {i.get('location', '')}".strip() for i in issues if i.get("severity") == "error"]


def _write_if_changed(path: Path, text: str) -> None:
    """Write a small text file unless it already holds exactly `text` (a rerun writes nothing new)."""
    if path.is_file() and path.read_text() == text:
        return
    atomic_write(path, path.suffix or ".txt", lambda tmp: Path(tmp).write_text(text))


def _write_json(path: Path, record: dict) -> None:
    _write_if_changed(path, json.dumps(record, indent=2) + "\n")


def read_sidecar(path: Path) -> dict[str, Any]:
    """A derivative's JSON sidecar as modalsynth wrote it (`Sources`: a list of BIDS URIs); any other shape is a
    one-line `UserError` naming the file."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{path}: not a readable JSON sidecar ({exc}); delete it and run modalsynth bids again"
        ) from exc
    if not isinstance(record, dict) or not (
        isinstance(record.get("Sources"), list) and all(isinstance(u, str) for u in record["Sources"])
    ):
        raise UserError(
            f"{path}: not a modalsynth sidecar (no list of Sources); delete it and run modalsynth bids again"
        )
    return record


def make_predictor(options: BidsOptions) -> Predictor:
    """The model `options` name (default the built-in one), with its skull stripping and sources; one GPU per rank
    under torchrun."""
    device = rank_device(options.device)
    predictor = Predictor.load(options.checkpoint, device)
    align = Aligner() if options.register else None
    predictor = dataclasses.replace(predictor, skull=SkullStrip(options.skull_strip), align=align)
    return predictor.with_sources(options.source)


def run_bids(bids_dir: Path, out_dir: Path, level: str, options: BidsOptions = BidsOptions()) -> list[Path]:
    """`modalsynth bids BIDS_DIR OUT_DIR participant|group`: the files written (none on a finished rerun)."""
    bids_dir, out_dir = Path(bids_dir), Path(out_dir)
    if level not in LEVELS:
        raise UserError(f"analysis level {level!r}: choose participant or group")
    check_dataset(bids_dir)
    check_output_dir(bids_dir, out_dir)
    target = canonical_modality(options.target)
    if target not in SUFFIXES:
        raise UserError(f"--target {options.target}: choose one of {', '.join(SUFFIXES)}")
    if level == "group":
        return write_group(bids_dir, out_dir)
    if options.work_dir is not None:
        Path(options.work_dir).mkdir(parents=True, exist_ok=True)
    sessions(bids_dir, options.participant_labels, options.session_labels)  # labels checked before the model loads
    if not options.skip_bids_validation:
        errors = validate_dataset(bids_dir)
        if errors is None:
            log.info("note: bids-validator-deno is not installed, so BIDS_DIR is not validated (pip install it)")
        elif errors:
            raise UserError(
                f"{bids_dir}: the BIDS validator reports {len(errors)} error(s) ({errors[0]}); fix them or give "
                "--skip-bids-validation"
            )
    predictor = make_predictor(options)
    if canonical_modality(predictor.config.target) != target:
        raise UserError(
            f"--target {options.target}: {predictor.origin} predicts {predictor.config.target}; choose --target "
            f"{predictor.config.target} or another --checkpoint"
        )
    read = tuple(predictor.sources or predictor.config.sources)
    unknown = [name for name in read if name not in SUFFIXES]
    if unknown:
        raise UserError(f"{predictor.origin}: reads {unknown[0]}, which has no BIDS anatomical suffix here")
    jobs = plan_jobs(bids_dir, out_dir, read, target, options)
    if not jobs:
        kind = "every" if options.all_subjects else f"without a {SUFFIXES[target]}"
        raise UserError(
            f"{bids_dir}: no session {kind} has a {' or '.join(SUFFIXES[n] for n in read)} image; nothing to "
            "synthesise (--all-subjects also fills sessions that have one)"
        )
    settings = {
        "inference": predictor.inference.to_dict(),
        "skull_strip": options.skull_strip,
        "register": options.register,
        "sources": list(read),
        "target": target,
    }
    models = predictor.model_records()
    model = models[predictor.origin]
    cohort = Cohort(out_dir, {**predictor.model_files(), "settings": settings, "bids": True})
    written: list[Path] = []
    with cohort:
        subjects = cohort.share(sorted({job.subject for job in jobs}))
        mine = [job for job in jobs if job.subject in subjects]
        out_dir.mkdir(parents=True, exist_ok=True)
        if cohort.rank == 0:
            for path, text in (
                (out_dir / "dataset_description.json", json.dumps(dataset_description(bids_dir, out_dir), indent=2)),
                (out_dir / ".bidsignore", BIDSIGNORE),
                (out_dir / "README.md", _readme(model)),
            ):
                before = path.stat().st_mtime_ns if path.exists() else None
                _write_if_changed(path, text if text.endswith("\n") else text + "\n")
                if before != path.stat().st_mtime_ns:
                    written.append(path)
        todo = [job for job in mine if not _finished(cohort, job, target)]
        if len(todo) < len(mine):
            log.info(f"skipped {len(mine) - len(todo)} image(s) already written by this model and settings")
        if not cohort.same:
            cohort.begin()
        for job in todo:
            written += predict_job(predictor, job, bids_dir, target, models, settings)
            log.info(f"wrote {job.output(SUFFIXES[target])}")
        if options.report:  # each subject's page shows every synthetic image of it in OUT_DIR, this run's or not
            changed = {job.subject for job in todo}
            wanted = [s for s in sorted(subjects) if s in changed or not (out_dir / f"sub-{s}.html").exists()]
            found = read_derivatives(out_dir) if wanted else {}
            for subject in wanted:
                items = found.get(f"sub-{subject}", [])
                page = out_dir / f"sub-{subject}.html"
                written.append(write_subject_report(f"sub-{subject}", items, page, items[0].model if items else None))
                log.info(f"wrote {page}")
    return written


def _finished(cohort: Cohort, job: Job, target: str) -> bool:
    outputs = [job.output(SUFFIXES[target])]
    return all(cohort.finished([f.path for f in job.sources.values()], out) for out in outputs) and all(
        sidecar_path(out).exists() for out in outputs
    )


def predict_job(
    predictor: Predictor, job: Job, bids_dir: Path, target: str, models: dict[Path | None, dict], settings: dict
) -> list[Path]:
    """Predict one job's synthetic image (skull-stripped first as the predictor says, keeping the mask) and write it
    with its sidecar, which names the model that predicted it (from `models`, `Predictor.model_records`: a built-in's
    twin for a brain stripped here), and the mask with its own when stripping ran."""
    model = models[predictor.origin]
    volumes = {name: load_volume(f.path) for name, f in job.sources.items()}
    first = next(iter(volumes.values()))
    if predictor.align is not None and len(volumes) > 1:  # --register: the others onto the first's grid, first
        names = list(volumes)
        moved = predictor.align.onto(first, [volumes[n] for n in names[1:]])
        volumes = {names[0]: first, **dict(zip(names[1:], moved))}
        predictor = dataclasses.replace(predictor, align=None)
    for name, other in list(volumes.items())[1:]:
        if compare_grids(first.shape, first.affine, other.shape, other.affine) is not None:
            # a raw dataset's sequences often lie on their own grids; the model predicts from any subset it takes
            log.warning(f"{other.path}: not on the grid of {first.path}, so not used (add --register to register it)")
            del volumes[name]
            del job.sources[name]
    skull = predictor.skull or SkullStrip("never")
    region = skull.region_of(first)
    if region is None:
        result = predictor.predict_sources(volumes)
    else:
        stripped_here = predictor.for_stripped_brains()
        model = models[stripped_here.origin]
        plain = dataclasses.replace(stripped_here, skull=SkullStrip("never"))
        result = plain.predict_sources({name: masked(v, region) for name, v in volumes.items()})
    suffix = SUFFIXES[target]
    sources = [bids_uri(bids_dir, f.path) for f in job.sources.values()]
    first_uri = sources[0]
    written = []
    if region is not None:
        written.append(save_array(region.astype(np.uint8), first.affine, job.mask, header=first.header, dtype=np.uint8))
        mask_sidecar = {
            "Description": "Brain mask the synthesis kept (deepbet's mask grown by 1 mm), on the source's grid",
            "Type": "Brain",
            "Sources": [first_uri],
            "SpatialReference": first_uri,
        }
        written.append(sidecar_path(job.mask))
        _write_json(written[-1], mask_sidecar)
    output = job.output(suffix)
    sidecar = {
        "Description": f"Synthetic {suffix} image predicted by modalsynth from "
        f"{', '.join(SUFFIXES[n] for n in job.sources)}; not an acquired image",
        "Sources": sources,
        "SkullStripped": bool(region is not None or looks_skull_stripped(first)),
        "SpatialReference": first_uri,
        "Model": model,
        "Settings": settings,
    }
    # the sidecar first: a finished image (what a rerun skips) always has one
    _write_json(sidecar_path(output), sidecar)
    written.append(sidecar_path(output))
    written.append(save_volume(result, output))
    return written


def _title(stem: str, subject: str) -> str:
    """A page section's title: the entities after the subject's (ses-1, acq-ax_run-1), or the subject alone."""
    return stem.removeprefix(subject).strip("_") or subject


def report_model(model: dict, settings: dict) -> ReportModel:
    """The model summary a QC page shows (a built-in model's brings its card)."""
    return model_summary(model["Name"], model["Sha256"], settings)


def write_group(bids_dir: Path, out_dir: Path) -> list[Path]:
    """`group` level: the index page over the subjects' pages the participant jobs wrote."""
    pages = sorted(out_dir.glob("sub-*.html"))
    if not pages:
        raise UserError(f"{out_dir}: no subject pages (sub-*.html); run the participant level first")
    return [write_index(out_dir / "index.html", pages, title=f"modalsynth QC: {Path(bids_dir).resolve().name}")]


def read_derivatives(out_dir: Path) -> dict[str, list[ReportItem]]:
    """The synthetic images of a derivatives folder this app wrote, per subject, for `modalsynth report`."""
    description = out_dir / "dataset_description.json"
    try:
        link = json.loads(description.read_text())["DatasetLinks"]["raw"]
    except (OSError, ValueError, KeyError):
        raise UserError(
            f"{description}: no DatasetLinks raw entry; is {out_dir} written by `modalsynth bids`?"
        ) from None
    raw = Path(unquote(urlparse(link).path)) if link.startswith("file:") else (out_dir / link)
    items: dict[str, list[ReportItem]] = {}
    for sidecar in sorted(out_dir.glob(f"sub-*/**/anat/*_desc-{SYNTHETIC_DESC}_*.json")):
        record = read_sidecar(sidecar)
        image = sidecar.with_name(sidecar.name[: -len(".json")] + ".nii.gz")
        parsed = parse_anat_name(image)
        if parsed is None or not image.exists():
            continue
        sources = {}
        for uri in record["Sources"]:
            path = raw / uri.removeprefix("bids:raw:")
            named = parse_anat_name(path)
            sources[named.suffix if named else path.name] = path
        stem = image.name.split(f"_desc-{SYNTHETIC_DESC}")[0]
        folder = raw / image.parent.relative_to(out_dir)
        real = sorted(folder.glob(f"{stem}_{parsed.suffix}.nii*")) or sorted(folder.glob(f"*_{parsed.suffix}.nii*"))
        mask = image.with_name(f"{stem}_desc-brain_mask.nii.gz")
        subject = f"sub-{parsed.entities['sub']}"
        items.setdefault(subject, []).append(
            ReportItem(
                _title(stem, subject),
                image,
                sources,
                real[0] if len(real) == 1 else None,
                mask if mask.exists() else None,
            )
        )
        items[subject][-1].model = report_model(record["Model"], record.get("Settings", {}))
    return items


def report_derivatives(out_dir: Path) -> list[Path]:
    """`modalsynth report OUT_DIR` on a derivatives folder: every subject's page and the index."""
    items = read_derivatives(Path(out_dir))
    if not items:
        raise UserError(f"{out_dir}: no *_desc-{SYNTHETIC_DESC}_* images with sidecars; run `modalsynth bids` first")
    pages = [
        write_subject_report(subject, subject_items, Path(out_dir) / f"{subject}.html", subject_items[0].model)
        for subject, subject_items in items.items()
    ]
    return [*pages, write_index(Path(out_dir) / "index.html", pages, title="modalsynth QC")]


def _readme(model: dict) -> str:
    return (
        "# modalsynth derivatives\n\n"
        f"Synthetic images predicted by modalsynth {__version__} with the model {model['Name']} "
        f"(sha256 {model['Sha256']}). They are not acquired images: each sidecar's `Sources` names the images it was "
        "predicted from and its `Model` the model that predicted it (a built-in model gives the raw scans it "
        "skull-strips to its twin trained for them). Open `index.html` or `sub-<label>.html` in a browser to check "
        "them before use.\n"
    )


def parse_labels(values: list[str] | None) -> tuple[str, ...]:
    """Labels given once each or several in one value ('01 02' or '01,02')."""
    return tuple(label for value in values or [] for label in re.split(r"[\s,]+", value) if label)
