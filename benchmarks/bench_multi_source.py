"""What a second source buys: gan3d FLAIR -> T1 vs FLAIR + T2 -> T1 on simulated subjects, at equal minutes.

Simulates subjects with FLAIR, T1 and T2 (`modalsynth simulate --sequences flair,t1,t2`), trains two gan3d models
per start (`--inits`: random weights, or a single-source model such as builtin:sim-flair-t1, which the two-source
model takes with its T2 weights at zero) side by side in one run (one process and one thread each, the same minutes,
so all see the same machine load): FLAIR alone, and FLAIR + T2 with the default source dropout. Then predicts the
held-out subjects with the single-source model and with the two-source model from both sources, from FLAIR alone and
from T2 alone, and scores each with `modalsynth evaluate` (brain SSIM, PSNR, MAE; lesion SSIM). Prints a table and
writes JSON.

    python benchmarks/bench_multi_source.py --work /tmp/bench-multi --json out.json [--minutes 10 --subjects 24]
    python benchmarks/bench_multi_source.py ... --inits none,builtin:sim-flair-t1   # four runs at once
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
METRICS = ("ssim_brain", "psnr_brain", "mae_brain", "ssim_lesion")
#: (model, the sources it is trained on, the sources it predicts from)
SCORED = (
    ("FLAIR -> T1", "flair", "flair"),
    ("FLAIR + T2 -> T1", "flair,t2", "flair,t2"),
    ("FLAIR + T2 -> T1", "flair,t2", "flair"),
    ("FLAIR + T2 -> T1", "flair,t2", "t2"),
)


def modalsynth(*args: str, threads: int = 1, wait: bool = True) -> subprocess.Popen | None:
    """Run `python -m modalsynth ARGS` with `threads` torch threads (returns the process when not waiting)."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    process = subprocess.Popen([sys.executable, "-m", "modalsynth", *args], env=env)
    if wait:
        if process.wait() != 0:
            raise SystemExit(f"modalsynth {' '.join(args)} failed")
        return None
    return process


def train_side_by_side(data: Path, work: Path, args: argparse.Namespace) -> dict[tuple[str, str], Path]:
    """Every (source, start) model at once, `minutes` each, one thread each, with gan3d's default recipe (its own
    grid, 64^3 patches); the two-source ones with `--source-dropout` when given."""
    inits = args.inits.split(",")
    runs = {
        (source, init): work / f"run-{source.replace(',', '-')}-{init.replace(':', '-')}"
        for init in inits
        for source in ("flair", "flair,t2")
    }
    common = [
        "--data",
        str(data),
        "--target",
        "t1",
        "--minutes",
        str(args.minutes),
        "--steps",
        "100000",
        "--holdout",
        "val+test",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--seed",
        str(args.seed),
    ]
    settings = work / "multi.yaml"
    settings.write_text("" if args.source_dropout is None else f"source_dropout: {args.source_dropout}\n")
    extra = {"flair": [], "flair,t2": ["--config", str(settings)]}
    processes = [
        modalsynth("train", "--source", source, "--init", init, "--out", str(out), *common, *extra[source], wait=False)
        for (source, init), out in runs.items()
    ]
    if any(p.wait() != 0 for p in processes):  # type: ignore[union-attr]
        raise SystemExit("a training run failed")
    return runs


def score(run: Path, data: Path, work: Path, label: str, source: str) -> dict[str, float]:
    """Predict the run's test subjects from `source` and evaluate them against the real T1."""
    pred, report = work / f"pred-{label}", work / f"eval-{label}"
    modalsynth(
        "predict",
        "--checkpoint",
        str(run / "best.pt"),
        "--input",
        str(data),
        "--output",
        str(pred),
        "--split",
        "test",
        "--source",
        source,
        "--device",
        "cpu",
        "--skull-strip",
        "never",
        threads=2,
    )
    modalsynth(
        "evaluate",
        "--pred",
        str(pred),
        "--ref",
        str(data),
        "--target",
        "t1",
        "--out",
        str(report),
        "--no-fid",
        threads=2,
    )
    metrics = json.loads((report / "summary.json").read_text())["metrics"]
    return {m: metrics[m]["mean"] for m in METRICS} | {"n": metrics["ssim_brain"]["n"]}


def steps_of(run: Path) -> int:
    import torch

    return int(torch.load(run / "last.pt", map_location="cpu", weights_only=False)["step"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--subjects", type=int, default=24)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--grid", default="32 96 80", help="the simulated subjects' grid D H W")
    parser.add_argument("--data", type=Path, help="simulated subjects to reuse (default WORK/data, made if missing)")
    parser.add_argument("--seed", type=int, default=0, help="training seed of every run")
    parser.add_argument("--inits", default="none", help="comma-separated starts, each for both models (none: random)")
    parser.add_argument(
        "--source-dropout", type=float, help="the two-source run's source_dropout (default: modalsynth's)"
    )
    args = parser.parse_args()
    work, data, grid = args.work, args.data or args.work / "data", args.grid.split()
    work.mkdir(parents=True, exist_ok=True)
    if not (data / f"sim-{args.subjects - 1:03d}").is_dir():
        modalsynth(
            "simulate",
            "--out",
            str(data),
            "--subjects",
            str(args.subjects),
            "--grid",
            *grid,
            "--sequences",
            "flair,t1,t2",
            threads=2,
        )
    runs = train_side_by_side(data, work, args)
    rows = []
    for init in args.inits.split(","):
        for model, trained, given in SCORED:
            label = f"{trained}-from-{given}-{init}".replace(",", "+").replace(":", "-")
            scores = score(runs[(trained, init)], data, work, label, given)
            rows.append({"start": init, "model": model, "predicted from": given, **scores})
    steps = {f"{source} from {init}": steps_of(run) for (source, init), run in runs.items()}
    result = {
        "cpu": platform.processor() or platform.machine(),
        "minutes": args.minutes,
        "subjects": args.subjects,
        "grid": grid,
        "seed": args.seed,
        "source_dropout": args.source_dropout,
        "steps": steps,
        "rows": rows,
    }
    args.json.write_text(json.dumps(result, indent=1))
    print(f"\n{args.minutes:g} minutes each (steps: {steps}); test subjects: {rows[0]['n']}\n")
    print("| start | model | predicted from | brain SSIM | brain PSNR | brain MAE | lesion SSIM |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['start']} | {r['model']} | {r['predicted from']} | {r['ssim_brain']:.4f} | {r['psnr_brain']:.2f} | "
            f"{r['mae_brain']:.4f} | {r['ssim_lesion']:.4f} |"
        )


if __name__ == "__main__":
    main()
