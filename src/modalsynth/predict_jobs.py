"""`modalsynth predict` as jobs over files and folders: which subjects, where each output goes, what may be written,
and this rank's share under torchrun. The numbers come from the `Predictor` (`inference.py`)."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .cohort import Cohort
from .data.pairs import (
    NOT_REGISTERED,
    canonical_modality,
    check_volumes,
    discover_subjects,
    grid_mismatch,
    modality_file,
)
from .data.register import Aligner
from .data.skullstrip import SkullStrip
from .errors import UserError
from .inference import Predictor, Synthesis
from .io import NIFTI_SUFFIXES, is_nifti, load_volume, save_volume, sidecar_path
from .runtime import launch, rank_device
from .writeguard import Output, check_outside, check_writes, files_under

log = logging.getLogger(__name__)

Job = tuple[str, dict[str, Path]]  # (subject, {sequence: file})


def is_single_file(input: Path) -> bool:
    """Whether `predict --input` names one volume (a NIfTI file) rather than a data folder or a CSV manifest."""
    input = Path(input)
    return input.suffix.lower() != ".csv" and (input.is_file() or is_nifti(input))


def target_file(predictor: Predictor) -> str:
    """The one name a prediction takes inside a folder: <target>.nii.gz."""
    return f"{canonical_modality(predictor.config.target)}.nii.gz"


def output_path(predictor: Predictor, out_root: Path, subject: str) -> Path:
    """The one naming rule for a folder of predictions: OUT/<subject>/<target>.nii.gz."""
    return Path(out_root) / subject / target_file(predictor)


def write_sidecar(synthesis: Synthesis, sources: Mapping[str, Path], output: Path, model: dict[str, object]) -> Path:
    """Record beside a prediction what it was predicted from and by which model (`model`, the `model_record` of
    `synthesis.model`: a built-in's twin for a brain stripped here), so a report or a reader names the right one."""
    record = {
        "Description": f"Synthetic {synthesis.model.config.target} predicted by modalsynth; not an acquired image",
        "Sources": {name: str(path) for name, path in sources.items()},
        "SkullStrippedHere": synthesis.stripped_here,
        "Model": model,
    }
    path = sidecar_path(output)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def predict_file(predictor: Predictor, source: Path, output: Path) -> Path:
    """One source file -> one output file (an existing folder as `output` gets OUT/<target>.nii.gz)."""
    source, output = Path(source), Path(output)
    if output.is_dir():
        output = output / target_file(predictor)
    check_writes([source], [Output(output, f"the synthetic {predictor.config.target}", "--output", NIFTI_SUFFIXES)])
    if len(predictor.config.sources) > 1:
        log.info(
            f"predicting from {predictor.file_source} only (the model takes {predictor.config.source}; give a data "
            "folder for several)"
        )
    return save_volume(predictor.predict_volume(load_volume(source)), output)


def folder_jobs(predictor: Predictor, root: Path, split: str | None = None) -> list[Job]:
    """(subject, {sequence: file}) for every subject under `root` that has at least one of the sources read (the
    model's, or those chosen by `with_sources`), restricted to a split if asked."""
    subjects = discover_subjects(root, one_subject=True)
    wanted = None
    if split:
        if split not in ("train", "val", "test"):
            raise UserError(f"--split {split}: choose train, val or test")
        wanted = set(predictor.split.get(split, []))
        if not wanted:
            raise UserError(f"{predictor.origin}: the checkpoint records no subjects in split {split!r}; drop --split")
    read = predictor.sources or predictor.config.sources
    key = " or ".join(read)
    first = predictor.config.sources[0]
    chosen = {s: _sources_of(f, read, first) for s, f in subjects.items() if wanted is None or s in wanted}
    jobs = [(s, files) for s, files in chosen.items() if files]
    missing = [s for s, files in chosen.items() if not files]
    if missing:
        log.info(f"skipped {len(missing)} subject(s) without {key}: {', '.join(missing[:5])}")
    if not jobs:
        raise UserError(
            f"{root}: no {key} volumes to predict"
            + (f" in split {split!r}" if split else "")
            + f"; {predictor.origin or 'the model'} maps {predictor.config.source} -> {predictor.config.target}, "
            "so the data needs a file of that source modality per subject"
        )
    return jobs


def _sources_of(files: dict[str, Path], read: tuple[str, ...], first: str) -> dict[str, Path]:
    """A subject's files of the sequences read; a CSV manifest's generic `source` column stands for the model's first
    source, as in training."""
    found = {m: modality_file(files, m, "source" if m == first else None) for m in read}
    return {m: f for m, f in found.items() if f is not None}


def predict_folder(
    predictor: Predictor,
    root: Path,
    out_root: Path,
    split: str | None = None,
    progress: bool = True,
    cohort: Cohort | None = None,
) -> tuple[list[Path], list[float]]:
    """Every subject's source under `root` (optionally one recorded split) -> OUT/<subject>/<target>.nii.gz; with a
    `cohort`, only this rank's share, skipping the outputs an earlier run of the same model already wrote."""
    check_outside(Path(root), Path(out_root), "--output", "the next run would take the predictions for inputs")
    jobs = folder_jobs(predictor, root, split)
    outputs = [output_path(predictor, out_root, subject) for subject, _ in jobs]
    what = f"a synthetic {predictor.config.target}"
    reads = [*files_under(root), *(p for _, files in jobs for p in files.values())]
    records = [Output(sidecar_path(out), f"the record of {what}", "--output") for out in outputs]
    check_writes(reads, [*(Output(out, what, "--output") for out in outputs), *records])
    todo = list(zip(jobs, outputs))
    if cohort is not None:
        share = cohort.share(todo)
        todo = [(job, out) for job, out in share if not cohort.finished(list(job[1].values()), out)]
        if len(todo) < len(share):
            log.info(f"skipped {len(share) - len(todo)} output(s) already written by this model and settings")
    check_volumes([p for (_, files), _ in todo for p in files.values()])  # all readable before the first output
    for (_, files), _ in todo:
        first, *others = files.values()
        problem = next(filter(None, (grid_mismatch(first, other) for other in others)), None)
        if problem and predictor.align is None:
            raise UserError(f"{problem}; {NOT_REGISTERED}")
    if cohort is not None:
        cohort.begin()
    if len(predictor.config.sources) > 1:
        used = Counter("+".join(files) for (_, files), _ in todo)
        log.info("predicting from " + "; ".join(f"{k} ({n} subject(s))" for k, n in used.items()))
    written, times, models = [], [], predictor.model_records()
    for (_, files), output in tqdm(todo, desc="predicting", unit="volume", disable=not progress):
        start = time.perf_counter()
        result = predictor.synthesise({name: load_volume(path) for name, path in files.items()})
        times.append(time.perf_counter() - start)
        written.append(save_volume(result.image, output))
        write_sidecar(result, files, output, models[result.model.origin])
    return written, times


def predict_path(
    checkpoint: str | Path | None,
    input: Path,
    output: Path,
    device: str = "auto",
    split: str | None = None,
    inference_changes: Mapping[str, object] | None = None,
    skull: SkullStrip | None = None,
    sources: str | None = None,
    align: Aligner | None = None,
) -> list[Path]:
    """`modalsynth predict`: one file to one file, or a data folder to OUT/<subject>/<target>.nii.gz.

    `checkpoint`: a file or `builtin:NAME` (None: the default built-in, which warns, without stopping, when an input
    does not look like what it expects). `inference_changes`: inference settings instead of the checkpoint's (e.g.
    overlap, flip_average). `skull`: skull stripping of raw inputs instead of the checkpoint's training setting.
    `sources`: which of a multi-source model's inputs to read ('flair' or 'flair,t2'; None: all). `align`: register
    the other sources onto the first (`--register`).
    """
    input = Path(input)
    chosen = device if is_single_file(input) else rank_device(device)
    predictor = Predictor.load(checkpoint, chosen).with_inference(**(inference_changes or {}))
    predictor = dataclasses.replace(predictor, skull=skull or predictor.skull, align=align).with_sources(sources)
    return run_predictor(predictor, input, output, split)


def run_predictor(predictor: Predictor, input: Path, output: Path, split: str | None = None) -> list[Path]:
    """One file to one file, or a data folder to OUT/<subject>/<target>.nii.gz (under torchrun: this rank's share; a
    rerun skips outputs already written with the same model and settings), logging the time per volume."""
    input, output = Path(input), Path(output)
    if is_single_file(input):
        start = time.perf_counter()
        written = predict_file(predictor, input, output)
        log.info(f"wrote {written} ({time.perf_counter() - start:.1f} s on {predictor.device})")
        return [written]
    skull = None if predictor.skull is None else dataclasses.asdict(predictor.skull)
    record = {
        **predictor.model_files(),
        "inference": predictor.inference.to_dict(),
        "skull": skull,
        "sources": list(predictor.sources or predictor.config.sources),
        "register": predictor.align is not None,
    }
    cohort = Cohort(output, record)
    with cohort:
        done, times = predict_folder(predictor, input, output, split, cohort=cohort)
    rank = f"rank {launch().rank}: " if launch().distributed else ""
    speed = f" ({np.median(times):.2f} s per volume on {predictor.device})" if times else ""
    log.info(f"{rank}wrote {len(done)} volume(s) to {output}{speed}")
    return done
