"""The data path at the paper's scale: N subjects on the paper's grid (48x288x240), before and after, in one run.

Subjects are real paired volumes linked under new names (each name is its own cache entry). For each N it reports
the cache build's seconds per subject (only the subjects new to the cache are built: N=50, then the next 150, then
the next 800), the cache's size on disk, the seconds from `modalsynth train` start to its first step with a warm
cache, and the peak memory of the training process plus its loader workers over its first 50 steps, as anonymous
memory (RssAnon) and as RSS (RssAnon + RssFile + RssShmem: memory-mapped cache pages count as RssFile, which is
page cache the kernel can drop). Today's loader (the code at `--before`, run from a `git archive` of it) is in the
same table at the smaller N. Then the loader's throughput (batches per second: 64^3 patches and whole grids, the
default 'light' augmentation) with 0, 1 and 2 workers, beside gan3d's step time on this CPU and a labelled
estimate of the paper-width step on a GPU (its FLOPs over an assumed rate).

Training runs use a tiny gan3d (base 8, depth 2) on 16x32x32 patches, so 50 steps measure the data path, not the
network.

    python benchmarks/bench_data_scale.py --real DIR --work /work/bench-scale --json out.json [--sizes 50,200,1000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

GRID = (48, 288, 240)
TRAIN_STEPS = 50
TINY = ["--patch", "16", "32", "32", "--init", "none", "--holdout", "none", "--device", "cpu"]
TINY_YAML = "model: {base_channels: 8, depth: 2, disc_channels: 8, disc_layers: 2, window: null}\nlog_every: 1\n"
#: the GPU rate the paper-width step estimate assumes (bf16 3D convolutions at ~30 % of an H100/H200's dense peak)
ASSUMED_GPU_TFLOPS = 300.0
SRC = Path(__file__).resolve().parents[1] / "src"


def link_subjects(real: Path, root: Path, count: int) -> None:
    """ROOT/s0000.. holding symbolic links to the real subjects' flair and t1, cycling through them."""
    subjects = sorted(p for p in real.iterdir() if (p / "flair.nii.gz").exists() and (p / "t1.nii.gz").exists())
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        folder = root / f"s{i:04d}"
        folder.mkdir(exist_ok=True)
        for name in ("flair.nii.gz", "t1.nii.gz"):
            if not (folder / name).exists():
                (folder / name).symlink_to((subjects[i % len(subjects)] / name).resolve())


def _tree(pid: int) -> list[int]:
    """The process and its descendants (loader workers, cache builders)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except OSError:
            pass
    return out


def _memory_kb(pid: int) -> dict[str, int]:
    total = {"RssAnon": 0, "RssFile": 0, "RssShmem": 0, "VmRSS": 0}
    for p in _tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                key = line.split(":")[0]
                if key in total:
                    total[key] += int(line.split()[1])
        except OSError:
            pass
    return total


def run_training(cmd: list[str], env: dict[str, str], log: Path) -> dict[str, float]:
    """Run a training command; seconds to its first logged step, and peak summed memory (GB) until it exits."""
    peak = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = None
    while proc.poll() is None:
        mem = _memory_kb(proc.pid)
        for k in peak:
            peak[k] = max(peak[k], mem[k])
        if first is None and log.exists() and any(row.startswith("1,") for row in log.read_text().splitlines()):
            first = time.perf_counter() - start
        time.sleep(0.1)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.read()[-2000:]}")
    return {
        "first_step_s": first or math.nan,
        "peak_anon_gb": peak["RssAnon"] / 1e6,
        "peak_rss_gb": peak["VmRSS"] / 1e6,
        "peak_file_gb": peak["RssFile"] / 1e6,
        "total_s": time.perf_counter() - start,
    }


def build_cache(data: Path, cache: Path, workers: int, env: dict[str, str]) -> dict[str, float]:
    """`modalsynth prepare` on the paper's grid; seconds and subjects newly built."""
    before = (
        len(json.loads((cache / "manifest.json").read_text())["subjects"]) if (cache / "manifest.json").exists() else 0
    )
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "modalsynth",
            "prepare",
            "--data",
            str(data),
            "--cache",
            str(cache),
            "--grid",
            *map(str, GRID),
            "--workers",
            str(workers),
        ],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seconds = time.perf_counter() - start
    built = len(json.loads((cache / "manifest.json").read_text())["subjects"]) - before
    return {"built": built, "build_s": seconds, "build_s_per_subject": seconds / max(1, built)}


def batches_per_second(stream: Iterator[Any], batches: int) -> float:
    """How fast a loader's stream delivers batches, after 3 warm-up batches (worker start-up is not counted)."""
    for _ in range(3):
        next(stream)
    start = time.perf_counter()
    for _ in range(batches):
        next(stream)
    return batches / (time.perf_counter() - start)


def loader_throughput(cache: Path, names: list[str], batches: int) -> list[dict]:
    """Batches per second from the streaming loader over cached subjects, for 0, 1 and 2 workers (after 3 warm-up
    batches, so worker start-up is not counted)."""
    sys.path.insert(0, str(SRC))
    from modalsynth.data.cache import open_subjects, read_manifest
    from modalsynth.data.stream import BatchPlan, StepBatches, stream_batches

    subjects = open_subjects(cache, read_manifest(cache), names)
    rows = []
    for label, patch in (("64^3 patch", (64, 64, 64)), ("whole 48x288x240", None)):
        for workers in (0, 1, 2):
            stream = stream_batches(StepBatches(subjects, BatchPlan(0, 0, 1, 1, patch, "light")), 0, workers, False)
            rate = batches_per_second(stream, batches)
            del stream
            rows.append({"what": label, "workers": workers, "batches_per_s": rate})
            print(f"loader {label:>18}  workers {workers}: {rate:7.2f} batches/s", flush=True)
    return rows


def gan_step_times(paper_on_cpu: bool) -> dict[str, float]:
    """gan3d's default and paper-width training steps on this CPU (median of 3 on a 64^3 patch; one whole grid),
    and the paper-width whole-grid step's FLOPs with its GPU estimate."""
    sys.path.insert(0, str(SRC))
    import torch

    from modalsynth.config import resolve_config
    from modalsynth.flops import count_flops
    from modalsynth.methods import build_method, method_class

    out = {}
    cases = [("default 64^3", {}, (64, 64, 64)), ("paper whole grid", {"preset": "paper"}, GRID)]
    for name, settings, shape in cases[: 2 if paper_on_cpu else 1]:
        config = resolve_config([("bench", {"device": "cpu", "init": "none", **settings})], method_class)
        method = build_method(config).to(torch.device("cpu"))
        method.make_optimizers()
        method.train_mode(True)
        batch = {k: torch.rand(1, 1, *shape) * 2 - 1 for k in ("source", "target")}
        batch["mask"] = torch.ones(1, 1, *shape)
        times = []
        for i in range(3 if shape != GRID else 1):
            start = time.perf_counter()
            method.training_step(batch, torch.Generator().manual_seed(i))
            times.append(time.perf_counter() - start)
        out[f"cpu_step_s {name}"] = statistics.median(times)
        print(f"gan3d step {name}: {statistics.median(times):.2f} s", flush=True)
    config = resolve_config([("bench", {"device": "cpu", "init": "none", "preset": "paper"})], method_class)
    method = build_method(config)
    g = count_flops(method.nets["generator"], (1, 1, *GRID))
    d = count_flops(method.nets["discriminator"], (1, 2, *GRID))
    out["paper_step_gflop"] = (3 * g + 9 * d) / 1e9
    out["paper_step_gpu_s_estimate"] = out["paper_step_gflop"] / (ASSUMED_GPU_TFLOPS * 1e3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, required=True, help="folder of real paired subjects (flair, t1)")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--sizes", default="50,200,1000")
    parser.add_argument("--before-sizes", default="50,200", help="N at which today's loader runs too")
    parser.add_argument("--before", default="main", help="git revision of today's loader (its merge base with HEAD)")
    parser.add_argument("--workers", type=int, default=2, help="cache build processes")
    parser.add_argument("--no-loader", action="store_true", help="skip the loader throughput and step times")
    parser.add_argument(
        "--paper-cpu-step", action="store_true", help="also time one paper-width whole-grid step on the CPU"
    )
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    before_src = work / "before-src"
    repo = SRC.parent
    base = subprocess.run(
        ["git", "merge-base", "HEAD", args.before], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    if not before_src.exists():
        archive = subprocess.run(["git", "archive", base, "src"], cwd=repo, capture_output=True, check=True).stdout
        before_src.mkdir()
        subprocess.run(["tar", "-x", "-C", str(before_src)], input=archive, check=True)
    env_before = {**os.environ, "PYTHONPATH": str(before_src / "src")}
    (work / "tiny.yaml").write_text(TINY_YAML)
    cache = work / "cache"
    result = {
        "cpu": platform.processor() or platform.machine(),
        "lscpu": _lscpu(),
        "load": os.getloadavg(),
        "grid": GRID,
        "before": base,
        "rows": [],
    }
    for n in sorted(sizes):
        data = work / f"data-{n}"
        link_subjects(args.real, data, n)
        row = {"n": n, **build_cache(data, cache, args.workers, env), "build_workers": args.workers}
        row["cache_gb_all"] = sum(p.stat().st_blocks * 512 for p in cache.glob("subjects/*/*.npy")) / 1e9
        print(f"N={n}: built {row['built']} in {row['build_s']:.0f} s", flush=True)
        for label, environ, extra in (("after", env, ["--cache", str(cache)]), ("before", env_before, [])):
            if label == "before" and n not in [int(b) for b in args.before_sizes.split(",") if b]:
                continue
            out = work / f"run-{label}-{n}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = [
                sys.executable,
                "-m",
                "modalsynth",
                "train",
                "--data",
                str(data),
                "--out",
                str(out),
                "--grid",
                *map(str, GRID),
                "--steps",
                str(TRAIN_STEPS),
                "--config",
                str(work / "tiny.yaml"),
                *TINY,
                *extra,
            ]
            row[label] = run_training(cmd, environ, out / "log.csv")
            print(f"N={n} {label}: {row[label]}", flush=True)
        result["rows"].append(row)
        if "loader" not in result and not args.no_loader:  # at the smallest N: a run stopped later keeps them
            result["loader"] = loader_throughput(cache, [f"s{i:04d}" for i in range(n)], batches=20)
            result["steps"] = gan_step_times(args.paper_cpu_step)
        args.json.write_text(json.dumps(result, indent=1))
    print_table(result)


def _lscpu() -> str:
    text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((row.split(":", 1)[1].strip() for row in text.splitlines() if row.startswith("Model name")), "?")
    flags = text.split("Flags:")[-1]
    return f"{model}; amx_tile {'amx_tile' in flags}; avx512_bf16 {'avx512_bf16' in flags}"


def print_table(result: dict) -> None:
    print(f"\n{result['lscpu']}; load {result['load']}")
    print(
        "| N | build s/subject (workers) | cache GB | loader | first step s | peak RssAnon GB | peak RSS GB | "
        "of which file GB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in result["rows"]:
        for label in ("before", "after"):
            if label in row:
                r = row[label]
                build = f"{row['build_s_per_subject']:.2f} ({row['build_workers']})" if label == "after" else "-"
                size = f"{row['cache_gb_all']:.1f}" if label == "after" else "-"
                print(
                    f"| {row['n']} | {build} | {size} | {label} | {r['first_step_s']:.1f} | {r['peak_anon_gb']:.2f} | "
                    f"{r['peak_rss_gb']:.2f} | {r['peak_file_gb']:.2f} |"
                )
    for row in result.get("loader", []):
        print(f"loader {row['what']}, {row['workers']} workers: {row['batches_per_s']:.2f} batches/s")
    for k, v in result.get("steps", {}).items():
        print(f"{k}: {v:.3g}")


if __name__ == "__main__":
    main()
