"""`modalsynth benchmark`: the paper's Table 1 on any data: one split, one budget per method, one evaluation protocol."""

from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path
from typing import Any


from .checkpoints import Checkpoint
from .config import TrainConfig, read_yaml_mapping, resolve_config
from .data.pairs import canonical_modality, discover_subjects, load_or_make_split, require_pairs
from .data.preprocess import foreground_mask, to_zyx
from .errors import UserError
from .flops import count_parameters
from .inference import Predictor, resolve_device
from .io import load_volume
from .methods import method_class, method_names
from .report import TABLE1_METRICS, table1_markdown
from .training import train

DEFAULT_STEPS = 200


def _method_config(method: str, base: dict[str, Any], steps: int | None, grid: Any, device: str, source: str, target: str,
                   origin: str = "benchmark config", minutes: float | None = None) -> TrainConfig:
    """A method's config: its recipe, the YAML section for it (if any), then the shared budget and grid."""
    shared: dict[str, Any] = {"method": method, "steps": steps, "minutes": minutes, "device": device, "source": source,
                              "target": target}
    if grid is not None:
        shared["preprocess"] = {"grid": grid}
    section = base.get(method) or {}
    if not isinstance(section, dict):
        raise UserError(f"{origin}: the section for {method} must be a mapping of settings, e.g. '{method}: {{lr: 1e-4}}'")
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
    sections = read_yaml_mapping(path, "benchmark config", "one section per method, 'gan3d: {model: {base_channels: 16}}'")
    unknown = sorted(set(sections) - set(method_names()))
    if unknown:
        raise UserError(f"{path}: unknown method section(s) {', '.join(unknown)}; use {', '.join(method_names())}")
    return sections


def run_benchmark(
    data: Path,
    out: Path,
    source: str = "flair",
    target: str = "t1",
    methods: list[str] | None = None,
    steps: int | None = None,
    grid: Any = None,
    device: str = "auto",
    resume: bool = False,
    fid: bool = True,
    config: Path | None = None,
    timing_repeats: int = 3,
    minutes: float | None = None,
    folds: int | None = None,
) -> dict:
    """Train, predict and evaluate every method on the same split(s) and budget; write OUT/table1.{md,json} and montages.

    One split (train/val/test) by default; `folds` K: K-fold cross-validation, every subject tested once, the table
    pooling all subjects (mean ± sd over subjects). The budget is `steps` and/or `minutes` of training per run.
    `resume`: a method finished with the same budget is re-used; otherwise each run continues from its last.pt (an
    interrupted fold, or a larger budget for a run whose learning rate has not begun to decay: `train` refuses to
    extend one that has, naming how to train longer).
    """
    from .evaluation import EvaluationOptions, evaluate_folders

    methods = methods or ["lut", "gan3d", "pix2pix2d", "ddpm"]
    unknown = [m for m in methods if m not in method_names()]
    if unknown:
        raise UserError(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(method_names())}")
    base = _method_sections(Path(config)) if config else {}
    if steps is None and minutes is None:
        steps = DEFAULT_STEPS
    configs = {name: _method_config(name, base, steps, grid, device, source, target, str(config or "benchmark"), minutes)
               for name in methods}  # every setting checked before any data loads or any folder is made
    pairs = require_pairs(data, source, target)
    subjects = [p.subject for p in pairs]
    splits = fold_splits(subjects, folds) if folds else None
    dev = resolve_device(device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if splits is None:
        splits = [load_or_make_split(out, subjects, seed=0)]
    else:
        (out / "folds.json").write_text(json.dumps(splits, indent=1))
    tested = sorted(sum((s["test"] for s in splits), []))
    budget = " and ".join(b for b in (f"{steps} steps" if steps else "", f"{minutes:g} minutes" if minutes else "") if b)
    by_name = {p.subject: p for p in pairs}
    asked = {"steps": steps, "minutes": minutes}
    rows = []
    for name in methods:
        method_dir, pred_dir, eval_dir = out / "runs" / name, out / "predictions" / name, out / "evaluation" / name
        done_file = method_dir / "done.json"
        if resume and done_file.exists():
            done = json.loads(done_file.read_text())
            if done.get("budget", asked) == asked:
                rows.append(done)
                print(f"[{name}] finished earlier; re-using {done_file}")
                continue
            print(f"[{name}] finished earlier with another budget; continuing its runs to {budget}")
        train_s, train_steps, times = [], [], []
        for k, split in enumerate(splits):
            run_dir = method_dir / f"fold-{k}" if folds else method_dir
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "split.json").write_text(json.dumps(split, indent=1))
            where = f" (fold {k + 1}/{len(splits)})" if folds else ""
            print(f"[{name}] training{where} for {budget} on {len(split['train'])} subjects")
            started = time.perf_counter()
            best = train(configs[name], data, run_dir, resume=resume and (run_dir / "last.pt").exists())
            last = Checkpoint.load(run_dir / "last.pt")
            # the run's training seconds across resumes, validation included (a closed-form fit records none)
            train_s.append(last.elapsed_s or time.perf_counter() - started)
            train_steps.append(last.step)
            predictor = Predictor.from_checkpoint(best, dev)
            print(f"[{name}] predicting {len(split['test'])} test subject(s)")
            _, fold_times = predictor.predict_folder(data, pred_dir, "test", progress=False)
            times += fold_times
        infer_s, timed = predictor.time_volume(load_volume(by_name[tested[0]].source), timing_repeats, times)
        options = EvaluationOptions(source=source, fid=fid, figures=False, progress=False, subjects=tested)
        summary = evaluate_folders(pred_dir, data, target, eval_dir, options)
        method = predictor.method
        generator = method.reported_network()
        row = {
            "method": name,
            "budget": asked,
            "train_steps": int(round(statistics.mean(train_steps))) if method.trainable else 0,
            "train_s": statistics.mean(train_s),
            "steps_per_min": statistics.mean(n / (s / 60) for n, s in zip(train_steps, train_s)) if method.trainable else 0.0,
            "infer_s_per_volume": infer_s,
            "infer_timing": timed,
            "device": str(dev),
            "params": count_parameters(generator) if generator is not None else 0,
            "metrics": {k: summary["metrics"][k] for k in TABLE1_METRICS if k in summary["metrics"]},
            "fid": {k: v.get("value") for k, v in summary.get("fid", {}).items() if isinstance(v, dict)},
            "test_subjects": summary["subjects"],
            "per_subject": _per_subject_rows(eval_dir / "per_subject.csv"),
            "config": predictor.config.to_dict(),
        }
        done_file.write_text(json.dumps(row, indent=1))
        rows.append(row)
    budget_text = budget + " of training per learned method and run (the LUT is fitted in closed form)"
    if folds:
        budget_text += f"; {folds}-fold cross-validation, every subject tested once"
    table = {"data": str(data), "source": source, "target": target, "splits": splits, "split": splits[0], "steps": steps,
             "minutes": minutes, "folds": folds, "rows": rows}
    (out / "table1.json").write_text(json.dumps(table, indent=1, default=float))
    markdown = table1_markdown(rows, budget_text, len(tested))
    (out / "table1.md").write_text(markdown)
    _montage(out, rows, data, list(dict.fromkeys([tested[0], tested[-1]])), source, target)
    print(markdown)
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
        columns = {source: scale_to_unit(to_zyx(load_volume(ref_files[canonical_modality(source)]))[0], brain),
                   f"real {target}": scale_to_unit(ref, brain)}
        for r in rows:
            pred = to_zyx(load_volume(out / "predictions" / r["method"] / subject / f"{canonical_modality(target)}.nii.gz"))[0]
            columns[r["method"]] = scale_to_unit(pred, brain)
        grid_rows.append(columns)
        lesion_file = first_present(ref_files, LESION_NAMES)  # its grid was checked when the subject was evaluated
        lesion = to_zyx(load_volume(lesion_file, allow_constant=True))[0] > 0 if lesion_file is not None else None
        lesions.append(lesion if lesion is not None and lesion.any() else brain)
    for plane in ("axial", "coronal", "sagittal"):
        figure4_montage(grid_rows, out / f"figure4_{plane}.png", plane=plane, row_labels=subjects,
                        slice_indices=[centre_slice(mask, plane) for mask in lesions], title=f"Figure 4: {plane}")
