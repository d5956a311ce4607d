"""`modalsynth evaluate`: pair predictions with references by subject, score them, write the report folder."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from . import fid as fidlib
from .data.pairs import (
    LESION_NAMES,
    MASK_NAMES,
    Grid,
    canonical_modality,
    compare_grids,
    describe_mismatch,
    discover_subjects,
    first_present,
)
from .data.preprocess import foreground_mask, to_zyx
from .errors import UserError
from .io import load_volume, voxel_spacing
from .metrics import (
    PLANE_AXES,
    REPORT_LABELS,
    brasyn_metrics,
    scale_to_unit,
    subject_metrics,
    through_plane_error_map,
    through_plane_profile,
)
from .report import (
    crop_to_mask,
    figure4_montage,
    markdown_table,
    plot_metric_distributions,
    plot_through_plane,
    summarise,
    summary_markdown,
    write_json,
    write_per_subject_csv,
)
from .writeguard import Output, check_writes

log = logging.getLogger(__name__)

PROTOCOL = (
    "Prediction and reference are compared on the stored voxel grid (reoriented to RAS, axes z, y, x). Each is "
    "clipped to its own 0.5-99.5 percentile of the brain-mask voxels it fills (non-zero: a part of the brain a "
    "prediction leaves as background is scored as 0 without rescaling the rest) and scaled to [0, 1]; all metrics "
    "except the "
    "BraSyn columns use data range 1. SSIM is 3D SSIM (Gaussian window sigma 1.5, 11 voxels, K1 0.01, K2 0.03, sample "
    "covariance; identical to scikit-image's structural_similarity): the whole-volume figure is skimage's mean "
    "(5-voxel border cropped), the brain / lesion / healthy-brain figures are the mean of the SSIM map over those "
    "voxels. Brain-masked figures lead: whole-volume SSIM is inflated by the shared black background. 'SSIM 2D "
    "slice-averaged' is the mean over axial slices with brain of each slice's 2D SSIM, as 2D papers report. "
    "Through-plane consistency: 2D SSIM inside the brain computed within axial, coronal and sagittal planes, and the "
    "error of the intensity step between neighbouring voxels across axial slices versus within them. Contrast: "
    "'grey/white contrast kept' is the prediction's step between the medians of the upper two of three intensity "
    "classes of the real image (multi-Otsu over the healthy brain: grey and white matter on a T1) over the real "
    "step (1 = the real contrast, lower = washed out); 'lesion contrast error' is |(lesion mean - healthy-brain "
    "median) of the prediction - the same of the real image|. Calibration: the prediction's share of brain voxels at "
    "or above 0.9 of its [0, 1] range over the real image's share (1 = calibrated, above 1 washed out towards white; "
    "undefined when the real image is flat inside the brain). Tissue agreement: each image is split into three "
    "classes inside the brain by its own multi-Otsu thresholds (CSF, grey and white matter on a T1), and the Dice "
    "overlap of the prediction's and the real image's class is reported per class (0 when the prediction has fewer "
    "than three intensity levels). 'BraSyn SSIM' columns follow the BraSyn challenge's "
    "scoring script (github.com/hongweilibran/BraSyn, ssim.py at ecdaf00): each volume clipped to its 0.5-99.5 "
    "percentiles over all voxels (background included) and scaled to [0, 1]; tumour = lesion mask > 0, non-tumour = "
    "every other voxel, background included; both volumes multiplied by the region, then torchmetrics' 3D SSIM "
    "(Gaussian sigma 1.5, 11 voxels, population variance, data range from the masked volumes) averaged without a "
    "5-voxel border as torchmetrics up to 1.4.1 did; whole volume without a mask."
)
FIGURE_PLANES = tuple(PLANE_AXES)  # axial, coronal, sagittal


@dataclass(frozen=True)
class EvaluationOptions:
    """What `evaluate_folders` computes and writes besides the metrics, and which subjects it takes."""

    source: str | None = "flair"  # the source modality shown in the figures (None: no source column)
    fid: bool = True
    fid_weights: Path | None = None  # another TorchScript feature network for FID
    fid_max_slices: int = fidlib.DEFAULT_MAX_SLICES  # per plane and volume
    figures: bool = True
    figure_subjects: int = 3
    progress: bool = True
    subjects: Sequence[str] | None = None  # only these (e.g. a test split); the others in REF are not listed as missing


@dataclass
class SubjectData:
    """One subject's volumes in (z, y, x) order: as stored, and on [0, 1] by the protocol; its masks and spacing."""

    subject: str
    pred_path: Path
    pred: np.ndarray
    ref: np.ndarray
    pred_stored: np.ndarray
    ref_stored: np.ndarray
    source: np.ndarray | None
    brain: np.ndarray
    lesion: np.ndarray | None
    spacing: tuple[float, float, float]
    mask_origin: str


def evaluate_folders(
    pred: Path, ref: Path, target: str, out: Path, options: EvaluationOptions = EvaluationOptions()
) -> dict:
    """Score PRED/<subject>/<target>.nii.gz against REF/<subject>/<target>.nii.gz; write per_subject.csv,
    summary.json, summary.md and (unless `options.figures` is off) the PNG figures to OUT, print the Markdown table
    and return the summary. Every file is checked from its header before any voxel is read, then read once."""
    pred, ref, out = Path(pred), Path(ref), Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is a file; pass a folder for the report")
    check_writes([pred, ref], [Output(out, "the report", "--out")])
    matched, unmatched, pred_files, ref_files = match_subjects(pred, ref, target, options.subjects)
    for subject in matched:  # every grid checked before any work or output (one line for the first problem)
        check_subject(subject, pred_files[subject], ref_files[subject], target, options.source)
    _warn_unmatched(unmatched)
    network, fid_status = _feature_network(options)
    collected = _Collected(options, target, network)
    with _progress_bar(len(matched), options.progress) as bar:
        for subject in matched:
            collected.add(load_subject(subject, pred_files[subject], ref_files[subject], target, options.source))
            bar.update()
    if network is not None:
        fid_status = _fid_summary(collected.features, network, options.fid_max_slices)
    summary: dict[str, Any] = {
        "target": target,
        "source": options.source,
        "pred_dir": str(pred),
        "ref_dir": str(ref),
        "protocol": PROTOCOL,
        "subjects": [row["subject"] for row in collected.rows],
        "unmatched": unmatched,
        "brain_mask": collected.mask_origins,
        "metric_labels": REPORT_LABELS,
        "metrics": summarise(collected.rows),
        "fid": fid_status,
    }
    out.mkdir(parents=True, exist_ok=True)
    files = _write_report(out, summary, collected)
    summary["files"] = {name: str(path) for name, path in files.items()}
    write_json(summary, out / "summary.json")
    log.info(markdown_table(summary["metrics"], summary["fid"], title=f"{target}: {len(collected.rows)} subject(s)"))
    return summary


@dataclass
class _Collected:
    """What one pass over the subjects gathers for the report: metric rows, through-plane profiles, FID features
    and the figures' volumes (of the first `options.figure_subjects` subjects)."""

    options: EvaluationOptions
    target: str
    network: fidlib.FeatureNetwork | None
    rows: list[dict] = field(default_factory=list)
    profiles: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    mask_origins: dict[str, str] = field(default_factory=dict)
    features: dict[str, tuple[list, list]] = field(default_factory=lambda: {plane: ([], []) for plane in FIGURE_PLANES})
    figure_rows: list[dict[str, np.ndarray]] = field(default_factory=list)
    figure_spacing: tuple[float, float, float] | None = None
    error_map: np.ndarray | None = None

    def add(self, data: SubjectData) -> None:
        """Score one subject and keep what the report needs of it."""
        self.mask_origins[data.subject] = data.mask_origin
        self.rows.append({"subject": data.subject, **score_subject(data)})
        self.profiles[data.subject] = through_plane_profile(data.pred, data.ref, data.brain)
        if self.network is not None:
            for plane in FIGURE_PLANES:
                indices = fidlib.select_slices(data.brain, plane, self.options.fid_max_slices)
                self.features[plane][0].append(
                    fidlib.slice_features(self.network, data.pred, plane, indices, data.spacing)
                )
                self.features[plane][1].append(
                    fidlib.slice_features(self.network, data.ref, plane, indices, data.spacing)
                )
        if self.options.figures and len(self.figure_rows) < self.options.figure_subjects:
            self.figure_rows.append(_figure_row(data, self.options.source, self.target))
            self.figure_spacing = self.figure_spacing or data.spacing
            if self.error_map is None:
                error = through_plane_error_map(data.pred, data.ref, data.brain)
                self.error_map = crop_to_mask({"e": error}, data.brain[:-1])["e"]


def score_subject(data: SubjectData) -> dict[str, float]:
    """Every per-subject column of the report (keys of `REPORT_LABELS`); a volume the metrics refuse is a
    `UserError` naming the prediction."""
    try:
        metrics = subject_metrics(data.pred, data.ref, data.brain, data.lesion, scale=False)
    except ValueError as exc:
        raise UserError(f"{data.subject}: {data.pred_path}: {exc}") from exc
    return {**metrics, **brasyn_metrics(data.pred_stored, data.ref_stored, data.lesion)}


@contextmanager
def _progress_bar(total: int, shown: bool) -> Iterator[tqdm]:
    """A progress bar over the subjects, on a terminal only; one that an error interrupts (a file whose voxels turn
    out to be unusable) is erased, so the one-line error stands alone."""
    bar = tqdm(total=total, desc="evaluating", unit="subject", disable=None if shown else True, file=sys.stderr)
    try:
        yield bar
    except BaseException:
        bar.leave = False
        raise
    finally:
        bar.close()


def _warn_unmatched(unmatched: dict[str, list[str]]) -> None:
    """One stderr line per side that has subjects without a partner (they are listed in the report too)."""
    for side, names in unmatched.items():
        if names:
            log.warning(f"{side.replace('_', ' ')} for {len(names)} subject(s), not evaluated: {', '.join(names)}")


def _feature_network(options: EvaluationOptions) -> tuple[fidlib.FeatureNetwork | None, dict]:
    """The FID feature network, or None with the reason FID is not computed."""
    if not options.fid:
        return None, {"reason": "not requested (--no-fid)"}
    try:
        return fidlib.load_feature_network(options.fid_weights), {}
    except fidlib.FidUnavailable as exc:
        log.warning(f"FID unavailable: {exc}")
        return None, {"reason": str(exc)}


def match_subjects(
    pred: Path, ref: Path, target: str, subjects: Sequence[str] | None = None
) -> tuple[list[str], dict[str, list[str]], dict[str, dict[str, Path]], dict[str, dict[str, Path]]]:
    """Subjects with both a prediction and a reference of `target` (only `subjects` if given), those missing
    either, and the files found."""
    key = canonical_modality(target)
    pred_files = _discover(
        pred, "predictions", f"PRED/<subject>/{target}.nii.gz (as written by modalsynth predict)", (target,)
    )
    ref_files = _discover(ref, "references", f"REF/<subject>/{target}.nii.gz", (target, *MASK_NAMES, *LESION_NAMES))
    with_pred = {s for s, files in pred_files.items() if key in files}
    with_ref = {s for s, files in ref_files.items() if key in files or "target" in files}
    if not with_pred:
        found = sorted({m for files in pred_files.values() for m in files})
        raise UserError(
            f"{pred}: no {target} predictions (found: {', '.join(found)}); choose --target from those names"
        )
    if not with_ref:
        found = sorted({m for files in ref_files.values() for m in files})
        raise UserError(
            f"{ref}: no reference {target} volumes (found: {', '.join(found)}); choose --target from those "
            "names, or check --ref"
        )
    absent: set[str] = set()
    if subjects is not None:
        wanted = set(subjects)
        absent = wanted - with_pred - with_ref
        with_pred, with_ref = with_pred & wanted, with_ref & wanted
    matched = sorted(with_pred & with_ref)
    if not matched:
        raise UserError(
            f"no subject has both a prediction and a reference: {pred} has {_few(with_pred)}, "
            f"{ref} has {_few(with_ref)}; prediction subfolders must carry the reference subject names"
        )
    unmatched = {
        "missing_prediction": sorted((with_ref - with_pred) | absent),
        "missing_reference": sorted((with_pred - with_ref) | absent),
    }
    return matched, unmatched, pred_files, ref_files


def check_subject(
    subject: str, pred_files: dict[str, Path], ref_files: dict[str, Path], target: str, source: str | None
) -> None:
    """Check one subject's prediction, reference, masks and source from their headers, without reading voxels: a bad
    header, or a prediction or mask on another grid than the reference, is a `UserError` naming the file."""
    key = canonical_modality(target)
    ref_grid = Grid.of(ref_files.get(key) or ref_files["target"])
    _check_grid(subject, Grid.of(pred_files[key]), ref_grid)
    for names in (MASK_NAMES, LESION_NAMES):
        path = first_present(ref_files, names)
        if path is not None:
            _check_grid(subject, Grid.of(path), ref_grid)
    source_path = _source_path(ref_files, source)
    if source_path is not None:
        Grid.of(source_path)


def load_subject(
    subject: str, pred_files: dict[str, Path], ref_files: dict[str, Path], target: str, source: str | None
) -> SubjectData:
    """Read one subject's prediction, reference, masks and source (each once; grids checked by `check_subject`) and
    scale them to [0, 1] in (z, y, x); the source is kept only when it lies on the reference's grid."""
    key = canonical_modality(target)
    ref_volume = load_volume(ref_files.get(key) or ref_files["target"])
    pred_volume = load_volume(pred_files[key], allow_constant=True)
    ref_zyx, _, affine = to_zyx(ref_volume)
    pred_zyx = to_zyx(pred_volume)[0]
    spacing = voxel_spacing(affine)

    mask_path = first_present(ref_files, MASK_NAMES)
    if mask_path is not None:
        brain = to_zyx(load_volume(mask_path, allow_constant=True))[0] > 0
        origin = f"mask file {mask_path.name}"
        if not brain.any():
            raise UserError(
                f"{mask_path}: the brain mask is empty; fix it or delete it to derive one from the reference"
            )
    else:
        brain = foreground_mask(ref_zyx)
        origin = "derived from the reference (non-background voxels, holes filled)"
    lesion_path = first_present(ref_files, LESION_NAMES)
    lesion = to_zyx(load_volume(lesion_path, allow_constant=True))[0] > 0 if lesion_path is not None else None

    source_zyx = None
    source_path = _source_path(ref_files, source)
    if source_path is not None:
        source_volume = load_volume(source_path)
        if compare_grids(source_volume.shape, source_volume.affine, ref_volume.shape, ref_volume.affine) is None:
            source_zyx = scale_to_unit(to_zyx(source_volume)[0], brain).astype(np.float32)
    return SubjectData(
        subject=subject,
        pred_path=pred_files[key],
        pred=scale_to_unit(pred_zyx, brain),
        ref=scale_to_unit(ref_zyx, brain),
        pred_stored=pred_zyx,
        ref_stored=ref_zyx,
        source=source_zyx,
        brain=brain,
        lesion=lesion,
        spacing=spacing,
        mask_origin=origin,
    )


def _source_path(ref_files: dict[str, Path], source: str | None) -> Path | None:
    """The reference folder's source volume (under its modality name or 'source'), if any."""
    return (ref_files.get(canonical_modality(source)) or ref_files.get("source")) if source else None


def _discover(
    folder: Path, role: str, layout: str, modalities: tuple[str, ...] | None = None
) -> dict[str, dict[str, Path]]:
    """The shared subject discovery, with one-line errors that say which side (predictions or references) is wrong."""
    if not folder.exists():
        raise UserError(f"{folder}: the {role} folder does not exist; check the path")
    if folder.is_dir() and not any(p for p in folder.iterdir() if not p.name.startswith(".")):
        raise UserError(f"{folder}: the {role} folder is empty; expected {layout}")
    try:
        return discover_subjects(folder, modalities)
    except UserError as exc:
        raise UserError(f"{role}: {exc}") from exc


def _check_grid(subject: str, volume: Grid, reference: Grid) -> None:
    """Same shape and affine (within 1e-3 mm) as the reference, or a `UserError` naming subject and files."""
    problem = describe_mismatch(volume, reference)
    if problem is not None:
        raise UserError(f"{subject}: {problem}; resample {volume.path} onto the reference grid")


def _few(names: set[str], count: int = 3) -> str:
    listed = sorted(names)
    return ", ".join(listed[:count]) + (f" and {len(listed) - count} more" if len(listed) > count else "")


def _figure_row(data: SubjectData, source: str | None, target: str) -> dict[str, np.ndarray]:
    """Source, real, synthetic and |error| volumes, cut to the brain box, for the Figure-4 montage."""
    columns: dict[str, np.ndarray] = {}
    if data.source is not None:
        columns[f"source ({source})"] = data.source
    columns[f"real {target}"] = data.ref
    columns[f"synthetic {target}"] = data.pred
    columns["|error|"] = np.abs(data.pred - data.ref)
    return crop_to_mask(columns, data.brain)


def _fid_summary(features: dict[str, tuple[list, list]], network: fidlib.FeatureNetwork, max_slices: int) -> dict:
    """FID over axial slices and over the three planes pooled (2.5D), or the reason it could not be computed."""
    result: dict = {}
    for name, planes in fidlib.PLANE_SETS.items():
        pred_all = [f for plane in planes for f in features[plane][0] if f.size]
        ref_all = [f for plane in planes for f in features[plane][1] if f.size]
        try:
            result[name] = fidlib.fid_result(
                np.concatenate(pred_all), np.concatenate(ref_all), name, network, max_slices
            )
        except ValueError as exc:
            result[name] = {"reason": f"too few slices with brain ({exc})"}
    return result


def _write_report(out: Path, summary: dict, collected: _Collected) -> dict[str, Path]:
    """Write the CSV, Markdown and figures of one evaluation (summary.json is written by the caller)."""
    files = {"per_subject": write_per_subject_csv(collected.rows, out / "per_subject.csv")}
    files["summary_md"] = out / "summary.md"
    files["summary_json"] = out / "summary.json"
    figures, target, spacing = collected.options.figures, collected.target, collected.figure_spacing
    (out / "summary.md").write_text(summary_markdown(summary, figures))
    if not figures:
        return files
    labels = summary["subjects"][: len(collected.figure_rows)]
    for plane in FIGURE_PLANES:
        files[f"figure4_{plane}"] = figure4_montage(
            collected.figure_rows,
            out / f"figure4_{plane}.png",
            plane=plane,
            row_labels=labels,
            spacing=spacing,
            title=f"{plane}: source, real, synthetic {target} and |error| "
            "(each scaled to [0, 1] by its brain percentiles)",
        )
    files["metric_distributions"] = plot_metric_distributions(
        {f"synthetic {target}": collected.rows}, out / "metric_distributions.png"
    )
    files["through_plane"] = plot_through_plane(
        collected.profiles,
        out / "through_plane.png",
        error_map=collected.error_map,
        error_map_label=labels[0] if labels else "",
        spacing=spacing,
    )
    return files
