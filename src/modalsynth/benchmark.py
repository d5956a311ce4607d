"""`modalsynth benchmark`: the paper's Table 1 on any data: one split, one budget per method, one evaluation protocol."""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from .config import TrainConfig
from .data.pairs import canonical_modality, discover_subjects, load_or_make_split, require_pairs
from .data.preprocess import foreground_mask, to_zyx
from .errors import UserError
from .flops import count_parameters
from .inference import load_method, resolve_device, synthesise
from .io import load_volume, save_volume
from .methods import method_names
from .report import TABLE1_METRICS, table1_markdown
from .training import train

DEFAULT_STEPS = 200


def _method_config(method: str, base: dict[str, Any], steps: int, grid: Any, device: str, source: str, target: str) -> TrainConfig:
    """A method's config: the YAML section for it (if any) over the defaults, then the shared budget and grid."""
    config = TrainConfig.from_dict(dict(base.get(method, {})), origin=f"benchmark config [{method}]")
    config.method, config.steps, config.device, config.source, config.target = method, steps, device, source, target
    config.val_every = max(1, steps // 4)  # four validations per run: DDPM sampling makes each one costly
    if grid is not None:
        config.preprocess.grid = grid
    return config


def _time_inference(method, config, intensity, path: Path, repeats: int = 3) -> float:
    """Median seconds to synthesise one whole volume (preprocessing and postprocessing included)."""
    volume = load_volume(path)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        synthesise(method, volume, config, intensity)
        if method.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
) -> dict:
    """Train, predict and evaluate every method on one split; write OUT/table1.{md,json} and a montage per method."""
    from .evaluation import evaluate_folders

    methods = methods or ["lut", "gan3d", "pix2pix2d", "ddpm"]
    unknown = [m for m in methods if m not in method_names()]
    if unknown:
        raise UserError(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(method_names())}")
    base = yaml.safe_load(Path(config).read_text()) if config else {}
    steps = steps or DEFAULT_STEPS
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = require_pairs(data, source, target)
    split = load_or_make_split(out, [p.subject for p in pairs], seed=0)
    by_name = {p.subject: p for p in pairs}
    dev = resolve_device(device)
    rows = []
    for name in methods:
        run_dir, pred_dir, eval_dir = out / "runs" / name, out / "predictions" / name, out / "evaluation" / name
        done_file = run_dir / "done.json"
        if resume and done_file.exists():
            rows.append(json.loads(done_file.read_text()))
            print(f"[{name}] finished earlier; re-using {done_file}")
            continue
        cfg = _method_config(name, base, steps, grid, device, source, target)
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "split.json", run_dir / "split.json")
        print(f"[{name}] training for {steps} steps on {len(split['train'])} subjects")
        started = time.perf_counter()
        best = train(cfg, data, run_dir)
        train_s = time.perf_counter() - started
        method, cfg, intensity, payload = load_method(best, dev)
        print(f"[{name}] predicting {len(split['test'])} test subjects")
        for subject in split["test"]:
            result = synthesise(method, load_volume(by_name[subject].source), cfg, intensity)
            save_volume(result, pred_dir / subject / f"{target}.nii.gz")
        infer_s = _time_inference(method, cfg, intensity, by_name[split["test"][0]].source, timing_repeats)
        summary = evaluate_folders(
            pred_dir, data, target=target, out=eval_dir, source=source, fid=fid, figures=False, progress=False,
            subjects=split["test"],
        )
        generator = method.generator()
        row = {
            "method": name,
            "train_steps": cfg.steps if method.trainable else 0,
            "train_s": train_s,
            "infer_s_per_volume": infer_s,
            "device": str(dev),
            "params": count_parameters(generator) if generator is not None else 0,
            "metrics": {k: summary["metrics"][k] for k in TABLE1_METRICS if k in summary["metrics"]},
            "fid": {k: v.get("value") for k, v in summary.get("fid", {}).items() if isinstance(v, dict)},
            "test_subjects": summary["subjects"],
            "config": cfg.to_dict(),
        }
        done_file.write_text(json.dumps(row, indent=1))
        rows.append(row)
    table = {"data": str(data), "source": source, "target": target, "split": split, "steps": steps, "rows": rows}
    (out / "table1.json").write_text(json.dumps(table, indent=1, default=float))
    markdown = table1_markdown(rows, f"{steps} steps per learned method (the LUT is fitted in closed form)", len(split["test"]))
    (out / "table1.md").write_text(markdown)
    _montage(out, rows, data, split["test"][0], source, target)
    print(markdown)
    return table


def _montage(out: Path, rows: list[dict], data: Path, subject: str, source: str, target: str) -> None:
    """A Figure-4 montage of one test subject: source, real target, then one column per method."""
    from .metrics import scale_to_unit
    from .report import figure4_montage

    ref_files = discover_subjects(data)[subject]
    ref = to_zyx(load_volume(ref_files[canonical_modality(target)]))[0]
    brain = foreground_mask(ref)
    columns = {source: scale_to_unit(to_zyx(load_volume(ref_files[canonical_modality(source)]))[0], brain), f"real {target}": scale_to_unit(ref, brain)}
    for r in rows:
        pred = to_zyx(load_volume(out / "predictions" / r["method"] / subject / f"{target}.nii.gz"))[0]
        columns[r["method"]] = scale_to_unit(pred, brain)
    for plane in ("axial", "coronal", "sagittal"):
        figure4_montage(columns, out / f"figure4_{plane}.png", plane=plane, row_labels=[subject], title=f"{subject}: {plane}")
