"""Time the built-in simulator: one subject on the paper's grid (limit 10 s) and on the small grid (limit 2 s).

Each grid is measured in a fresh Python process, so the first subject pays for loading the MNI templates:
  cold      first subject in the process (template loading and blurring included), no file writing
  warm      median of the next subjects (templates cached)
  write     writing one subject's four NIfTI files (gzip) and its parameters
  dataset   `simulate_dataset(..., subjects=1)` end to end in its own fresh process (what `modalsynth simulate` does
            after start-up; the Python and package import time is reported separately); wall and CPU time

Example: python benchmarks/bench_simulate.py --repeats 3 --json /tmp/bench_simulate.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LIMITS_S = {"paper": 10.0, "small": 2.0}


def measure_in_this_process(grid_name: str, repeats: int) -> dict:
    """Run in the child process: import, cold subject, warm subjects, writing."""
    start = time.perf_counter()
    from modalsynth.data import simulate

    imported = time.perf_counter() - start
    grid = {"paper": simulate.PAPER_GRID, "small": simulate.SMALL_GRID}[grid_name]
    start = time.perf_counter()
    subject = simulate.simulate_subject(0, grid)
    cold = time.perf_counter() - start
    warm = []
    for seed in range(1, repeats + 1):
        start = time.perf_counter()
        subject = simulate.simulate_subject(seed, grid)
        warm.append(time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        simulate.write_subject(subject, Path(folder) / "sim-000")
        write = time.perf_counter() - start
        size_mb = sum(f.stat().st_size for f in (Path(folder) / "sim-000").iterdir()) / 1e6
    return {"import_s": imported, "cold_s": cold, "warm_s": warm, "write_s": write, "files_mb": size_mb}


def measure_dataset(grid_name: str) -> dict:
    """Run in the child process: one `simulate_dataset` subject from scratch (templates not yet loaded)."""
    from modalsynth.data import simulate

    grid = {"paper": simulate.PAPER_GRID, "small": simulate.SMALL_GRID}[grid_name]
    with tempfile.TemporaryDirectory() as folder:
        start, cpu = time.perf_counter(), time.process_time()
        simulate.simulate_dataset(Path(folder) / "out", subjects=1, seed=0, grid=grid)
        return {"dataset_s": time.perf_counter() - start, "dataset_cpu_s": time.process_time() - cpu}


def _child(args: list[str]) -> dict:
    result = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grids", nargs="+", default=["paper", "small"], choices=sorted(LIMITS_S))
    parser.add_argument("--repeats", type=int, default=3, help="warm subjects per grid")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    parser.add_argument("--child", choices=["subject", "dataset"], help=argparse.SUPPRESS)
    parser.add_argument("--grid", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "subject":
        print(json.dumps(measure_in_this_process(args.grid, args.repeats)))
        return
    if args.child == "dataset":
        print(json.dumps(measure_dataset(args.grid)))
        return

    from modalsynth.data.simulate import PAPER_GRID, SMALL_GRID

    grids = {"paper": PAPER_GRID, "small": SMALL_GRID}
    rows = []
    for name in args.grids:
        subject = _child(["--child", "subject", "--grid", name, "--repeats", str(args.repeats)])
        dataset = _child(["--child", "dataset", "--grid", name])
        warm = statistics.median(subject["warm_s"]) if subject["warm_s"] else float("nan")
        rows.append(
            {
                "grid": name,
                "shape": list(grids[name]),
                "import_s": subject["import_s"],
                "cold_s": subject["cold_s"],
                "warm_median_s": warm,
                "warm_s": subject["warm_s"],
                "write_s": subject["write_s"],
                "dataset_one_subject_s": dataset["dataset_s"],
                "dataset_one_subject_cpu_s": dataset["dataset_cpu_s"],
                "files_mb": subject["files_mb"],
                "limit_s": LIMITS_S[name],
                "within_limit": dataset["dataset_s"] <= LIMITS_S[name],
            }
        )

    columns = ("import", "cold", "warm", "write")
    header = f"{'grid':<7}{'shape':<15}" + "".join(f"{c:>8}" for c in columns) + f"{'dataset':>9}{'cpu':>7}{'MB':>7}"
    header += f"{'limit':>7}  ok"
    print(header)
    print("-" * len(header))
    for r in rows:
        shape = "x".join(str(n) for n in r["shape"])
        print(
            f"{r['grid']:<7}{shape:<15}{r['import_s']:>8.2f}{r['cold_s']:>8.2f}{r['warm_median_s']:>8.2f}"
            f"{r['write_s']:>8.2f}{r['dataset_one_subject_s']:>9.2f}{r['dataset_one_subject_cpu_s']:>7.2f}"
            f"{r['files_mb']:>7.1f}{r['limit_s']:>7.1f}"
            f"  {'yes' if r['within_limit'] else 'NO'}"
        )
    print(
        "seconds; 'dataset' = one subject simulated and written from a fresh process (templates loaded), "
        "the number held to the limit; 'cpu' = its CPU time (what it takes on an idle core)"
    )
    if args.json:
        info = {"python": platform.python_version(), "machine": platform.machine(), "processor_count": _cpus()}
        args.json.write_text(json.dumps({"environment": info, "results": rows}, indent=1) + "\n")
        print(f"wrote {args.json}")


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


if __name__ == "__main__":
    main()
