"""`modalsynth benchmark`: the paper's Table 1 on any data: one split, one budget per method, one evaluation
protocol."""

from __future__ import annotations

import json
import logging
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoints import Checkpoint
from .config import TrainConfig, read_yaml_mapping, resolve_config
from .data.pairs import canonical_modality, discover_subjects, load_or_make_split, require_pairs, source_list
from .data.preprocess import foreground_mask, to_zyx
from .errors import UserError
from .flops import count_parameters
from .inference import Predictor
from .io import Volume, load_volume
from .methods import method_class, method_names
from .predict_jobs import predict_folder
from .report import TABLE1_METRICS, table1_markdown
from .runtime import resolve_device
from .training import train
from .writeguard import check_run_folders

log = logging.getLogger(__name__)

DEFAULT_STEPS = 200
#: a whole-volume prediction slower than this is timed once, not `repeats` times (the table says so)
TIME_ONCE_ABOVE_S = 10.0


def _method_config(method: str, sections: dict[str, Any], plan: BenchmarkPlan) -> TrainConfig:
    """A method's settings: its defaults, the YAML section for it (if any), then the shared budget and grid."""
    shared: dict[str, Any] = {
        "method": method,
        **plan.budget,
        "device": plan.device,
        "source": plan.source,
        "target": plan.target,
    }
    if plan.grid is not None:
        shared["preprocess"] = {"grid": plan.grid}
    section = sections.get(method) or {}
    origin = str(plan.config or "benchmark config")
    if not isinstance(section, dict):
        raise UserError(
            f"{origin}: the section for {method} must be a mapping of settings, e.g. '{method}: {{lr: 1e-4}}'"
        )
    return resolve_config([(f"{origin} [{method}]", section), ("the benchmark's shared budget", shared)], method_class)


def fold_splits(subjects: list[str], folds: int, seed: int = 0) -> list[dict[str, list[str]]]:
    """K-fold cross-validation by subject: every subject is tested exactly once; the others train (no validation
    subject: with few subjects each one is worth more in training, and the last weights are kept)."""
    names = sorted(set(subjects))
    if not 2 <= folds <= len(names):
        raise UserError(f"--folds {folds}: give between 2 and the number of subjects ({len(names)})")
    random.Random(seed).shuffle(names)
    groups = [sorted(names[k::folds]) for k in range(folds)]
    return [{"train": sorted(n for n in names if n not in group), "val": [], "test": group} for group in groups]


def _method_sections(path: Path) -> dict[str, Any]:
    """The benchmark YAML: one mapping of training settings per method name."""
    sections = read_yaml_mapping(
        path, "benchmark config", "one section per method, 'gan3d: {model: {base_channels: 16}}'"
    )
    unknown = sorted(set(sections) - set(method_names()))
    if unknown:
        raise UserError(f"{path}: unknown method section(s) {', '.join(unknown)}; use {', '.join(method_names())}")
    return sections


@dataclass(frozen=True)
class BenchmarkPlan:
    """What `modalsynth benchmark` runs: methods, budget, split, where, and whether to resume or score FID."""

    source: str = "flair"
    target: str = "t1"
    methods: tuple[str, ...] = ("lut", "gan3d", "pix2pix2d", "ddpm")
    steps: int | None = None  # with neither steps nor minutes: DEFAULT_STEPS
    minutes: float | None = None
    folds: int | None = None  # K-fold cross-validation instead of one train/val/test split
    grid: Any = None
    device: str = "auto"
    resume: bool = False
    fid: bool = True
    config: Path | None = None  # YAML with one section of training settings per method
    timing_repeats: int = 3

    @property
    def budget(self) -> dict[str, Any]:
        steps = DEFAULT_STEPS if self.steps is None and self.minutes is None else self.steps
        return {"steps": steps, "minutes": self.minutes}

    @property
    def budget_text(self) -> str:
        steps, minutes = self.budget["steps"], self.budget["minutes"]
        return " and ".join(
            b for b in (f"{steps} steps" if steps else "", f"{minutes:g} minutes" if minutes else "") if b
        )


def run_benchmark(data: Path, out: Path, plan: BenchmarkPlan = BenchmarkPlan()) -> dict:
    """Train, predict and evaluate every method on the same split(s) and budget; write OUT/table1.{md,json} and
    montages.

    One split (train/val/test) by default; `plan.folds` K: K-fold cross-validation, every subject tested once, the
    table pooling all subjects (mean ± sd over subjects). With `plan.resume` a method finished with the same budget is
    re-used; otherwise each run continues from its last.pt (an interrupted fold, or a larger budget for a run whose
    learning rate has not begun to decay: `train` refuses to extend one that has, naming how to train longer).
    """
    check_run_folders(Path(data), [(Path(out), "--out")])
    unknown = [m for m in plan.methods if m not in method_names()]
    if unknown:
        raise UserError(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(method_names())}")
    sections = _method_sections(Path(plan.config)) if plan.config else {}
    configs = {name: _method_config(name, sections, plan) for name in plan.methods}  # checked before any data loads
    pairs = require_pairs(data, plan.source, plan.target)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    splits = _splits(out, [p.subject for p in pairs], plan.folds)
    tested = sorted(sum((s["test"] for s in splits), []))
    timing_source = {p.subject: p.first_source for p in pairs}[tested[0]]
    rows = []
    for name in plan.methods:
        done_file = out / "runs" / name / "done.json"
        done = json.loads(done_file.read_text()) if plan.resume and done_file.exists() else None
        if done is not None and done.get("budget", plan.budget) == plan.budget:
            log.info(f"[{name}] finished earlier; re-using {done_file}")
            rows.append(done)
            continue
        if done is not None:
            log.info(f"[{name}] finished earlier with another budget; continuing its runs to {plan.budget_text}")
        runs = _train_and_predict(name, configs[name], data, out, splits, plan)
        row = _method_row(name, runs, data, out, tested, timing_source, plan)
        done_file.write_text(json.dumps(row, indent=1))
        rows.append(row)
    return _write_table(rows, data, out, splits, tested, plan)


@dataclass
class _Runs:
    """One method's training runs over the splits: steps and seconds per run, prediction seconds per volume."""

    predictor: Predictor
    train_steps: list[int]
    train_s: list[float]
    predict_s: list[float]


def _splits(out: Path, subjects: list[str], folds: int | None) -> list[dict[str, list[str]]]:
    """K folds (written to OUT/folds.json), or the one split of OUT/split.json (made if absent)."""
    if not folds:
        return [load_or_make_split(out, subjects, seed=0)]
    splits = fold_splits(subjects, folds)
    (out / "folds.json").write_text(json.dumps(splits, indent=1))
    return splits


def _train_and_predict(
    name: str, config: TrainConfig, data: Path, out: Path, splits: list[dict], plan: BenchmarkPlan
) -> _Runs:
    """Train `name` on every split (resuming where asked) and predict each split's test subjects."""
    steps, seconds, predict_s = [], [], []
    for k, split in enumerate(splits):
        run_dir = out / "runs" / name / f"fold-{k}" if plan.folds else out / "runs" / name
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "split.json").write_text(json.dumps(split, indent=1))
        where = f" (fold {k + 1}/{len(splits)})" if plan.folds else ""
        log.info(f"[{name}] training{where} for {plan.budget_text} on {len(split['train'])} subjects")
        started = time.perf_counter()
        best = train(config, data, run_dir, resume=plan.resume and (run_dir / "last.pt").exists())
        last = Checkpoint.load(run_dir / "last.pt")
        # the run's training seconds across resumes, validation included (a closed-form fit records none)
        seconds.append(last.elapsed_s or time.perf_counter() - started)
        steps.append(last.step)
        predictor = Predictor.from_checkpoint(best, resolve_device(plan.device))
        log.info(f"[{name}] predicting {len(split['test'])} test subject(s)")
        predict_s += predict_folder(predictor, data, out / "predictions" / name, "test", progress=False)[1]
    return _Runs(predictor, steps, seconds, predict_s)


def _method_row(
    name: str, runs: _Runs, data: Path, out: Path, tested: list[str], timing_source: Path, plan: BenchmarkPlan
) -> dict[str, Any]:
    """Score one method's predictions and gather its Table 1 row (metrics, FID, speed, size, settings)."""
    from .evaluation import EvaluationOptions, evaluate_folders

    predictor, eval_dir = runs.predictor, out / "evaluation" / name
    infer_s, timed = time_volume(predictor, load_volume(timing_source), plan.timing_repeats, runs.predict_s)
    options = EvaluationOptions(source=plan.source, fid=plan.fid, figures=False, progress=False, subjects=tested)
    summary = evaluate_folders(out / "predictions" / name, data, plan.target, eval_dir, options)
    method = predictor.method
    network = method.reported_network()
    per_minute = [n / (s / 60) for n, s in zip(runs.train_steps, runs.train_s)]
    return {
        "method": name,
        "budget": plan.budget,
        "train_steps": int(round(statistics.mean(runs.train_steps))) if method.trainable else 0,
        "train_s": statistics.mean(runs.train_s),
        "steps_per_min": statistics.mean(per_minute) if method.trainable else 0.0,
        "infer_s_per_volume": infer_s,
        "infer_timing": timed,
        "device": str(predictor.device),
        "params": count_parameters(network) if network is not None else 0,
        "metrics": {k: summary["metrics"][k] for k in TABLE1_METRICS if k in summary["metrics"]},
        "fid": {k: v.get("value") for k, v in summary.get("fid", {}).items() if isinstance(v, dict)},
        "test_subjects": summary["subjects"],
        "per_subject": _per_subject_rows(eval_dir / "per_subject.csv"),
        "config": predictor.config.to_dict(),
    }


def _write_table(
    rows: list[dict], data: Path, out: Path, splits: list[dict], tested: list[str], plan: BenchmarkPlan
) -> dict:
    """OUT/table1.json, OUT/table1.md (printed too) and the Figure-4 montages."""
    budget_text = plan.budget_text + " of training per learned method and run (the LUT is fitted in closed form)"
    if plan.folds:
        budget_text += f"; {plan.folds}-fold cross-validation, every subject tested once"
    table = {
        "data": str(data),
        "source": plan.source,
        "target": plan.target,
        "splits": splits,
        "split": splits[0],
        **plan.budget,
        "folds": plan.folds,
        "rows": rows,
    }
    (out / "table1.json").write_text(json.dumps(table, indent=1, default=float))
    markdown = table1_markdown(rows, budget_text, len(tested))
    (out / "table1.md").write_text(markdown)
    _montage(out, rows, data, list(dict.fromkeys([tested[0], tested[-1]])), source_list(plan.source)[0], plan.target)
    log.info(markdown)
    return table


def _per_subject_rows(path: Path) -> list[dict[str, Any]]:
    """The evaluation's per-subject CSV as JSON rows (numbers as floats)."""
    import csv

    def value(text: str) -> Any:
        try:
            return float(text)
        except ValueError:
            return text

    with path.open(newline="") as fh:
        return [{k: value(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _montage(out: Path, rows: list[dict], data: Path, subjects: list[str], source: str, target: str) -> None:
    """Figure-4 montages: one row per test subject (source, real target, then one column per method), each cut
    through the centre of the subject's lesion when its folder has a lesion mask, else through the brain's centre."""
    from .data.pairs import LESION_NAMES, first_present
    from .metrics import scale_to_unit
    from .report import centre_slice, figure4_montage

    found = discover_subjects(data)
    grid_rows, lesions = [], []
    for subject in subjects:
        ref_files = found[subject]
        ref = to_zyx(load_volume(ref_files[canonical_modality(target)]))[0]
        brain = foreground_mask(ref)
        columns = {
            source: scale_to_unit(to_zyx(load_volume(ref_files[canonical_modality(source)]))[0], brain),
            f"real {target}": scale_to_unit(ref, brain),
        }
        for r in rows:
            pred = to_zyx(
                load_volume(out / "predictions" / r["method"] / subject / f"{canonical_modality(target)}.nii.gz")
            )[0]
            columns[r["method"]] = scale_to_unit(pred, brain)
        grid_rows.append(columns)
        lesion_file = first_present(ref_files, LESION_NAMES)  # its grid was checked when the subject was evaluated
        lesion = to_zyx(load_volume(lesion_file, allow_constant=True))[0] > 0 if lesion_file is not None else None
        lesions.append(lesion if lesion is not None and lesion.any() else brain)
    for plane in ("axial", "coronal", "sagittal"):
        figure4_montage(
            grid_rows,
            out / f"figure4_{plane}.png",
            plane=plane,
            row_labels=subjects,
            slice_indices=[centre_slice(mask, plane) for mask in lesions],
            title=f"Figure 4: {plane}",
        )


def time_volume(
    predictor: Predictor, volume: Volume, repeats: int = 3, measured: Sequence[float] = ()
) -> tuple[float, str]:
    """Seconds to predict one whole volume (pre- and postprocessing included): the median of `repeats` runs, or one
    run when the first takes longer than TIME_ONCE_ABOVE_S; predictions already `measured` (seconds each) are reused
    instead when they are that slow. Returns (seconds, how it was timed)."""
    if measured and measured[0] > TIME_ONCE_ABOVE_S:
        return statistics.median(measured), f"median of {len(measured)} prediction(s), one run each"
    times: list[float] = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        predictor.predict_volume(volume)
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        if times[0] > TIME_ONCE_ABOVE_S:
            break
    how = f"median of {len(times)}" if len(times) > 1 else "one run"
    return statistics.median(times), how
